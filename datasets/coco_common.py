"""What the COCO readers (keypoints, detection) share: opening and checking the json, the image records,
image paths kept inside the image root, and the seeded holdout split of the images.

Each check fails with the file's name and the field, so a bad file is reported where it is read.
"""

from __future__ import annotations

import json
import os

import numpy as np


def read_coco_json(ann_file: str, image_root: str, missing_images: str, kind: str) -> dict:
    """The parsed json of ``ann_file``, once the arguments, the file, the image folder and the three list
    fields (``images``, ``annotations``, ``categories``) are checked.

    missing_images: ``"error"`` or ``"skip"`` (checked here; the reader applies it).
    kind: what the file holds (``"keypoint"``, ``"detection"``), for the error messages.
    """
    if missing_images not in ("error", "skip"):
        raise ValueError(f"missing_images={missing_images!r}: use 'error' or 'skip' (data.on_bad_image)")
    if not os.path.isfile(ann_file):
        raise FileNotFoundError(f"annotation file not found: {ann_file}")
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"image folder not found: {image_root} (for {ann_file})")
    try:
        with open(ann_file) as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{ann_file} is not valid JSON: {err}") from err
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{ann_file}: missing or non-list field {key!r} (a COCO {kind} file has images, "
                             f"annotations and categories)")
    return data


def index_image_records(data: dict, ann_file: str) -> dict[int, dict]:
    """Image id -> the json image record, each checked for ``id``, ``file_name``, ``width`` and ``height``."""
    records = {}
    for img in data["images"]:
        for key in ("id", "file_name", "width", "height"):
            if key not in img:
                raise ValueError(f"{ann_file}: image record {img.get('id', '?')} lacks {key!r}")
        records[int(img["id"])] = img
    return records


def resolve_image_path(image_root: str, file_name: str, ann_file: str = "") -> str:
    """``image_root/file_name``, refusing names that escape the root (``../``, absolute paths, links out)."""
    root = os.path.realpath(image_root)
    path = os.path.realpath(os.path.join(root, file_name))
    if os.path.commonpath([root, path]) != root:
        raise ValueError(f"{ann_file}: file_name {file_name!r} resolves to {path}, outside the image root {root}; "
                         f"file names must be relative paths inside the image root")
    return path


def split_image_ids(ids: list[int], subset: str, fraction: float, seed: int) -> set[int]:
    """The image ids of ``subset``: ``"all"`` of them, or a seeded split for sets without a val split,
    ``"holdout"`` (a ``fraction`` share, at least one image, chosen with ``seed``) or ``"rest"`` (the others)."""
    if subset == "all":
        return set(ids)
    if subset not in ("holdout", "rest"):
        raise ValueError(f"subset={subset!r}: use 'all', 'holdout' or 'rest'")
    if not 0 < fraction < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(len(ids))
    n_hold = max(1, round(fraction * len(ids)))
    hold = {ids[i] for i in order[:n_hold]}
    return hold if subset == "holdout" else set(ids) - hold
