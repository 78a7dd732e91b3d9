"""What produced a run: code version, packages, seed, and hashes of the annotation files."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone

PACKAGES = ("torch", "torchvision", "timm", "albumentations", "opencv-python-headless", "numpy", "pycocotools",
            "omegaconf")


def git_state(cwd: str | None = None) -> dict:
    """``{"commit": sha or None, "dirty": bool or None}`` for the repository holding this file."""
    cwd = cwd or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=10, check=True).stdout
        return {"commit": commit, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def provenance(seed: int, annotation_files: list[str] = (), data_hashes: dict | None = None) -> dict:
    """A plain dict (checkpoint- and JSON-safe) describing how a run was made.

    annotation_files: hashed by content. data_hashes: ``{description: sha256}`` for data without an
    annotation file (an image-folder listing, a synthetic generator's settings), computed by the data code.
    """
    annotations = {p: file_sha256(p) for p in sorted(set(annotation_files)) if os.path.isfile(p)}
    annotations.update(data_hashes or {})
    return {
        "git": git_state(),
        "packages": package_versions(),
        "seed": int(seed),
        "annotations": annotations,
        "command": " ".join(sys.argv),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
