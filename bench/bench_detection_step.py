"""Where a detection training step goes: the loader, the model's forward, the targets and losses, the backward
and the optimiser, in one run, as shares of the step.

    .venv/bin/python bench/bench_detection_step.py --config configs/centernet-fpn_resnet18_tiger-box_320x192.yaml \
        [--steps 20] [--threads 2] [key=value ...]

Each part is timed with ``time.perf_counter`` around it (on the CPU every op runs synchronously, so the
timers see the work itself); the loader is timed as the wait for the next batch of the config's own
training loader (its workers, augmentation and collate), the rest on that batch under the config's
precision and memory layout. The config's ``train.num_workers`` loader workers run beside the step, as in
training: on a 2-core machine they take CPU from it, which is part of what this measures. Prints seconds per
step and images/s of each part and of the whole, with the machine in the header.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a script: bench/ is on sys.path
from engine.tasks.registry import build_experiment, load_config  # noqa: E402
from engine.train.optim import build_optimizer  # noqa: E402
from engine.train.precision import resolve_precision  # noqa: E402
from engine.train.run import seed_everything  # noqa: E402


def profile_steps(exp, cfg, steps: int, warmup: int = 3) -> dict[str, list[float]]:
    model, task = exp.model.train(), exp.task
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    device = next(model.parameters()).device
    precision = resolve_precision(cfg.train.precision, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    optimizer = build_optimizer(model, cfg.train.optimizer, cfg.train.lr, cfg.train.weight_decay)
    parts: dict[str, list[float]] = {k: [] for k in ("loader", "forward", "targets + losses", "backward",
                                                       "optimizer", "step")}
    batches = iter(exp.train_loader)
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(exp.train_loader)
            batch = next(batches)
        t1 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            images = batch["image"].to(device)
            outputs = model(images)
            t2 = time.perf_counter()
            radii = task.window_radii(batch["boxes"], batch["mask"])
            out = task.losses(outputs, batch["boxes"].to(device), batch["labels"].to(device),
                              batch["mask"].to(device), radii)
        t3 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out["loss"].float().backward()
        t4 = time.perf_counter()
        optimizer.step()
        t5 = time.perf_counter()
        if i >= warmup:
            for key, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0)):
                parts[key].append(value)
    return parts


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/centernet-fpn_resnet18_tiger-box_320x192.yaml")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    seed_everything(cfg.train.seed)
    exp = build_experiment(cfg, torch.device("cpu"), progress=False)
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    print(f"{args.config} {' '.join(args.overrides)}: batch {cfg.train.batch_size}, input {list(cfg.data.input_size)}, "
          f"head {cfg.model.head}, precision {cfg.train.precision}, workers {cfg.train.num_workers}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {args.threads}, "
          f"avx512_bf16 {'avx512_bf16' in flags}")
    parts = profile_steps(exp, cfg, args.steps)
    step = statistics.median(parts["step"])
    bs = cfg.train.batch_size
    out = {}
    for key, values in parts.items():
        med = statistics.median(values)
        out[key] = med
        print(f"  {key:<18} {1000 * med:8.1f} ms  {100 * med / step:5.1f} % of the step  "
              f"{bs / med if med else float('inf'):8.1f} images/s")
    return out


if __name__ == "__main__":
    main()
