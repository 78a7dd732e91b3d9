"""Train a model from a config.

    python -m tools.train --config configs/hg-fpn_resnet18_synthetic-kpt_64x96.yaml [key=value ...]
    python -m tools.train --config ... --run-dir runs/exp1 --resume runs/exp1/last.pt

Writes ``config.yaml``, ``provenance.json``, ``last.pt``, ``best.pt``, ``steps.csv``, ``epochs.csv``,
``training_curves.png`` and ``metrics.json`` into one run folder.
"""

from __future__ import annotations

import argparse

from engine.config import load_config
from engine.experiment import train
from tools._common import default_run_dir, resolve_device, setup_logging


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML experiment config")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=0.01 data.input_size=[64,96]")
    p.add_argument("--run-dir", help="output folder (default: <output_dir>/<name>-<timestamp>)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: train.device from the config)")
    p.add_argument("--resume", help="checkpoint to continue from (model, optimiser, schedule, epoch, RNG)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    setup_logging()
    cfg = load_config(args.config, args.overrides)
    device = resolve_device(args.device or cfg.train.device)
    run_dir = args.run_dir or default_run_dir(cfg.output_dir, cfg.name)
    return train(cfg, run_dir, device, resume=args.resume, progress=not args.no_progress)


if __name__ == "__main__":
    main()
