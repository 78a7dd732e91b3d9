"""What the format readers share: the COCO builder, the list of problems found, the keypoint box, image sizes
and the atomic json writer.

Coordinates written are in this repository's pixel-index convention (the centre of pixel ``i`` is at ``i``,
an image of width ``W`` spans ``[-0.5, W - 0.5]``; docs/conventions.md). Each reader says how its format's
coordinates map onto it (docs/formats.md has the table).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from models.errors import DataError, InputError

# Sets without boxes get the tight box of the labelled keypoints, grown by this fraction of its width and
# height on each side (the shared COCO sets built from the same sources used 10 %).
BOX_PADDING = 0.1
# How many problems a DataError lists before it says "and N more".
_SHOWN_PROBLEMS = 5


@dataclass
class Conversion:
    """What a reader returns.

    coco: the COCO keypoint dict (``images``, ``annotations``, ``categories``); ``file_name``s are relative to
        ``image_root``.
    image_root: the folder to pass as ``image_root`` / ``--image-root``.
    counts: what was read and what was skipped (``images``, ``instances``, ``skipped_*``).
    notes: lines worth printing (choices the reader made, e.g. a flip map it wrote).
    """

    coco: dict
    image_root: str
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Problems:
    """Bad input found while reading, collected so that one error names every kind and counts them.

    ``add(kind, where, what)``; ``raise_if_any(skip_bad)`` raises one DataError listing the counts per kind and
    the first few problems (each with its file and line or element), unless ``skip_bad`` (then the caller has
    dropped the bad items and the counts go into the conversion's report).
    """

    def __init__(self, source: str):
        self.source = source
        self.items: list[tuple[str, str]] = []

    def add(self, kind: str, where: str, what: str) -> None:
        self.items.append((kind, f"{where}: {what}"))

    def counts(self) -> dict[str, int]:
        return dict(Counter(kind for kind, _ in self.items))

    def raise_if_any(self, skip_bad: bool) -> None:
        if not self.items or skip_bad:
            return
        counts = ", ".join(f"{n} {kind}" for kind, n in self.counts().items())
        shown = "; ".join(msg for _, msg in self.items[:_SHOWN_PROBLEMS])
        more = f"; and {len(self.items) - _SHOWN_PROBLEMS} more" if len(self.items) > _SHOWN_PROBLEMS else ""
        raise DataError(f"{self.source}: {len(self.items)} problems ({counts}): {shown}{more}. Nothing was "
                        f"written; fix these, or pass --skip-bad to leave the bad items out (they are counted)")


def image_size(path: str) -> tuple[int, int]:
    """(width, height) of an image file, reading only its header."""
    from PIL import Image

    with Image.open(path) as im:
        return int(im.width), int(im.height)


def keypoint_box(keypoints: np.ndarray, padding: float = BOX_PADDING) -> list[float] | None:
    """COCO ``[x, y, w, h]`` of the labelled keypoints' tight box grown by ``padding`` of its extent on each
    side; None when no keypoint is labelled. keypoints: [K, 3] (x, y, v), pixel-index coordinates.

    The tight box's corners are taken as the box's edge-to-edge extent, so a single labelled point gives an
    empty box (w = h = 0); ``CocoBuilder.add_instance`` skips such instances.
    """
    pts = keypoints[keypoints[:, 2] > 0, :2]
    if len(pts) == 0:
        return None
    lo, hi = pts.min(0), pts.max(0)
    ext = hi - lo
    x, y = lo - padding * ext
    w, h = ext * (1 + 2 * padding)
    return [float(x), float(y), float(w), float(h)]


class CocoBuilder:
    """Collects images and instances into a COCO keypoint dict with consecutive ids (from 1).

    Args:
        keypoint_names: the K names, in the order the keypoints are stored.
        category: the category's name.
        skeleton: zero-based index pairs (stored one-based, as COCO does), or None.
        flip_index: ``flip[i]`` = the keypoint that i becomes under a horizontal flip, or None when the format
            does not say (stored in the category as ``flip_index``; tools.make_config reads it).
    """

    def __init__(self, keypoint_names: list[str], category: str = "object",
                 skeleton: list[tuple[int, int]] | None = None, flip_index: list[int] | None = None):
        self.names = list(keypoint_names)
        self.categories: list[dict] = []
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.add_category(category, skeleton, flip_index)

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    def add_category(self, name: str, skeleton: list[tuple[int, int]] | None = None,
                     flip_index: list[int] | None = None) -> int:
        cat = {"id": len(self.categories) + 1, "name": name, "supercategory": name, "keypoints": list(self.names),
               "skeleton": [[int(a) + 1, int(b) + 1] for a, b in (skeleton or [])]}
        if flip_index is not None:
            if sorted(flip_index) != list(range(len(self.names))):
                raise ValueError(f"flip_index {flip_index} is not a permutation of 0..{len(self.names) - 1}")
            cat["flip_index"] = [int(i) for i in flip_index]
        self.categories.append(cat)
        return cat["id"]

    def add_image(self, file_name: str, width: int, height: int, split: str | None = None) -> int:
        image_id = len(self.images) + 1
        record = {"id": image_id, "file_name": file_name.replace(os.sep, "/"), "width": int(width),
                  "height": int(height)}
        if split is not None:
            record["split"] = split
        self.images.append(record)
        return image_id

    def add_instance(self, image_id: int, keypoints: np.ndarray, bbox: list[float] | None = None,
                     category_id: int = 1) -> bool:
        """keypoints: [K, 3] (x, y, v) in pixel-index coordinates, v in {0, 1, 2}; unlabelled points are
        written as (0, 0, 0). bbox: COCO [x, y, w, h], or None for the padded keypoint box. Returns False (and
        adds nothing) when the box is missing or empty (no labelled keypoint, or a single one)."""
        kp = np.asarray(keypoints, dtype=np.float64).reshape(self.num_keypoints, 3).copy()
        kp[kp[:, 2] <= 0] = 0.0
        if bbox is None:
            bbox = keypoint_box(kp)
        num = int((kp[:, 2] > 0).sum())
        if bbox is None or bbox[2] <= 0 or bbox[3] <= 0:
            return False
        self.annotations.append({
            "id": len(self.annotations) + 1, "image_id": int(image_id), "category_id": int(category_id),
            "iscrowd": 0, "keypoints": [float(v) for v in kp.reshape(-1)], "num_keypoints": num,
            "bbox": [float(v) for v in bbox], "area": float(bbox[2] * bbox[3]),
        })
        return True

    def to_dict(self) -> dict:
        return {"images": self.images, "annotations": self.annotations, "categories": self.categories}


def outside_image(x: float, y: float, width: int, height: int) -> bool:
    """Whether a pixel-index point lies outside the image's area ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``."""
    eps = 1e-6
    return not (-0.5 - eps <= x <= width - 0.5 + eps and -0.5 - eps <= y <= height - 0.5 + eps)


def relative_to(root: str, path: str) -> str:
    return os.path.relpath(os.path.abspath(path), os.path.abspath(root)).replace(os.sep, "/")


def require_file(path: str, what: str, flag: str = "SOURCE") -> None:
    if not os.path.isfile(path):
        raise InputError(f"{what} not found: {path} ({flag}); check the path")


def require_dir(path: str, what: str, flag: str = "SOURCE") -> None:
    if not os.path.isdir(path):
        raise InputError(f"{what} not found: {path} ({flag}); check the path")


def write_coco_json(path: str, coco: dict) -> None:
    """Write ``coco`` to ``path`` atomically: a temporary file in the same folder, then a rename, so ``path``
    is never half-written (an interrupted run leaves the old file or none)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(coco, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
