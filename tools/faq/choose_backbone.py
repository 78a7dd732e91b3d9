"""Measure parameters, FLOPs, training activation memory and latency of candidate backbones.

Usage::

    python -m tools.faq.choose_backbone --models resnet18 resnet50 vgg16 tv:alexnet tv:googlenet \\
        --input-size 3 224 224 [--batch-size 1] [--device cpu] [--output-dir DIR]

It prints the model table below (FAQ 3). Two related jobs have their own tools: what each classification
input policy costs (``python -m tools.faq.input_policy_memory``) and the feature levels a keypoint or
detection config's FPN receives (``python -m tools.fpn_inputs --config C``).

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
* activation memory of a training step (``engine/train/activation_memory.py``): on CPU the bytes of all
  tensors autograd saves for the backward pass during a train-mode forward, counting each
  underlying storage once and excluding parameters and buffers; the input batch is included when
  the first layer saves it. On CUDA the peak ``torch.cuda.max_memory_allocated`` during that
  forward minus the memory allocated before it (this also includes short-lived temporaries, so it
  is a bit higher than the saved-tensor count).
* latency: median wall time of ``--repeats`` forward passes after ``--warmup`` ones, in eval
  mode under ``torch.inference_mode``, in milliseconds, for the whole batch.

Writes ``DIR/choose_backbone_b{batch}.csv`` and a scatter plot ``DIR/choose_backbone_b{batch}.png``
(FLOPs vs activation memory, log axes).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import matplotlib
import timm
import torch
import torch.nn as nn
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from engine.train.activation_memory import cuda_peak_bytes, saved_tensor_bytes
from models.errors import InputError

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


def _lookup_error(name: str) -> InputError:
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
    return InputError(" ".join(msg))


def check_model_name(name: str) -> None:
    """Raise InputError with instructions if ``name`` is neither a timm nor a 'tv:' torchvision model."""
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
        raise InputError("--device: CUDA was requested but torch.cuda.is_available() is False; use --device cpu")
    was_training = model.training
    model = model.to(device)
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    x = torch.randn(batch_size, *input_size, device=device)
    params = sum(p.numel() for p in model.parameters())

    try:
        model.train()
        saved = saved_tensor_bytes(model, lambda: model(x))
        act = cuda_peak_bytes(lambda: model(x), device) if device.type == "cuda" else saved

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


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", required=True, help="timm names, or tv:NAME for torchvision")
    p.add_argument("--input-size", type=int, nargs=3, default=[3, 224, 224], metavar=("C", "H", "W"))
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--warmup", type=int, default=2, help="untimed forward passes before timing (>= 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed forward passes (0 skips latency)")
    p.add_argument("--output-dir", type=Path, default=Path("outputs/choose_backbone"))
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    """Returns one measure_model dict per model with "model" added, in the order given."""
    args = add_debug_flag(get_args_parser()).parse_args(argv)
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if min(args.input_size) < 1:
        raise InputError(f"--input-size must be three positive integers C H W, got {args.input_size}")
    if args.warmup < 1 or args.repeats < 0:
        raise InputError(f"--warmup must be >= 1 and --repeats >= 0, got {args.warmup} and {args.repeats}")
    for name in args.models:  # fail before spending minutes on the valid ones
        check_model_name(name)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models:
        model = build_model(name)
        try:
            r = measure_model(model, tuple(args.input_size), args.batch_size, args.device, args.warmup, args.repeats)
        except RuntimeError as e:
            raise RuntimeError(f"{name}: forward failed at --input-size {' '.join(map(str, args.input_size))} "
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
    return rows


if __name__ == "__main__":
    run_cli(main)
