"""What every tool does the same way: logging, device choice, run folders."""

from __future__ import annotations

import logging
import os
import sys
from datetime import datetime

import torch


def setup_logging(verbose: bool = False) -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("PIL", "matplotlib", "timm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is an error that says so."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def default_run_dir(output_dir: str, name: str) -> str:
    return os.path.join(output_dir, f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
