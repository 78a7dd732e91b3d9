"""Train a model from a config (keypoints, classification or detection: one trainer, the task differs).

    python -m tools.train --config configs/hg-fpn_resnet18_synthetic-kpt_64x96.yaml [key=value ...]
    python -m tools.train --config configs/cls_resnet10t_synthetic-shapes_32x32.yaml train.epochs=2
    python -m tools.train --config ... --run-dir runs/exp1 --resume runs/exp1/last.pt
    python -m tools.train --config ... --run-dir runs/exp1 --overwrite      # replace the run in runs/exp1
    python -m tools.train --config ... --weights runs/other/best.pt        # fine-tune: weights only
    torchrun --nproc_per_node 2 -m tools.train --config ...                 # DistributedDataParallel

Writes ``config.yaml``, ``provenance.json``, ``parameters.txt``, ``last.pt``, ``best.pt``, ``steps.csv``,
``epochs.csv``, TensorBoard events, ``training_curves.png`` and ``metrics.json`` into one run folder (rank 0
only when distributed). docs/training.md shows every option.
"""

from __future__ import annotations

import argparse
import shlex
import sys

import engine.distributed as dist_utils
from engine.tasks.registry import load_config
from engine.train.run import train
from models.errors import Interrupted
from tools._common import add_debug_flag, default_run_dir, run_cli, setup_logging


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML experiment config")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=0.01 data.input_size=[64,96]")
    p.add_argument("--run-dir", help="output folder (default: <output_dir>/<name>-<timestamp>)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: train.device from the config); under "
                                    "torchrun each process uses cuda:LOCAL_RANK or the CPU")
    p.add_argument("--resume", help="checkpoint to continue from (model, optimiser, schedule, scaler, EMA, epoch, "
                                    "step, RNG, data order)")
    p.add_argument("--weights", help="fine-tune: initialise the model from this file's weights only "
                                     "(same as train.init_weights=...)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --run-dir (its checkpoints and logs are removed first); without "
                        "it such a folder is refused unless --resume continues it")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = add_debug_flag(get_args_parser()).parse_args(argv)
    setup_logging()
    overrides = list(args.overrides) + ([f"train.init_weights={args.weights}"] if args.weights else [])
    cfg = load_config(args.config, overrides)
    info, device = dist_utils.init_distributed(args.device or cfg.train.device)
    try:
        run_dir = args.run_dir or default_run_dir(cfg.output_dir, cfg.name)
        if info.distributed:   # every rank must write to (rank 0) and read from the same folder
            run_dir = dist_utils.broadcast_object(run_dir)
        try:
            return train(cfg, run_dir, device, resume=args.resume, progress=not args.no_progress,
                         overwrite=args.overwrite)
        except Interrupted as err:   # one line with the exact command that continues the run
            command = resume_command(sys.argv[1:] if argv is None else list(argv), run_dir,
                                     getattr(err, "checkpoint", None))
            raise Interrupted(f"{getattr(err, 'where', err)}; continue with: {command}") from None
    finally:
        if info.distributed:
            dist_utils.cleanup()


def resume_command(argv: list[str], run_dir: str, checkpoint: str | None) -> str:
    """The ``tools.train`` command line that continues a run: ``argv`` with ``--run-dir run_dir`` and
    ``--resume checkpoint`` (or, without a checkpoint, the same command with ``--overwrite``)."""
    out: list[str] = []
    skip_next = False
    for i, arg in enumerate(argv):
        if skip_next:
            skip_next = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--resume", "--run-dir"):
            skip_next = "=" not in arg and i + 1 < len(argv)
            continue
        if name in ("--overwrite", "--debug"):
            continue
        out.append(arg)
    out += ["--run-dir", run_dir] + (["--resume", checkpoint] if checkpoint else ["--overwrite"])
    return "python -m tools.train " + shlex.join(out)


if __name__ == "__main__":
    run_cli(main)
