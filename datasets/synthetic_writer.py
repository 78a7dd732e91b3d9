"""Writing a generated data set once: images + COCO json per split, and a manifest of the settings.

Both built-in sets (``datasets/synthetic.py``, ``datasets/synthetic_detection.py``) are pure functions of
their settings. They are written to disk once, like real data, and rewritten only when the settings or
the generator version change: the manifest records both, and the json files are written atomically, so a
run interrupted while writing leaves no half-written set that looks complete.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

log = logging.getLogger(__name__)

SPLITS = ("train", "val")


def ensure_written(root: str, spec: Any, generator_version: int, what: str,
                   generate_split: Callable[[str, str, int, Any], dict]) -> dict[str, str]:
    """Write the set under ``root`` unless an identical one is already there. Returns the json paths.

    ``spec`` is the settings dataclass (with ``num_train_images`` and ``num_val_images``);
    ``generate_split(root, split, num_images, spec)`` draws one split's images into ``root/images`` and returns
    its COCO dict.
    """
    manifest_path = os.path.join(root, "manifest.json")
    wanted = {"generator_version": generator_version, **asdict(spec)}
    paths = {s: os.path.join(root, "annotations", f"{s}.json") for s in SPLITS}
    if os.path.isfile(manifest_path):
        with open(manifest_path) as f:
            if json.load(f) == wanted and all(os.path.isfile(p) for p in paths.values()):
                return paths
    log.info("writing the synthetic %s set to %s", what, root)
    for split in SPLITS:
        n = spec.num_train_images if split == "train" else spec.num_val_images
        coco = generate_split(root, split, n, spec)
        os.makedirs(os.path.dirname(paths[split]), exist_ok=True)
        write_json_atomic(paths[split], coco)
    write_json_atomic(manifest_path, wanted)   # last: only a complete set has a manifest
    return paths


def write_json_atomic(path: str, obj) -> None:
    """Write to a temporary file and rename it, so ``path`` is never a half-written file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)
