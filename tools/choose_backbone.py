"""Measure parameters, FLOPs, training activation memory and latency of candidate backbones.

Usage::

    python -m tools.choose_backbone --models resnet18 resnet50 vgg16 tv:alexnet tv:googlenet \\
        --input-size 3 224 224 [--batch-size 1] [--device cpu] [--output-dir DIR]
    python -m tools.choose_backbone --models resnet18 --input-size 3 224 224 --batch-size 32 \\
        --input-policies [POLICY ...] [--image-sizes 500x375 375x500 ...]
    python -m tools.choose_backbone --config configs/hg-fpn_resnet18_synthetic-kpt_64x96.yaml [key=value ...]

The first form prints the model table below. With ``--input-policies`` the models are instead measured as
classifiers (``models/classifier.py``) on a batch of images of the ``--image-sizes`` (cycled to the batch
size) brought to ``--input-size`` by each classification input policy (``datasets/input_policy.py``:
resize, center_crop, random_crop, letterbox, native): the batch tensor, the training activation memory on
it, and what the policy does to the images (see ``measure_input_policies``). With ``--config`` (a keypoint
or detection config, with optional dotted overrides) it reports the feature levels the config's backbone
hands to the FPN: stride, channels and feature size at the config's input size (see ``fpn_inputs``).

Model names are timm names (``timm.create_model(name, pretrained=False)``; list them with
``python -c "import timm; print(timm.list_models('*resnet*'))"``) or torchvision names with
the prefix ``tv:`` (``torchvision.models.get_model(name, weights=None)``; list them with
``torchvision.models.list_models()``). AlexNet and GoogLeNet exist only in torchvision.
No weights are downloaded: every model is randomly initialised, which does not change any of
the measured quantities.

What is measured, per model (see ``measure_model``):

* params: number of parameter elements.
* FLOPs of one forward pass of the whole batch, from ``torch.utils.flop_counter.FlopCounterMode``.
  It counts a multiply-add as 2 FLOPs and only counts matrix-like ops (convolutions, matmuls,
  attention); element-wise ops such as BatchNorm, ReLU and pooling are not included. So a
  "4.1 GMAC" ResNet-50 shows about 8.2 GFLOPs here.
* activation memory of a training step: on CPU the bytes of all tensors autograd saves for the
  backward pass during a train-mode forward (via ``torch.autograd.graph.saved_tensors_hooks``),
  counting each underlying storage once and excluding parameters and buffers; the input batch
  is included when the first layer saves it. On CUDA the peak ``torch.cuda.max_memory_allocated``
  during that forward minus the memory allocated before it (this also includes short-lived
  temporaries, so it is a bit higher than the saved-tensor count).
* latency: median wall time of ``--repeats`` forward passes after ``--warmup`` ones, in eval
  mode under ``torch.inference_mode``, in milliseconds, for the whole batch.

Writes ``DIR/choose_backbone_b{batch}.csv`` and a scatter plot ``DIR/choose_backbone_b{batch}.png``
(FLOPs vs activation memory, log axes); with ``--input-policies`` ``DIR/input_policies_b{batch}.csv``.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import matplotlib
import numpy as np
import timm
import torch
import torch.nn as nn
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from datasets.input_policy import INPUT_POLICIES, collate_padded, fit_to_input
from engine.config import ClassificationDataConfig, load_config
from engine.tasks.classification import ClassificationTask
from models.backbone import Backbone
from models.classifier import ImageClassifier, backbone_mean, letterbox_fill
from models.detector import DETECTION_STRIDE
from models.pose import HEATMAP_STRIDE

matplotlib.use("Agg")  # headless: only ever writes files
import matplotlib.pyplot as plt  # noqa: E402

from tools._common import add_debug_flag, run_cli

TV_PREFIX = "tv:"
# torchvision constructors whose defaults need changing: no auxiliary heads (they only exist
# in train mode and would distort memory), and no scipy truncated-normal init (slow, irrelevant here)
TV_KWARGS = {
    "googlenet": {"aux_logits": False, "init_weights": False},
    "inception_v3": {"aux_logits": False, "init_weights": False},
}
MIB = 2**20


def _lookup_error(name: str) -> ValueError:
    msg = [f"--models: unknown model '{name}'."]
    if name.startswith(TV_PREFIX):
        msg.append(
            'Valid torchvision names: python -c "import torchvision; print(torchvision.models.list_models())"'
        )
    else:
        close = timm.list_models(f"*{name}*")[:8]
        if close:
            msg.append(f"timm models containing '{name}': {', '.join(close)}.")
        if name in torchvision.models.list_models():
            msg.append(f"'{name}' is a torchvision model: write it as '{TV_PREFIX}{name}'.")
        msg.append(
            "Find timm names with python -c \"import timm; print(timm.list_models('*pattern*'))\"; "
            f"torchvision models need the prefix '{TV_PREFIX}' "
            f"(e.g. {TV_PREFIX}alexnet, {TV_PREFIX}googlenet)."
        )
    return ValueError(" ".join(msg))


def check_model_name(name: str) -> None:
    """Raise ValueError with instructions if ``name`` is neither a timm nor a 'tv:' torchvision model."""
    if name.startswith(TV_PREFIX):
        if name[len(TV_PREFIX) :] not in torchvision.models.list_models():
            raise _lookup_error(name)
    elif not timm.is_model(name):
        raise _lookup_error(name)


def build_model(name: str) -> nn.Module:
    """timm model ``name`` or torchvision model ``tv:name``, randomly initialised."""
    check_model_name(name)
    if name.startswith(TV_PREFIX):
        tv_name = name[len(TV_PREFIX) :]
        return torchvision.models.get_model(tv_name, weights=None, **TV_KWARGS.get(tv_name, {}))
    return timm.create_model(name, pretrained=False)


def _tensors(out) -> list[torch.Tensor]:
    """All tensors in a model output (tensor, tuple/list, dict, nested), so non-classifiers work."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, list | tuple):
        return [t for o in out for t in _tensors(o)]
    return []


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


def saved_activation_bytes(model: nn.Module, x) -> int:
    """Bytes autograd keeps for backward during ``model(x)``; each storage once, weights excluded.

    ``x`` is whatever ``model`` takes: an image tensor, or e.g. a batch dict.

    Tensors that are views of one storage (or the same tensor saved by several ops) share
    memory, so they are keyed by their storage, and the storage's full size is counted.
    """
    weights = {_storage_key(t) for t in (*model.parameters(), *model.buffers())}
    seen: dict[tuple[str, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            key = _storage_key(t)
        except (RuntimeError, NotImplementedError):  # tensors without a plain storage (e.g. mkldnn)
            key, nbytes = ("opaque", id(t)), t.numel() * t.element_size()
        else:
            nbytes = t.untyped_storage().nbytes()
        if key not in weights:
            seen[key] = nbytes
        return t  # keep the tensor itself: memory behaviour is unchanged

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out  # frees the graph and the saved tensors
    return sum(seen.values())


def cuda_activation_bytes(model: nn.Module, x, device: torch.device | None = None) -> int:
    """Peak CUDA memory allocated during a train-mode forward minus what was allocated before it.

    ``x`` is what ``model`` takes (a tensor, or e.g. a batch dict; then name the ``device``).
    """
    device = x.device if device is None else device
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    with torch.enable_grad():
        out = model(x)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    del out
    return peak - base


def measure_model(
    model: nn.Module,
    input_size: tuple[int, int, int],
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    warmup: int = 2,
    repeats: int = 5,
) -> dict:
    """Measure one model on a random input of shape (batch_size, *input_size).

    Works for any module whose forward takes one image tensor and returns tensors (plain or in
    tuples / lists / dicts). The model is moved to ``device``; its train/eval mode and its
    buffers (e.g. BatchNorm running statistics) are restored afterwards.

    Returns {"params", "flops" (forward of the whole batch, multiply-add = 2), "activation_bytes"
    (training forward, see module docstring), "saved_tensor_bytes" (saved-tensor count on any
    device), "latency_ms" (median, whole batch; nan if repeats == 0), "batch_size", "input_size",
    "device"}.
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "--device: CUDA was requested but torch.cuda.is_available() is False; use --device cpu"
        )
    was_training = model.training
    model = model.to(device)
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    x = torch.randn(batch_size, *input_size, device=device)
    params = sum(p.numel() for p in model.parameters())

    try:
        model.train()
        saved = saved_activation_bytes(model, x)
        act = cuda_activation_bytes(model, x) if device.type == "cuda" else saved

        model.eval()
        with torch.inference_mode():
            with FlopCounterMode(display=False) as counter:
                model(x)  # doubles as the first warm-up pass
            flops = counter.get_total_flops()
            for _ in range(max(warmup - 1, 0)):
                model(x)
            times = []
            for _ in range(repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - t0)
    finally:
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
        model.train(was_training)

    return {
        "params": params,
        "flops": int(flops),
        "activation_bytes": int(act),
        "saved_tensor_bytes": int(saved),
        "latency_ms": 1000 * statistics.median(times) if times else float("nan"),
        "batch_size": batch_size,
        "input_size": tuple(input_size),
        "device": str(device),
    }


def format_table(rows: list[dict]) -> str:
    b = rows[0]["batch_size"] if rows else 1
    head = (
        f"{'model':<18} {'params [M]':>10} {f'GFLOPs (b={b})':>14} {f'act. mem [MiB] (b={b})':>22} "
        f"{f'latency [ms] (b={b})':>20}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['model']:<18} {r['params'] / 1e6:>10.2f} {r['flops'] / 1e9:>14.2f} "
            f"{r['activation_bytes'] / MIB:>22.1f} {r['latency_ms']:>20.1f}"
        )
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> None:
    cols = ["model", "params", "flops", "activation_bytes", "saved_tensor_bytes", "latency_ms"]
    cols += ["batch_size", "input_size", "device"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({**{k: r[k] for k in cols}, "input_size": "x".join(map(str, r["input_size"]))})


def plot(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 5))
    b = rows[0]["batch_size"]
    for r in rows:
        gf, mb = r["flops"] / 1e9, r["activation_bytes"] / MIB
        ax.scatter(gf, mb, s=30)
        ax.annotate(r["model"], (gf, mb), textcoords="offset points", xytext=(5, 4), fontsize=9)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.margins(x=0.15, y=0.1)  # room for the labels of the outermost points
    size = "x".join(map(str, rows[0]["input_size"]))
    ax.set(
        xlabel=f"forward GFLOPs (batch {b}, multiply-add = 2)",
        ylabel=f"training activation memory [MiB] (batch {b})",
        title=f"backbones at input {size}, {rows[0]['device']}",
    )
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------ FPN inputs of a config
# The stride the finest FPN level must have for each task's head (the builders pass the same to Backbone).
HEAD_STRIDE = {"keypoints": HEATMAP_STRIDE, "detection": DETECTION_STRIDE}


def fpn_inputs(cfg) -> dict:
    """The feature levels a keypoint or detection config's backbone hands to its FPN.

    The trunk is built as the model builds it (``models.backbone.Backbone``: timm ``features_only`` with the
    config's ``model.out_indices``, ``pretrained=False``; ``model.pretrained_path`` is not read, the shapes do
    not depend on it) and one zero image of ``data.input_size`` goes through it.

    Returns {"task", "backbone", "out_indices", "input_size" (width, height), "params" (of the trunk),
    "levels": [{"level", "out_index", "module", "stride", "channels", "height", "width"}, ...] finest first,
    "fpn_channels", "available": every level of the trunk [{"out_index", "module", "stride", "channels"}]}.
    """
    task = getattr(cfg, "task", None)
    if task not in HEAD_STRIDE:
        raise ValueError(f"--config: a {task!r} config has no FPN; give a keypoint or detection config "
                         f"(measure a classifier with --models NAME [--input-policies])")
    m = cfg.model
    try:
        bb = Backbone(m.backbone, out_indices=m.out_indices, required_stride=HEAD_STRIDE[task]).eval()
    except ValueError as err:  # name the levels to choose from (an unknown model name has none)
        if not timm.is_model(m.backbone) or "feature levels are" in str(err):
            raise
        full = timm.create_model(m.backbone, pretrained=False, features_only=True)
        levels = "; ".join(f"{i}: {d['module']}, stride {d['reduction']}, {d['num_chs']} ch"
                           for i, d in enumerate(full.feature_info.info))
        raise ValueError(f"{err}. The trunk's levels (model.out_indices): {levels}") from err
    width, height = (int(v) for v in cfg.data.input_size)
    with torch.no_grad():
        feats = bb(torch.zeros(1, 3, height, width))
    info = bb.body.feature_info.info  # every level of the trunk, not only the returned ones
    levels = [{"level": i, "out_index": int(oi), "module": info[oi]["module"], "stride": int(s), "channels": int(c),
               "height": int(f.shape[-2]), "width": int(f.shape[-1])}
              for i, (oi, s, c, f) in enumerate(zip(m.out_indices, bb.strides, bb.channels, feats))]
    for lv in levels:  # what timm declares must be what comes out
        assert lv["channels"] == feats[lv["level"]].shape[1], (lv, feats[lv["level"]].shape)
    return {"task": task, "backbone": m.backbone, "out_indices": [int(i) for i in m.out_indices],
            "input_size": (width, height), "params": sum(p.numel() for p in bb.parameters()), "levels": levels,
            "fpn_channels": int(m.fpn_channels),
            "available": [{"out_index": i, "module": d["module"], "stride": int(d["reduction"]),
                           "channels": int(d["num_chs"])} for i, d in enumerate(info)]}


def format_fpn_table(r: dict, source: str = "") -> str:
    w, h = r["input_size"]
    lines = [f"FPN inputs{' of ' + source if source else ''}: {r['task']} model, backbone {r['backbone']} "
             f"(features_only trunk, random weights, {r['params'] / 1e6:.2f} M parameters), "
             f"out_indices {r['out_indices']}, input {w}x{h} (width x height)"]
    head = f"{'level':>5} {'out_index':>9} {'module':<10} {'stride':>6} {'channels':>8} {'feature size (HxW)':>18}"
    lines += [head, "-" * len(head)]
    for lv in r["levels"]:
        lines.append(f"{lv['level']:>5} {lv['out_index']:>9} {lv['module']:<10} {lv['stride']:>6} "
                     f"{lv['channels']:>8} {str(lv['height']) + 'x' + str(lv['width']):>18}")
    fine = r["levels"][0]
    lines.append(f"FPN: each level -> 1x1 lateral conv to {r['fpn_channels']} channels (model.fpn_channels), "
                 f"nearest-neighbour 2x top-down sum, 3x3 output conv; the head reads level 0: "
                 f"{r['fpn_channels']} x {fine['height']}x{fine['width']} at stride {fine['stride']}")
    coarse = r["levels"][-1]["stride"]
    if w % coarse or h % coarse:
        lines.append(f"note: the input {w}x{h} is not a multiple of the coarsest stride {coarse}: the levels are "
                     f"rounded up and no longer align exactly with the input (docs/conventions.md)")
    lines.append("trunk levels (model.out_indices): " + "; ".join(
        f"{a['out_index']}: {a['module']}, stride {a['stride']}, {a['channels']} ch" for a in r["available"]))
    return "\n".join(lines)


# ------------------------------------------------------------------------------- classification input policies
DEFAULT_IMAGE_SIZES = ("500x375", "375x500", "500x333", "333x500", "500x500", "640x480", "480x640", "640x427")


def parse_image_size(text: str) -> tuple[int, int]:
    """``"500x375"`` -> (width 500, height 375)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--image-sizes: {text!r} is not WIDTHxHEIGHT with positive integers (e.g. 500x375)")
    return int(parts[0]), int(parts[1])


def policy_geometry(width: int, height: int, size: tuple[int, int], policy: str,
                    crop_scale: float = ClassificationDataConfig.crop_scale) -> dict:
    """What ``fit_to_input`` does to a ``width x height`` image for an input ``size`` (width, height).

    Returns {"image_share": fraction of the output that shows the image (letterbox: the rest is padding),
    "kept": fraction of the image that reaches the output (crops cut the border), "aspect": factor by which
    the aspect ratio changes (1: kept; resize squeezes)}. random_crop is given its evaluation (centre) window;
    at training its random zoom keeps between this and ``kept * crop_scale**2``. For ``native`` the output
    is the image itself; the batch's padding is counted in ``measure_input_policies``.
    """
    out_w, out_h = size
    if policy == "native":
        return {"image_share": 1.0, "kept": 1.0, "aspect": 1.0}
    if policy == "resize":
        sx, sy = out_w / width, out_h / height
        return {"image_share": 1.0, "kept": 1.0, "aspect": max(sx, sy) / min(sx, sy)}
    if policy in ("center_crop", "random_crop"):  # the formulas of fit_to_input
        scale = max(out_w / width, out_h / height) * crop_scale
        new_w, new_h = max(out_w, round(width * scale)), max(out_h, round(height * scale))
        sx, sy = new_w / width, new_h / height
        return {"image_share": 1.0, "kept": out_w * out_h / (new_w * new_h), "aspect": max(sx, sy) / min(sx, sy)}
    if policy == "letterbox":
        scale = min(out_w / width, out_h / height)
        new_w, new_h = max(1, min(out_w, round(width * scale))), max(1, min(out_h, round(height * scale)))
        sx, sy = new_w / width, new_h / height
        return {"image_share": new_w * new_h / (out_w * out_h), "kept": 1.0, "aspect": max(sx, sy) / min(sx, sy)}
    raise ValueError(f"--input-policies: {policy!r} is not one of {INPUT_POLICIES}")


class _TrainingForward(nn.Module):
    """The classifier called as the training step calls it (``ClassificationTask.forward``: masked pooling
    only for padded batches), so the saved-tensor hooks see exactly the training forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        return ClassificationTask.forward(self.model, batch)


def measure_input_policies(name: str, input_size: tuple[int, int, int], image_sizes: list[tuple[int, int]],
                           policies: list[str] | tuple[str, ...] = INPUT_POLICIES, batch_size: int = 32,
                           device: str | torch.device = "cpu",
                           crop_scale: float = ClassificationDataConfig.crop_scale, num_classes: int = 1000,
                           seed: int = 0) -> list[dict]:
    """Training activation memory of classifier ``name`` under each classification input policy.

    A batch of ``batch_size`` random uint8 images, image i of size ``image_sizes[i % len(image_sizes)]``
    (width, height), goes through ``fit_to_input`` (training mode: random_crop draws its window) and
    ``collate_padded`` as in the data loader (``native``: padded to the largest height and the largest width of
    the batch), then through ``ImageClassifier`` (normalisation inside; masked pooling for a padded batch) in
    train mode. Only forward passes are run; batches of equal shape are measured once.

    Returns one dict per policy: {"model", "policy", "batch_shape", "activation_bytes", "saved_tensor_bytes",
    "image_share" (fraction of the batch tensor that shows an image, not padding), "kept" (mean fraction of
    each image that reaches the tensor), "aspect" (largest aspect-ratio change), "batch_size", "input_size",
    "image_sizes", "device"}.
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device: CUDA was requested but torch.cuda.is_available() is False; use --device cpu")
    for policy in policies:
        if policy not in INPUT_POLICIES:
            raise ValueError(f"--input-policies: {policy!r} is not one of {INPUT_POLICIES}")
    _, in_h, in_w = (int(v) for v in input_size)
    model = ImageClassifier(name, num_classes, img_size=(in_h, in_w)).to(device).train()
    if "native" in policies and model.fixed_input_size:
        raise ValueError(f"{name} needs a fixed input size: it cannot take native (padded) batches; "
                         f"leave 'native' out of --input-policies")
    step = _TrainingForward(model)
    fill = letterbox_fill(backbone_mean(name))
    rng = np.random.default_rng(seed)
    sizes = [image_sizes[i % len(image_sizes)] for i in range(batch_size)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for w, h in sizes]
    measured: dict[tuple, tuple[int, int]] = {}
    rows = []
    for policy in policies:
        samples = []
        for i, image in enumerate(images):
            out, valid = fit_to_input(image, (in_w, in_h), policy, train=True, rng=np.random.default_rng([seed, i]),
                                      crop_scale=crop_scale, fill=fill)
            samples.append({"image": torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1))),
                            "valid_hw": torch.tensor(valid, dtype=torch.int64)})
        batch = collate_padded(samples)
        shape = tuple(batch["image"].shape)
        padded = bool((batch["valid_hw"] != torch.tensor(shape[-2:])).any())
        if (shape, padded) not in measured:
            saved = saved_activation_bytes(step, batch)
            act = cuda_activation_bytes(step, batch, device) if device.type == "cuda" else saved
            measured[(shape, padded)] = (act, saved)
        act, saved = measured[(shape, padded)]
        geometry = [policy_geometry(w, h, (in_w, in_h), policy, crop_scale) for w, h in sizes]
        valid_area = batch["valid_hw"].prod(1).tolist()
        rows.append({
            "model": name, "policy": policy, "batch_shape": shape, "activation_bytes": int(act),
            "saved_tensor_bytes": int(saved),
            "image_share": sum(g["image_share"] * a for g, a in zip(geometry, valid_area)) / (
                batch_size * shape[-2] * shape[-1]),
            "kept": statistics.fmean(g["kept"] for g in geometry),
            "aspect": max(g["aspect"] for g in geometry),
            "batch_size": batch_size, "input_size": (3, in_h, in_w), "image_sizes": list(image_sizes),
            "device": str(device),
        })
    return rows


def format_policy_table(rows: list[dict]) -> str:
    b = rows[0]["batch_size"] if rows else 1
    head = (f"{'model':<14} {'policy':<12} {'batch tensor':>18} {f'act. mem [MiB] (b={b})':>22} {'vs resize':>9} "
            f"{'image share of tensor':>21} {'image area kept':>15} {'aspect change':>13}")
    lines = [head, "-" * len(head)]
    for r in rows:
        base = next((q for q in rows if q["model"] == r["model"] and q["policy"] == "resize"), None)
        ratio = f"{r['activation_bytes'] / base['activation_bytes']:.2f}x" if base else "-"
        lines.append(f"{r['model']:<14} {r['policy']:<12} {'x'.join(map(str, r['batch_shape'])):>18} "
                     f"{r['activation_bytes'] / MIB:>22.1f} {ratio:>9} {100 * r['image_share']:>20.0f}% "
                     f"{100 * r['kept']:>14.0f}% {r['aspect']:>13.2f}")
    return "\n".join(lines)


def write_policy_csv(rows: list[dict], path: Path) -> None:
    cols = ["model", "policy", "batch_shape", "activation_bytes", "saved_tensor_bytes", "image_share", "kept",
            "aspect", "batch_size", "input_size", "image_sizes", "device"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({**{k: r[k] for k in cols}, "batch_shape": "x".join(map(str, r["batch_shape"])),
                        "input_size": "x".join(map(str, r["input_size"])),
                        "image_sizes": " ".join(f"{w_}x{h_}" for w_, h_ in r["image_sizes"])})


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", help="timm names, or tv:NAME for torchvision")
    p.add_argument("--input-size", type=int, nargs=3, default=[3, 224, 224], metavar=("C", "H", "W"))
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--warmup", type=int, default=2, help="untimed forward passes before timing (>= 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed forward passes (0 skips latency)")
    p.add_argument("--output-dir", type=Path, default=Path("outputs/choose_backbone"))
    p.add_argument("--input-policies", nargs="*", metavar="POLICY",
                   help=f"instead of the model table, measure the --models (timm) as classifiers under these "
                        f"input policies (all when none named: {', '.join(INPUT_POLICIES)})")
    p.add_argument("--image-sizes", nargs="+", default=list(DEFAULT_IMAGE_SIZES), metavar="WxH",
                   help="image sizes of the batch for --input-policies, cycled to --batch-size "
                        "(default: a mix of photo sizes, both orientations)")
    p.add_argument("--crop-scale", type=float, default=ClassificationDataConfig.crop_scale,
                   help="data.crop_scale of center_crop and random_crop")
    p.add_argument("--config", help="a keypoint or detection config: report the feature levels its FPN receives")
    p.add_argument("overrides", nargs="*", help="dotted overrides of --config, e.g. model.backbone=resnet50")
    return p


def main(argv: list[str] | None = None) -> dict:
    """Returns {"models": one measure_model dict per model with "model" added, in the order given (empty with
    --input-policies), "input_policies": the measure_input_policies rows of every model, "fpn": the
    fpn_inputs dict of --config (None without)}."""
    args = add_debug_flag(get_args_parser()).parse_args(argv)
    if not args.models and not args.config:
        raise ValueError("name --models (and optionally --input-policies), --config, or both")
    if args.overrides and not args.config:
        raise ValueError(f"overrides {args.overrides} need --config (and go after it)")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if min(args.input_size) < 1:
        raise ValueError(f"--input-size must be three positive integers C H W, got {args.input_size}")
    if args.warmup < 1 or args.repeats < 0:
        raise ValueError(f"--warmup must be >= 1 and --repeats >= 0, got {args.warmup} and {args.repeats}")
    policies = None
    if args.input_policies is not None:
        if not args.models:
            raise ValueError("--input-policies measures the --models as classifiers: name at least one timm model")
        policies = args.input_policies or list(INPUT_POLICIES)
        for policy in policies:
            if policy not in INPUT_POLICIES:
                raise ValueError(f"--input-policies: {policy!r} is not one of {INPUT_POLICIES}")
        image_sizes = [parse_image_size(t) for t in args.image_sizes]
        if args.input_size[0] != 3:
            raise ValueError(f"--input-policies works on RGB images: --input-size must start with 3, "
                             f"got {args.input_size}")
    for name in args.models or []:  # fail before spending minutes on the valid ones
        check_model_name(name)
        if policies is not None and name.startswith(TV_PREFIX):
            raise ValueError(f"--input-policies measures timm classifiers (models/classifier.py); {name} is a "
                             f"torchvision model")
    result: dict = {"models": [], "input_policies": [], "fpn": None}

    if args.config:
        cfg = load_config(args.config, args.overrides)
        result["fpn"] = fpn_inputs(cfg)
        print(format_fpn_table(result["fpn"], args.config), flush=True)
    if not args.models:
        return result
    args.output_dir.mkdir(parents=True, exist_ok=True)

    if policies is not None:
        rows = []
        for name in args.models:
            rows += measure_input_policies(name, tuple(args.input_size), image_sizes, policies, args.batch_size,
                                           args.device, args.crop_scale)
            print(f"measured {name}", flush=True)
        path = args.output_dir / f"input_policies_b{args.batch_size}.csv"
        write_policy_csv(rows, path)
        print(format_policy_table(rows))
        print(f"input {args.input_size[2]}x{args.input_size[1]} (width x height); batch of "
              f"{args.batch_size} images of sizes {' '.join(args.image_sizes)} (cycled); native pads the batch to "
              f"its largest height and largest width.")
        print("image share of tensor: pixels that show an image, not padding; image area kept: mean share of "
              "each image in the tensor (random_crop: its evaluation window); aspect change: largest.")
        print("act. mem: " + ("peak CUDA memory allocated during a train-mode forward, minus the memory before it."
                              if torch.device(args.device).type == "cuda" else
                              "unique storages autograd saves for backward in a train-mode forward (no weights)."))
        print(f"wrote {path}")
        result["input_policies"] = rows
        return result

    rows = []
    for name in args.models:
        model = build_model(name)
        try:
            r = measure_model(
                model, tuple(args.input_size), args.batch_size, args.device, args.warmup, args.repeats
            )
        except RuntimeError as e:
            raise RuntimeError(
                f"{name}: forward failed at --input-size {' '.join(map(str, args.input_size))} "
                f"--batch-size {args.batch_size} (too small an input for this architecture?): {e}"
            ) from e
        rows.append({"model": name, **r})
        print(f"measured {name}", flush=True)
        del model

    stem = args.output_dir / f"choose_backbone_b{args.batch_size}"
    write_csv(rows, stem.with_suffix(".csv"))
    plot(rows, stem.with_suffix(".png"))
    print(format_table(rows))
    print("GFLOPs: FlopCounterMode, one forward of the batch, multiply-add = 2 FLOPs, conv/matmul ops only.")
    if torch.device(args.device).type == "cuda":
        print("act. mem: peak CUDA memory allocated during a train-mode forward, minus the memory before it.")
    else:
        print("act. mem: unique storages autograd saves for backward in a train-mode forward (no weights).")
    print(f"wrote {stem.with_suffix('.csv')} and {stem.with_suffix('.png')}")
    result["models"] = rows
    return result


if __name__ == "__main__":
    run_cli(main)
