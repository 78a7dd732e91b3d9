"""What the COCO readers (keypoints, detection) share: opening and checking the json, the image records,
image paths kept inside the image root, and the seeded holdout split of the images.

Each check fails with the file's name and the field, so a bad file is reported where it is read.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from datasets.coco_validate import check_coco_layout, validate_coco
from models.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def read_coco_json(ann_file: str, image_root: str, missing_images: str, kind: str) -> dict:
    """The parsed json of ``ann_file``, once the arguments, the file, the image folder and the three list
    fields (``images``, ``annotations``, ``categories``) are checked.

    missing_images: ``"error"`` or ``"skip"`` (checked here; the reader applies it).
    kind: what the file holds (``"keypoint"``, ``"detection"``), for the error messages.
    """
    if missing_images not in ("error", "skip"):
        raise ConfigError(f"missing_images={missing_images!r}: use 'error' or 'skip' (data.on_bad_image)")
    if not os.path.isdir(image_root):
        raise DataError(f"image folder not found: {image_root} (for {ann_file}); fix the split's image_root")
    return load_json(ann_file, kind)


def load_json(ann_file: str, kind: str) -> dict:
    """The parsed json of a COCO file, its three list fields checked (a :class:`DataError` names the file)."""
    if not os.path.isfile(ann_file):
        raise DataError(f"annotation file not found: {ann_file}; fix the split's ann_file")
    try:
        with open(ann_file) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{ann_file} is not valid JSON: {err}") from err
    check_coco_layout(data, ann_file, kind)
    return data


def load_validated_ground_truth(ann_file: str, kind: str, on_bad_annotation: str = "error") -> dict:
    """The file's ground truth after :func:`datasets.coco_validate.validate_coco` (what COCOeval may see)."""
    clean, _ = validate_coco(load_json(ann_file, kind), ann_file, kind, on_bad_annotation)
    return clean


def index_image_records(data: dict, ann_file: str) -> dict[int, dict]:
    """Image id -> the json image record (records checked by :func:`datasets.coco_validate.validate_coco`)."""
    return {int(img["id"]): img for img in data["images"]}


def select_split_images(data: dict, ann_file: str, subset: str, fraction: float,
                        seed: int) -> tuple[dict[int, dict], set[int]]:
    """``(records, keep_ids)``: image id -> json image record for every image of the file, and the ids of the
    images in ``subset`` (see :func:`split_image_ids`)."""
    records = index_image_records(data, ann_file)
    return records, split_image_ids(sorted(records), subset, fraction, seed)


def resolve_image_paths(image_root: str, records: dict[int, dict], image_ids, ann_file: str) -> dict[int, str]:
    """Image id -> path of the image file, for ``image_ids`` (see :func:`resolve_image_path`)."""
    return {i: resolve_image_path(image_root, records[i]["file_name"], ann_file) for i in sorted(image_ids)}


def has_area(bbox) -> bool:
    """Whether a COCO ``[x, y, w, h]`` box has a positive width and height."""
    return bbox[2] > 0 and bbox[3] > 0


def resolve_image_path(image_root: str, file_name: str, ann_file: str = "") -> str:
    """``image_root/file_name``, refusing names that, as written, escape the root (``../``, absolute paths).

    The check is on the path as written, not on where links lead: an image file (or subfolder) that is a
    symbolic link, as DVC, git-annex or shared storage make them, is read wherever its target lives.
    """
    root = os.path.realpath(image_root)
    rel = os.path.normpath(file_name)
    if os.path.isabs(file_name) or rel == os.pardir or rel.startswith(os.pardir + os.sep):
        raise DataError(f"{ann_file}: file_name {file_name!r} lies outside the image root {root}; file names must "
                        f"be relative paths inside the image root (no '../', no absolute paths)")
    return os.path.join(root, rel)


def split_image_ids(ids: list[int], subset: str, fraction: float, seed: int) -> set[int]:
    """The image ids of ``subset``: ``"all"`` of them, or a seeded split for sets without a val split,
    ``"holdout"`` (a ``fraction`` share, at least one image, chosen with ``seed``) or ``"rest"`` (the others)."""
    if subset == "all":
        return set(ids)
    if subset not in ("holdout", "rest"):
        raise ConfigError(f"subset={subset!r}: use 'all', 'holdout' or 'rest'")
    if not 0 < fraction < 1:
        raise ConfigError(f"holdout_fraction must be in (0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(len(ids))
    n_hold = max(1, round(fraction * len(ids)))
    hold = {ids[i] for i in order[:n_hold]}
    return hold if subset == "holdout" else set(ids) - hold
