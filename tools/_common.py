"""What every tool does the same way: logging and run folders."""

from __future__ import annotations

import logging
import os
import sys
from datetime import datetime


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
