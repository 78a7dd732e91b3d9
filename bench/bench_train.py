"""Training throughput of the demo model, and whether the data loader keeps up with it.

    .venv/bin/python bench/bench_train.py [--config configs/...yaml] [--steps 20] [key=value ...]

Measured in one run, on this machine:
  * model step: forward + backward + optimiser step on a batch already in memory (images/s);
  * loader alone: iterating the training DataLoader (decode, affine crop, photometric augmentation) (images/s),
    with the config's worker count and with 0 workers;
  * the real loop: loader + target encoding + model step (images/s).
The loader keeps up when "loader alone" is well above "model step" (the ratio is printed).
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from engine.config import load_config
from engine.optim import build_optimizer
from engine.tasks.registry import build_experiment
from engine.training_setup import seed_everything


def images_per_second(fn, steps: int, batch_size: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return steps * batch_size / (time.perf_counter() - start)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/hg-fpn_resnet18_synthetic-kpt_64x96.yaml")
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    seed_everything(0)
    exp = build_experiment(cfg, torch.device("cpu"), progress=False)
    model, task, loader = exp.model, exp.task, exp.train_loader
    bs = cfg.train.batch_size
    optimizer = build_optimizer(model, "adamw", 1e-3)
    batch = next(iter(loader))
    model.train()

    def model_step(b=batch):
        out = task.training_step(model, b)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()

    results = {"model_step": images_per_second(model_step, args.steps, bs)}
    for workers in sorted({cfg.train.num_workers, 0}):
        dl = torch.utils.data.DataLoader(loader.dataset, batch_size=bs, sampler=loader.sampler,
                                         num_workers=workers, collate_fn=loader.collate_fn,
                                         persistent_workers=workers > 0)
        it = itertools.cycle(dl)
        results[f"loader_{workers}_workers"] = images_per_second(lambda it=it: next(it), args.steps * 2, bs)
    it = itertools.cycle(loader)
    results["full_loop"] = images_per_second(lambda: model_step(next(it)), args.steps, bs)

    print(f"config {args.config}: batch {bs}, input {cfg.data.input_size}, torch threads {torch.get_num_threads()}, "
          f"{cfg.train.num_workers} loader workers")
    for k, v in results.items():
        print(f"  {k:<22} {v:8.1f} images/s")
    best_loader = results[f"loader_{cfg.train.num_workers}_workers"]
    print(f"  loader alone / model step = {best_loader / results['model_step']:.2f}x "
          f"(> 1: the loader is not the bottleneck)")
    print(f"  full loop / model step    = {results['full_loop'] / results['model_step']:.2f}x")
    return results


if __name__ == "__main__":
    main()
