"""Train a model from a config (keypoints, classification or detection: one trainer, the task differs).

    python -m tools.train --config configs/hg-fpn_resnet18_synthetic-kpt_64x96.yaml [key=value ...]
    python -m tools.train --config configs/cls_resnet10t_synthetic-shapes_32x32.yaml train.epochs=2
    python -m tools.train --config ... --run-dir runs/exp1 --resume runs/exp1/last.pt
    python -m tools.train --config ... --run-dir runs/exp1 --overwrite      # replace the run in runs/exp1
    python -m tools.train --config ... --weights runs/other/best.pt        # fine-tune: weights only
    torchrun --nproc_per_node 2 -m tools.train --config ...                 # DistributedDataParallel
    python -m tools.train --config ... train.stop_signals=[TERM,USR1]      # SLURM --signal=USR1@90 stops too

Writes ``config.yaml``, ``provenance.json``, ``parameters.txt``, ``last.pt``, ``best.pt``, ``steps.csv``,
``epochs.csv``, TensorBoard events, ``training_curves.png`` and ``metrics.json`` into one run folder (rank 0
only when distributed). docs/training.md shows every option.

Ctrl-C (exit code 130) and SIGTERM (143; SIGUSR1 138 when ``train.stop_signals`` names it) stop training
with one line: where it stopped, the complete ``last.pt`` and the exact command that continues the run.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

import engine.distributed as dist_utils
from engine.tasks.registry import load_config
from engine.train.run import train
from engine.train.stop import stop_signals
from models.errors import Interrupted, Stopped
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
    args = add_debug_flag(get_args_parser()).parse_intermixed_args(argv)
    setup_logging()
    overrides = list(args.overrides) + ([f"train.init_weights={args.weights}"] if args.weights else [])
    cfg = load_config(args.config, overrides)
    info, device = dist_utils.init_distributed(args.device or cfg.train.device)
    # The stop signals stay handled (engine/train/stop.py) until the report is built and the process group is
    # gone: torchrun signals the other ranks the moment one exits, and a SIGTERM landing after train() put
    # the default action back would end this rank before its line is printed.
    with stop_signals(cfg.train.stop_signals):
        try:
            run_dir = args.run_dir or default_run_dir(cfg.output_dir, cfg.name)
            if info.distributed:   # every rank must write to (rank 0) and read from the same folder
                run_dir = dist_utils.broadcast_object(run_dir)
            try:
                return train(cfg, run_dir, device, resume=args.resume, progress=not args.no_progress,
                             overwrite=args.overwrite)
            except Interrupted as err:   # one line with the exact command that continues the run
                if isinstance(err, Stopped) and err.where is None:
                    raise    # a rank other than 0: rank 0's line carries the command
                command = resume_command(sys.argv[1:] if argv is None else list(argv), run_dir,
                                         getattr(err, "checkpoint", None), launcher_prefix())
                message = f"{getattr(err, 'where', err)}; continue with: {command}"
                raise (Stopped(message, err.signum) if isinstance(err, Stopped) else Interrupted(message)) from None
        finally:
            if info.distributed:
                dist_utils.cleanup()


def resume_command(argv: list[str], run_dir: str, checkpoint: str | None, prefix: str = "python -m tools.train") -> str:
    """The ``tools.train`` command line that continues a run: ``argv`` with ``--run-dir run_dir`` and
    ``--resume checkpoint`` (or, without a checkpoint, the same command with ``--overwrite``), after ``prefix``
    (the launcher: :func:`launcher_prefix`)."""
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
    return f"{prefix} {shlex.join(out)}"


def launcher_prefix(environ: dict | None = None, parent_cmdline: list[str] | None = None) -> str:
    """How this process was launched, up to and including ``-m tools.train``, for the resume command.

    ``python -m tools.train`` for one process. Under torchrun a resume must start the same number of
    processes with the same rendezvous (``train.batch_size`` is per process), so the launcher's own options
    are taken from its command line: torchrun is this worker's parent process (``/proc/<ppid>/cmdline``;
    torchrun sets ``TORCHELASTIC_RUN_ID`` in its workers). Where that cannot be read, the process counts that
    torchrun passed in the environment are spelled out (the rendezvous options of a multi-machine run are
    then the user's to add).
    """
    env = os.environ if environ is None else environ
    if "TORCHELASTIC_RUN_ID" not in env:
        return "python -m tools.train"
    if parent_cmdline is None:
        try:
            with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
                parent_cmdline = [a.decode() for a in f.read().split(b"\0") if a]
        except OSError:
            parent_cmdline = []
    for i in range(1, len(parent_cmdline)):
        if parent_cmdline[i] == "tools.train" and parent_cmdline[i - 1] in ("-m", "--module"):
            launcher = parent_cmdline[:i - 1]
            if len(launcher) > 1 and os.path.basename(launcher[1]) == "torchrun":
                launcher = ["torchrun"] + launcher[2:]       # python /path/bin/torchrun ... -> torchrun ...
            elif launcher[1:3] == ["-m", "torch.distributed.run"]:
                launcher = ["python"] + launcher[1:]         # the interpreter's path -> python, as for one process
            return f"{shlex.join(launcher)} -m tools.train"
    nodes = int(env.get("GROUP_WORLD_SIZE", "1"))
    return (f"torchrun {f'--nnodes {nodes} ' if nodes > 1 else ''}--nproc_per_node {env.get('LOCAL_WORLD_SIZE', '1')} "
            f"-m tools.train")


if __name__ == "__main__":
    run_cli(main)
