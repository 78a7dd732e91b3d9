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

import cv2
import numpy as np

from models.utils import write_json

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
SPLIT_CODES = {"train": 0, "val": 1}   # part of every image's seed


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
        write_json(paths[split], coco)
    write_json(manifest_path, wanted)   # last: only a complete set has a manifest
    return paths


def write_split_images(root: str, split: str, num_images: int, seed: int,
                       render: Callable[[np.random.Generator], tuple[np.ndarray, list[dict]]], desc: str,
                       progress: bool = True) -> tuple[list[dict], list[dict]]:
    """Draw ``num_images`` images of one split with ``render`` and write them as JPEGs under ``root/images``.

    Image ``i`` draws from ``default_rng([seed, split code, i])``, so every image is a pure function of the
    settings and its index. ``render(rng)`` returns an RGB image and its annotations (COCO dicts without
    ids). Returns the COCO ``images`` and ``annotations`` lists, with ids, ``image_id`` and ``iscrowd`` set.
    """
    from tqdm import tqdm

    os.makedirs(os.path.join(root, "images", split), exist_ok=True)
    images, annotations = [], []
    for i in tqdm(range(num_images), desc=desc, disable=not progress, leave=False):
        image, anns = render(np.random.default_rng([seed, SPLIT_CODES[split], i]))
        image_id = i + 1
        file_name = f"{split}/{image_id:06d}.jpg"
        cv2.imwrite(os.path.join(root, "images", file_name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append({"id": image_id, "file_name": file_name, "width": image.shape[1], "height": image.shape[0]})
        for ann in anns:
            ann.update(id=len(annotations) + 1, image_id=image_id, iscrowd=0)
            annotations.append(ann)
    return images, annotations
