"""What each classification input policy costs: the batch tensor and the training activation memory of a
classifier on photo-sized images brought to the input size, and what the policy does to the images (FAQ 4).

    python -m tools.faq.input_policy_memory --models resnet18 --input-size 3 224 224 --batch-size 32 \\
        [--policies resize letterbox ...] [--image-sizes 500x375 375x500 ...] [--device cpu]

A batch of ``--batch-size`` images of the ``--image-sizes`` (cycled) goes through each input policy
(``datasets/input_policy.py``: resize, center_crop, random_crop, letterbox, native) and the loader's collate
function, then through the timm classifier (``models/classifier.py``) in train mode; the activation memory
is :mod:`engine.train.activation_memory`'s count (the same as ``tools.faq.choose_backbone`` and
``bench/bench_input_policies.py``). Writes ``DIR/input_policies_b{batch}.csv``.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from datasets.input_policy import INPUT_POLICIES, collate_padded, fit_to_input, plan_fit
from engine.tasks.classification import ClassificationTask
from engine.tasks.classification.schema import ClassificationDataConfig
from engine.train.activation_memory import cuda_peak_bytes, saved_tensor_bytes
from models.classifier import ImageClassifier, backbone_mean, letterbox_fill
from models.errors import InputError
from tools._common import add_debug_flag, run_cli
from tools.faq.choose_backbone import MIB, TV_PREFIX, check_model_name

DEFAULT_IMAGE_SIZES = ("500x375", "375x500", "500x333", "333x500", "500x500", "640x480", "480x640", "640x427")


def parse_image_size(text: str) -> tuple[int, int]:
    """``"500x375"`` -> (width 500, height 375)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise InputError(f"--image-sizes: {text!r} is not WIDTHxHEIGHT with positive integers (e.g. 500x375)")
    return int(parts[0]), int(parts[1])


def policy_geometry(width: int, height: int, size: tuple[int, int], policy: str,
                    crop_scale: float = ClassificationDataConfig.crop_scale) -> dict:
    """What ``fit_to_input`` does to a ``width x height`` image for an input ``size`` (width, height), from
    :func:`datasets.input_policy.plan_fit` (the geometry the loader applies; random_crop is given its
    evaluation, centre, window: at training its random zoom keeps between this and ``kept * crop_scale**2``).

    Returns {"image_share": fraction of the output that shows the image (letterbox: the rest is padding),
    "kept": fraction of the image that reaches the output (crops cut the border), "aspect": factor by which
    the aspect ratio changes (1: kept; resize squeezes)}. For ``native`` the output is the image itself; the
    batch's padding is counted in ``measure_input_policies``.
    """
    if policy not in INPUT_POLICIES:
        raise InputError(f"--policies: {policy!r} is not one of {INPUT_POLICIES}")
    plan = plan_fit(width, height, size, policy, train=False, crop_scale=crop_scale)
    return {"image_share": plan.image_share, "kept": plan.kept, "aspect": plan.aspect}


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
        raise InputError("--device: CUDA was requested but torch.cuda.is_available() is False; use --device cpu")
    for policy in policies:
        if policy not in INPUT_POLICIES:
            raise InputError(f"--policies: {policy!r} is not one of {INPUT_POLICIES}")
    _, in_h, in_w = (int(v) for v in input_size)
    model = ImageClassifier(name, num_classes, img_size=(in_h, in_w)).to(device).train()
    if "native" in policies and model.fixed_input_size:
        raise InputError(f"{name} needs a fixed input size: it cannot take native (padded) batches; "
                         f"leave 'native' out of --policies")
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
            saved = saved_tensor_bytes(step, lambda b=batch: step(b))
            act = cuda_peak_bytes(lambda b=batch: step(b), device) if device.type == "cuda" else saved
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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", required=True, help="timm names (measured as classifiers)")
    p.add_argument("--input-size", type=int, nargs=3, default=[3, 224, 224], metavar=("C", "H", "W"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--policies", nargs="+", default=list(INPUT_POLICIES), metavar="POLICY",
                   help=f"input policies to measure (default: all, {', '.join(INPUT_POLICIES)})")
    p.add_argument("--image-sizes", nargs="+", default=list(DEFAULT_IMAGE_SIZES), metavar="WxH",
                   help="image sizes of the batch, cycled to --batch-size (default: a mix of photo sizes, both "
                        "orientations)")
    p.add_argument("--crop-scale", type=float, default=ClassificationDataConfig.crop_scale,
                   help="data.crop_scale of center_crop and random_crop")
    p.add_argument("--output-dir", type=Path, default=Path("outputs/input_policy_memory"))
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    """Returns the :func:`measure_input_policies` rows of every model."""
    args = add_debug_flag(get_args_parser()).parse_args(argv)
    if args.batch_size < 1 or min(args.input_size) < 1:
        raise InputError(f"--batch-size and --input-size must be positive, got {args.batch_size} and "
                         f"{args.input_size}")
    if args.input_size[0] != 3:
        raise InputError(f"the policies work on RGB images: --input-size must start with 3, got {args.input_size}")
    for policy in args.policies:
        if policy not in INPUT_POLICIES:
            raise InputError(f"--policies: {policy!r} is not one of {INPUT_POLICIES}")
    image_sizes = [parse_image_size(t) for t in args.image_sizes]
    for name in args.models:  # fail before spending minutes on the valid ones
        check_model_name(name)
        if name.startswith(TV_PREFIX):
            raise InputError(f"--models: {name} is a torchvision model; the policies are measured on timm "
                             f"classifiers (models/classifier.py)")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models:
        rows += measure_input_policies(name, tuple(args.input_size), image_sizes, args.policies, args.batch_size,
                                       args.device, args.crop_scale)
        print(f"measured {name}", flush=True)
    path = args.output_dir / f"input_policies_b{args.batch_size}.csv"
    write_policy_csv(rows, path)
    print(format_policy_table(rows))
    print(f"input {args.input_size[2]}x{args.input_size[1]} (width x height); batch of {args.batch_size} images "
          f"of sizes {' '.join(args.image_sizes)} (cycled); native pads the batch to its largest height and "
          f"largest width.")
    print("image share of tensor: pixels that show an image, not padding; image area kept: mean share of each "
          "image in the tensor (random_crop: its evaluation window); aspect change: largest.")
    print("act. mem: " + ("peak CUDA memory allocated during a train-mode forward, minus the memory before it."
                          if torch.device(args.device).type == "cuda" else
                          "unique storages autograd saves for backward in a train-mode forward (no weights)."))
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    run_cli(main)
