"""Small helpers every layer uses (a leaf module: it imports nothing of ours, so ``datasets``, ``engine`` and
``tools`` may all import it without cycles)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import torch
from torch import nn


def device_of(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (where its inputs must go)."""
    return next(model.parameters()).device


def first_n(items: Iterable, n: int = 8, empty: str = "") -> str:
    """``"a, b, c, ... (+N more)"``: the first ``n`` items, then how many were left out (``empty`` for none)."""
    items = list(items)
    if not items:
        return empty
    shown = ", ".join(map(str, items[:n]))
    return shown + (f", ... (+{len(items) - n} more)" if len(items) > n else "")


def write_json(path: str, obj, indent: int | None = None) -> None:
    """Write ``obj`` as JSON to a temporary file and rename it, so that ``path`` is never half-written (a run
    killed midway leaves the previous file or none). Values JSON cannot hold (paths, numpy scalars) are
    written as their ``str``. Creates the parent folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=indent, default=str)
    os.replace(tmp, path)
