"""What each input-size policy costs: activation memory, speed and accuracy, measured in one run.

    python bench/bench_input_policies.py                      # all five policies, the numbers in docs/training.md
    python bench/bench_input_policies.py --epochs 1 --policies resize native

The synthetic shapes are drawn at random sizes and aspect ratios (sides in [min, max]), so the policies
differ: ``resize`` squeezes, the crops cut, ``letterbox`` pads, ``native`` keeps each image's own pixels. For
each policy the same training (tools.train on the classification config, same seed and schedule) runs and
the validation top-1 is read back; the activation memory of one training step is the total size of the
tensors autograd saves for the backward pass (what grows with the input area), measured on one batch, and the
speed is the median of a few timed training steps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a script: bench/ is on sys.path
from datasets.input_policy import INPUT_POLICIES  # noqa: E402
from engine.tasks.registry import build_experiment, load_config  # noqa: E402
from engine.train.activation_memory import saved_tensor_bytes  # noqa: E402
from engine.train.run import train  # noqa: E402
from tools._common import setup_logging  # noqa: E402

CONFIG = "configs/cls_resnet10t_synthetic-shapes_32x32.yaml"


def time_steps(exp, steps: int) -> float:
    """Median seconds of a training step (forward, backward, optimiser) over the loader's first batches."""
    model, task = exp.model, exp.task
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    times = []
    for i, batch in enumerate(exp.train_loader):
        if i > steps:
            break
        start = time.perf_counter()
        task.training_step(model, batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:     # the first step warms up
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=CONFIG)
    p.add_argument("--policies", nargs="*", default=list(INPUT_POLICIES))
    p.add_argument("--epochs", type=int, default=4, help="training epochs per policy (0: memory and speed only)")
    p.add_argument("--time-steps", type=int, default=6, help="training steps timed per policy")
    p.add_argument("--min-size", type=int, default=32)
    p.add_argument("--max-size", type=int, default=96)
    p.add_argument("--output-dir", default="outputs/bench_input_policies")
    p.add_argument("overrides", nargs="*", help="more config overrides")
    args = p.parse_args(argv)
    setup_logging()
    results = {}
    for policy in args.policies:
        overrides = [f"data.input_policy={policy}", f"train.epochs={max(args.epochs, 1)}",
                     f"data.synthetic.min_image_size={args.min_size}", f"data.synthetic.max_image_size={args.max_size}",
                     "train.num_workers=0", *args.overrides]
        cfg = load_config(args.config, overrides)
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        exp = build_experiment(cfg, torch.device("cpu"), progress=False)
        batch = next(iter(exp.train_loader))
        exp.model.train()
        memory = saved_tensor_bytes(exp.model, lambda e=exp, b=batch: e.task.training_step(e.model, b))
        pixels = int(batch["image"][:, 0].numel()) / len(batch["image"])
        step_seconds = time_steps(exp, args.time_steps)
        top1, seconds = float("nan"), 0.0
        if args.epochs > 0:
            start = time.time()
            summary = train(cfg, os.path.join(args.output_dir, policy), torch.device("cpu"), progress=False,
                            overwrite=True)
            seconds, top1 = time.time() - start, summary["last"]["top1"]
        results[policy] = {"top1": top1, "activation_MB_per_batch": round(memory / 2**20, 1),
                           "input_pixels_per_image": pixels,
                           "images_per_s": round(cfg.train.batch_size / step_seconds, 1),
                           "train_seconds": round(seconds, 1), "batch_size": cfg.train.batch_size}
        print(json.dumps({policy: results[policy]}), flush=True)
    print(f"\ninput {load_config(args.config).data.input_size} from images with sides in [{args.min_size}, "
          f"{args.max_size}], {args.epochs} epochs, torch threads {torch.get_num_threads()}")
    print("| policy | top-1 (%) | activation memory per batch (MB) | input pixels per image | training images/s |")
    print("|---|---|---|---|---|")
    for policy, r in results.items():
        print(f"| {policy} | {r['top1']:.1f} | {r['activation_MB_per_batch']} | {r['input_pixels_per_image']:.0f} | "
              f"{r['images_per_s']} |")
    return results


if __name__ == "__main__":
    main()
