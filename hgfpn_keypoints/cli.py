"""The console scripts: ``hgfpn-train ARGS`` runs ``python -m tools.train ARGS`` from any folder.

``python -m tools.X`` only works where ``tools`` is importable, i.e. from the checkout; these functions (named in
setup.py's ``entry_points``) first make our packages importable (:func:`hgfpn_keypoints.use_repository`), then
run the tool through its usual error path (``tools._common.run_cli``). Relative paths in the arguments are read
from the current folder, as with ``python -m``.
"""

from __future__ import annotations

import importlib
import sys
from typing import NoReturn

from hgfpn_keypoints import RepositoryError, use_repository


def run_tool(name: str) -> NoReturn:
    """Run ``tools.<name>`` with the command line's arguments; a conflict is one ``error:`` line (exit 2),
    as the tools print a user's error."""
    try:
        use_repository()
    except RepositoryError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    from tools._common import run_cli  # importable only now

    run_cli(importlib.import_module(f"tools.{name}").main)


def train() -> NoReturn:
    """``hgfpn-train``: ``python -m tools.train``."""
    run_tool("train")


def eval() -> NoReturn:  # the tool's name; this module never calls the builtin
    """``hgfpn-eval``: ``python -m tools.eval``."""
    run_tool("eval")


def infer() -> NoReturn:
    """``hgfpn-infer``: ``python -m tools.infer``."""
    run_tool("infer")


def export() -> NoReturn:
    """``hgfpn-export``: ``python -m tools.export``."""
    run_tool("export")


def convert() -> NoReturn:
    """``hgfpn-convert``: ``python -m tools.convert``."""
    run_tool("convert")


def make_config() -> NoReturn:
    """``hgfpn-make-config``: ``python -m tools.make_config``."""
    run_tool("make_config")


def demo() -> NoReturn:
    """``hgfpn-demo``: ``python -m tools.demo`` (its default ``--config`` is relative: run it in the checkout or
    pass ``--config``)."""
    run_tool("demo")


def browse_dataset() -> NoReturn:
    """``hgfpn-browse-dataset``: ``python -m tools.browse_dataset``."""
    run_tool("browse_dataset")


def show_heatmaps() -> NoReturn:
    """``hgfpn-show-heatmaps``: ``python -m tools.show_heatmaps``."""
    run_tool("show_heatmaps")


def estimate_sigmas() -> NoReturn:
    """``hgfpn-estimate-sigmas``: ``python -m tools.estimate_sigmas``."""
    run_tool("estimate_sigmas")


def diagnose_training() -> NoReturn:
    """``hgfpn-diagnose-training``: ``python -m tools.diagnose_training``."""
    run_tool("diagnose_training")


def fpn_inputs() -> NoReturn:
    """``hgfpn-fpn-inputs``: ``python -m tools.fpn_inputs``."""
    run_tool("fpn_inputs")

