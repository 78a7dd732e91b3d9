"""Why does a model train badly? Overfit one batch, read a run's curves, and run a learning-rate range test.

    python -m tools.diagnose_training --config configs/X.yaml [--overfit-steps 100] [--lr-range-steps 100] \
        [--run-dir runs/X] [key=value ...]

* ``--overfit-steps N``: train on ``--overfit-samples`` samples of one training batch for N steps (the
  config's optimiser at a constant ``train.lr``, no schedule). A model that cannot drive their loss below
  ``--target-ratio`` of its start has a bug in the model, targets or loss: fix it before tuning anything.
* ``--run-dir R``: read ``R/epochs.csv`` of a finished (or running) training and tell under- from
  over-fitting (the training loss's trend against the validation metric's peak).
* ``--lr-range-steps N``: from a fresh model, raise the learning rate exponentially from ``--lr-min`` to
  ``--lr-max`` over N steps of the training loader, and suggest ``train.lr`` (the steepest fall of the loss,
  and a tenth of the rate of the lowest loss). Writes the curve to ``--output-dir``.

0 skips a check. See ``engine/train/diagnose.py`` for the rules and docs/faq.md (question 6) for an example.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os

import torch

from engine.distributed import resolve_device
from engine.tasks.registry import build_experiment, load_config
from engine.train.diagnose import diagnose_curves, first_batch, lr_range_test, overfit_one_batch, take
from engine.train.optim import build_optimizer
from engine.train.run import seed_everything
from models.errors import InputError, RunDirError
from models.utils import write_json
from tools._common import add_debug_flag, run_cli, setup_logging

log = logging.getLogger("tools.diagnose_training")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.lr=1e-3")
    p.add_argument("--overfit-steps", type=int, default=100, help="steps on one batch (0 skips)")
    p.add_argument("--overfit-samples", type=int, default=4, help="samples in that batch")
    p.add_argument("--target-ratio", type=float, default=0.1, help="pass when final loss <= this x initial loss")
    p.add_argument("--run-dir", help="a training run folder: diagnose its epochs.csv")
    p.add_argument("--lr-range-steps", type=int, default=0, help="steps of the learning-rate range test (0 skips)")
    p.add_argument("--lr-min", type=float, default=1e-6)
    p.add_argument("--lr-max", type=float, default=1.0)
    p.add_argument("--device", help="auto | cpu | cuda (default: train.device from the config)")
    p.add_argument("--output-dir", default="outputs/diagnose_training")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = add_debug_flag(get_args_parser()).parse_intermixed_args(argv)
    setup_logging()
    if args.overfit_steps < 0 or args.lr_range_steps < 0 or args.overfit_samples < 1:
        raise InputError("--overfit-steps and --lr-range-steps must be >= 0 and --overfit-samples >= 1")
    cfg = load_config(args.config, args.overrides)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    report: dict = {"config": args.config}
    if args.run_dir:
        report["curves"] = diagnose_curves(read_epochs(args.run_dir), cfg.eval.main_metric)
        print(f"curves of {args.run_dir}: {report['curves']['verdict']}: {report['curves']['advice']}")
    if args.overfit_steps or args.lr_range_steps:
        device = resolve_device(args.device or cfg.train.device)
        seed_everything(cfg.train.seed)
        exp = build_experiment(cfg, device, progress=False)
        initial = {k: v.clone() for k, v in exp.model.state_dict().items()}
        t = cfg.train

        def optimizer(lr: float) -> torch.optim.Optimizer:
            return build_optimizer(exp.model, t.optimizer, lr, t.weight_decay, t.momentum, t.nesterov, betas=t.betas,
                                   eps=t.eps, alpha=t.alpha, decay_norm_and_bias=t.decay_norm_and_bias)

        if args.overfit_steps:
            batch = take(first_batch(exp.train_loader), args.overfit_samples)
            r = overfit_one_batch(exp.model, exp.task, batch, optimizer(t.lr), args.overfit_steps, args.target_ratio)
            report["overfit"] = {k: v for k, v in r.items() if k != "losses"} | {"losses": r["losses"][::10]}
            verdict = "passed" if r["passed"] else "FAILED: look for a bug in the model, targets or loss"
            print(f"overfit {args.overfit_samples} samples, {args.overfit_steps} steps at lr {t.lr:g}: loss "
                  f"{r['initial']:.4g} -> {r['final']:.4g} ({100 * r['ratio']:.1f}% of the start; target <= "
                  f"{100 * args.target_ratio:.0f}%): {verdict}")
        if args.lr_range_steps:
            exp.model.load_state_dict(initial)
            r = lr_range_test(exp.model, exp.task, exp.train_loader, optimizer, args.lr_min, args.lr_max,
                              args.lr_range_steps)
            report["lr_range"] = r
            path = os.path.join(args.output_dir, "lr_range.png")
            plot_lr_range(r, path, t.lr)
            print(f"learning-rate range test, {len(r['lrs'])} steps from {args.lr_min:g}: steepest fall at lr "
                  f"{r['steepest_lr']:.3g}, lowest loss at {r['lowest_lr']:.3g} (suggested train.lr "
                  f"{r['suggested_lr']:.3g}; the config has {t.lr:g})"
                  + (f"; diverged at {r['diverged_at_lr']:.3g}" if r["diverged_at_lr"] else "") + f" -> {path}")
    if len(report) == 1:
        raise InputError("nothing to do: give --overfit-steps N, --lr-range-steps N or --run-dir R")
    write_json(os.path.join(args.output_dir, "diagnosis.json"), report, indent=2)
    return report


def read_epochs(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "epochs.csv")
    if not os.path.isfile(path):
        raise RunDirError(f"{path} not found: --run-dir must be a folder written by tools.train")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_lr_range(r: dict, path: str, config_lr: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    n = len(r["smoothed"])
    ax.plot(r["lrs"][:n], r["losses"][:n], alpha=0.3, label="loss")
    ax.plot(r["lrs"][:n], r["smoothed"], label="smoothed")
    for lr, style, name in ((r["steepest_lr"], "--", "steepest"), (r["suggested_lr"], ":", "lowest / 10"),
                            (config_lr, "-.", "train.lr")):
        ax.axvline(lr, ls=style, color="k", alpha=0.6, label=f"{name} {lr:.2g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss", title="learning-rate range test")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    run_cli(main)
