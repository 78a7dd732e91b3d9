"""What every tool does the same way: the error path, logging and run folders (imports no torch, so that
bench scripts running in a peer's own environment can use it)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from datetime import datetime
from typing import NoReturn

from models.errors import UserError


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


def add_debug_flag(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Every tool takes ``--debug``: show the traceback of an error a user can fix (``run_cli`` reads it)."""
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the full traceback instead of the one-line message")
    return parser


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> NoReturn:
    """The one entry point of every tool: ``if __name__ == "__main__": run_cli(main)``.

    A ``UserError`` prints ``error: <what, where, the fix>`` on stderr and exits 2 (``Interrupted``: 130;
    ``Stopped``, a stop signal: 128 + its number, 143 for SIGTERM), without a traceback unless ``--debug`` is
    among the arguments. Ctrl-C outside a handler that says more exits 130 with one line. Any other exception
    is a bug here and keeps its traceback (exit 1).
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
