"""What every tool does the same way: the error path, logging and run folders."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from datetime import datetime
from typing import NoReturn

from models.errors import InputError, UserError


def setup_logging(verbose: bool = False) -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("PIL", "matplotlib", "timm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def default_run_dir(output_dir: str, name: str) -> str:
    return os.path.join(output_dir, f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")


def add_box_source_flags(parser: argparse.ArgumentParser, boxes_help: str, det_checkpoint_help: str,
                         category_names_from: str, det_default: str) -> None:
    """The flags that choose where a keypoint model's boxes come from (``tools.eval``, ``tools.infer``):
    ``--boxes``, ``--det-checkpoint``, ``--det-category``, ``--det-score-threshold`` (None unless given; the
    tool applies ``det_default``), ``--box-score-threshold`` (None unless given: 0)."""
    parser.add_argument("--boxes", help=boxes_help)
    parser.add_argument("--det-checkpoint", help=det_checkpoint_help)
    parser.add_argument("--det-category",
                        help="categories whose boxes go to the keypoint model, comma-separated names or category "
                             "ids. With --det-checkpoint: the detector's classes (default: all). With --boxes: the "
                             f"file's category_id values, names through {category_names_from} (default: the "
                             "keypoint model's category if the file has it, else all)")
    parser.add_argument("--det-score-threshold", type=float, default=None,
                        help=f"--det-checkpoint only: keep detector boxes at or above this score ({det_default})")
    parser.add_argument("--box-score-threshold", type=float, default=None,
                        help="--boxes only: ignore the file's detections below this score (default 0: all, as "
                             "COCO's protocol)")


def check_box_source_flags(args: argparse.Namespace, tool: str, need_a_model: bool = False) -> None:
    """Refuse box-source flag combinations (``tools.eval``, ``tools.infer``) that would silently do something
    else than asked: two sources at once, or a threshold or category filter for a source that is not given.
    With ``need_a_model`` (``tools.infer``): a keypoint model or a detector must be given, and ``--boxes`` is
    only for a keypoint model."""
    if need_a_model and not args.checkpoint and not args.det_checkpoint:
        raise InputError(f"{tool}: give --checkpoint (keypoints), --det-checkpoint (detection) or both")
    if args.boxes and args.det_checkpoint:
        raise InputError(f"{tool}: --boxes and --det-checkpoint are two sources of boxes; give one")
    if need_a_model and args.boxes and not args.checkpoint:
        raise InputError(f"{tool}: --boxes gives boxes to a keypoint model; add --checkpoint")
    if args.box_score_threshold is not None and not args.boxes:
        raise InputError(f"{tool}: --box-score-threshold filters the entries of --boxes; for a detector use "
                         "--det-score-threshold")
    if args.det_score_threshold is not None and not args.det_checkpoint:
        raise InputError(f"{tool}: --det-score-threshold is the threshold of --det-checkpoint; for a --boxes "
                         "file use --box-score-threshold")
    if args.det_category and not (args.boxes or args.det_checkpoint):
        raise InputError(f"{tool}: --det-category selects the categories of --boxes or --det-checkpoint; give "
                         "one of them, or leave --det-category out")


def add_debug_flag(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Every tool takes ``--debug``: show the traceback of an error a user can fix (``run_cli`` reads it)."""
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the full traceback instead of the one-line message")
    return parser


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> NoReturn:
    """The one entry point of every tool: ``if __name__ == "__main__": run_cli(main)``.

    A ``UserError`` prints ``error: <what, where, the fix>`` on stderr and exits 2 (``Interrupted``: 130),
    without a traceback unless ``--debug`` is among the arguments. Ctrl-C outside a handler that says more
    exits 130 with one line. Any other exception is a bug here and keeps its traceback (exit 1).
    """
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    try:
        main(args)
    except UserError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(getattr(err, "exit_code", 2)) from None
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted (Ctrl-C)", file=sys.stderr)
        raise SystemExit(130) from None
    raise SystemExit(0)
