"""Training throughput on this machine: which precision / layout / compilation helps, and whether the loop and
the data loader keep up with the model.

    .venv/bin/python bench/bench_train.py [--config configs/...yaml] [--steps 10] [--threads 2] [--no-compile]
        [key=value ...]

Measured in one run (each number the best of ``--repeats`` interleaved measurements), in images/s, every ratio
against the fp32 eager model step of the same run:
  * model step (a batch already in memory: target encoding, forward, loss, backward, AdamW step) as
    fp32 eager, channels_last, bf16 autocast, channels_last + bf16, and ``torch.compile`` (its compile time,
    the first two steps, reported apart);
  * the data loader alone (decode, affine crop, augmentation, collate) with 0, 1 and 2 workers;
  * the full training loop (``Trainer.train_one_epoch``: loader, step, gradient norm, schedule, EMA, the
    one host sync per step) on the config's settings (``train.precision: auto`` resolved for this CPU,
    ``train.channels_last``), against the bare model step with the same settings.
The machine is whatever this runs on: on a shared CPU the numbers move by 10-20 % from run to run, so read
the ratios, run it twice, and keep other work off the cores.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a script: bench/ is on sys.path
from engine.tasks.registry import build_experiment, load_config  # noqa: E402
from engine.train.ema import ModelEMA  # noqa: E402
from engine.train.loop import Trainer, TrainerOptions  # noqa: E402
from engine.train.optim import build_optimizer, build_scheduler  # noqa: E402
from engine.train.precision import cpu_has_native_bf16, resolve_precision  # noqa: E402
from engine.train.run import seed_everything  # noqa: E402


def images_per_second(fn, steps: int, batch_size: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return steps * batch_size / (time.perf_counter() - start)


def step_fn(model, task, batch, channels_last: bool = False, bf16: bool = False):
    """One optimiser step of ``model`` on the in-memory ``batch`` (its own AdamW)."""
    optimizer = build_optimizer(model, "adamw", 1e-4)
    if channels_last:
        batch = {**batch, "image": batch["image"].contiguous(memory_format=torch.channels_last)}

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = task.training_step(model, batch)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
    return step


def step_variant(precision: str, channels_last: bool) -> str:
    """The model-step line measured with this precision and layout (fp16 is not measured on a CPU: fp32's)."""
    bf16 = precision == "bf16"
    return {(False, False): "fp32 eager", (False, True): "channels_last", (True, False): "bf16 autocast",
            (True, True): "channels_last + bf16"}[(bf16, channels_last)]


def bench_model_steps(model, task, batch, bs: int, steps: int) -> dict:
    results = {}
    variants = {"fp32 eager": (False, False), "channels_last": (True, False), "bf16 autocast": (False, True),
                "channels_last + bf16": (True, True)}
    for name, (cl, bf16) in variants.items():
        m = copy.deepcopy(model).train()
        if cl:
            m = m.to(memory_format=torch.channels_last)
        results[name] = images_per_second(step_fn(m, task, batch, cl, bf16), steps, bs)
    return results


def bench_compile(model, task, batch, bs: int, steps: int, repeats: int) -> dict:
    """``torch.compile`` (inductor): the compile time of the first two steps, then the best of ``repeats``."""
    m = copy.deepcopy(model).train()
    try:
        fn = step_fn(torch.compile(m), task, batch)
        start = time.perf_counter()
        fn()
        fn()                            # the first steps compile the forward and backward graphs
        compile_s = time.perf_counter() - start
        best = max(images_per_second(fn, steps, bs, warmup=0) for _ in range(repeats))
        return {"torch.compile": best, "torch.compile compile_s": compile_s}
    except Exception as err:           # inductor needs a C++ compiler; report and go on
        print(f"torch.compile failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
        return {}


def bench_loader(loader, bs: int, batches: int) -> dict:
    results = {}
    for workers in (0, 1, 2):
        dl = torch.utils.data.DataLoader(loader.dataset, batch_size=bs, sampler=loader.sampler, num_workers=workers,
                                         collate_fn=loader.collate_fn, persistent_workers=workers > 0)
        it = itertools.cycle(dl)
        results[f"loader {workers} workers"] = images_per_second(lambda it=it: next(it), batches, bs)
    return results


def bench_full_loop(cfg, exp, batches: int) -> float:
    """images/s of the real ``Trainer.train_one_epoch`` on the first ``batches`` batches (second epoch timed)."""
    from engine.tasks import keypoints as kp

    loader = exp.train_loader
    n = batches * cfg.train.batch_size
    subset = copy.copy(loader.dataset)      # the same samples and augmentation, only the first n instances
    subset.instances = subset.instances[:n]
    sub_loader = kp.make_loader(subset, batch_size=cfg.train.batch_size, shuffle=True, seed=cfg.train.seed,
                                num_workers=cfg.train.num_workers)
    model = copy.deepcopy(exp.model).train()
    t = cfg.train
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, t.optimizer, t.lr, weight_decay=t.weight_decay)
    scheduler = build_scheduler(optimizer, 1000, batches, t.scheduler, warmup_steps=t.warmup_steps)
    ema = ModelEMA(model, t.ema_decay, t.ema_warmup_steps) if t.ema_decay else None
    with tempfile.TemporaryDirectory() as run_dir:
        options = TrainerOptions(epochs=2, main_metric="loss", log_interval=t.log_interval, progress=False,
                                 precision=t.precision, nominal_batch_size=t.batch_size)
        trainer = Trainer(model, exp.task, sub_loader, None, optimizer, scheduler, run_dir, options, ema=ema)
        trainer.train_one_epoch(0)
        stats = trainer.train_one_epoch(1)
        trainer.logger.close()
    return stats["train_images"] / stats["train_seconds"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/hg-fpn_resnet18_300w-faces_128x128.yaml")
    p.add_argument("--steps", type=int, default=10, help="timed model steps per variant")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=2, help="measure everything this many times, interleaved, and "
                                                          "keep each one's best (a shared CPU only ever slows down)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (minutes of compiling on a CPU)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    seed_everything(0)
    exp = build_experiment(cfg, torch.device("cpu"), progress=False)
    model, task, loader = exp.model, exp.task, exp.train_loader
    bs = cfg.train.batch_size
    batch = next(iter(loader))

    results: dict[str, float] = {}
    for _ in range(args.repeats):
        measured = {**bench_model_steps(model, task, batch, bs, args.steps),
                    **bench_loader(loader, bs, args.steps * 2), "full loop": bench_full_loop(cfg, exp, args.steps)}
        results = {k: max(v, results.get(k, 0.0)) for k, v in measured.items()}
        print("measured: " + ", ".join(f"{k} {v:.1f}" for k, v in measured.items()), flush=True)
    if not args.no_compile:
        results.update(bench_compile(model, task, batch, bs, args.steps, args.repeats))

    base = results["fp32 eager"]
    precision = resolve_precision(cfg.train.precision, torch.device("cpu"))
    same_settings = step_variant(precision, cfg.train.channels_last)
    print(f"config {args.config}: batch {bs}, input {cfg.data.input_size}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, CPU {torch.backends.cpu.get_cpu_capability()}"
          f" (native bf16: {cpu_has_native_bf16()}), train.num_workers={cfg.train.num_workers}, "
          f"train.precision={cfg.train.precision} ({precision}), train.channels_last={cfg.train.channels_last}")
    print(f"  {'':<26}{'images/s':>10}{'vs fp32 step':>14}")
    for k, v in results.items():
        if k.endswith("compile_s"):
            print(f"  {k:<26}{v:>9.1f}s")
        else:
            print(f"  {k:<26}{v:>10.1f}{v / base:>13.2f}x")
    print(f"  full loop / bare model step with the config's settings ({same_settings}) = "
          f"{results['full loop'] / results[same_settings]:.2f}x (target >= 0.9)")
    return results


if __name__ == "__main__":
    main()
