"""COCO-style keypoint annotations -> one record per person/animal instance (top-down).

Reads plain JSON (``images``, ``annotations``, ``categories`` with ``keypoints`` names and ``skeleton``) and
checks it on the way in, so a bad file fails here with its name, the field and the fix, not as a shape error
deep in training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from datasets.coco_common import (
    has_area,
    read_coco_json,
    resolve_image_paths,
    select_split_images,
)
from datasets.coco_validate import SKIP_HINT, format_left_out, validate_coco
from datasets.image_io import probe_image_files
from models.bbox import coco_xywh_to_xyxy
from models.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class KeypointInstance:
    """One annotated instance. Coordinates in pixel-index convention (pixel i centred at i)."""

    image_id: int
    ann_id: int
    image_path: str
    image_size: tuple[int, int]        # (width, height) of the stored image (the file's, when the json differs)
    bbox: np.ndarray                   # [4] inclusive xyxy, float64
    keypoints: np.ndarray              # [K, 3] x, y, v (v: 0 unlabelled, 1 occluded, 2 visible)
    area: float


@dataclass
class KeypointDataset:
    """What a COCO keypoint file holds, checked: the instances and what describes the skeleton."""

    ann_file: str
    image_root: str
    instances: list[KeypointInstance]
    images: dict[int, dict]            # image id -> the json image record
    category_id: int
    keypoint_names: list[str]
    skeleton: list[tuple[int, int]]    # zero-based index pairs
    image_ids: list[int] = field(default_factory=list)   # the images of this split (readable ones)
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_names)


def load_coco_keypoints(ann_file: str, image_root: str, category_id: int | None = None,
                        missing_images: str = "error", subset: str = "all", holdout_fraction: float = 0.1,
                        holdout_seed: int = 0, on_bad_annotation: str = "error") -> KeypointDataset:
    """Read and check a COCO keypoint file.

    Args:
        ann_file: path of the json.
        image_root: folder the images' ``file_name`` are relative to.
        category_id: which category to read; may be omitted when only one has keypoints.
        missing_images: ``"error"`` or ``"skip"`` (data.on_bad_image: drop the instances of images that are
            missing, truncated or unreadable).
        subset: ``"all"``, or a deterministic split of the *images*: ``"holdout"`` (a ``holdout_fraction``
            share chosen with ``holdout_seed``) or ``"rest"`` (the others), for sets without a val split.
        on_bad_annotation: ``"error"`` or ``"skip"`` (data.on_bad_annotation): what a malformed annotation
            does (:mod:`datasets.coco_validate`: non-finite numbers, wrong types, bad visibility ...).

    Crowd instances and instances with no labelled keypoint are skipped (counted in ``stats``). Labelled
    keypoints outside the image are marked unlabelled (they would put targets on padding); the image's size
    is the file's, not the json's, when they differ (counted). A box with zero or negative width/height is a
    bad annotation naming its id. Every instance left out is counted by reason in one log line; a split with
    nothing left is an error.
    """
    raw = read_coco_json(ann_file, image_root, missing_images, kind="keypoint")
    data, dropped = validate_coco(raw, ann_file, "keypoints", on_bad_annotation)
    category = _pick_category(data["categories"], category_id, ann_file)
    names = list(category["keypoints"])
    skeleton = _read_skeleton(category.get("skeleton") or [], len(names), ann_file)
    images, keep_ids = select_split_images(data, ann_file, subset, holdout_fraction, holdout_seed)
    stats = _new_stats(raw, dropped)
    candidates = _select_annotations(data["annotations"], category["id"], keep_ids, len(names), on_bad_annotation,
                                     ann_file, stats)
    paths = resolve_image_paths(image_root, images, {ann["image_id"] for ann, _, _ in candidates}, ann_file)
    sizes, unreadable, resized = probe_image_files(paths, images, ann_file, missing_images)
    stats["resized_images"] = len(resized)
    instances = _build_instances(candidates, paths, sizes, unreadable, stats)
    _report(ann_file, subset, category["id"], instances, stats)
    return KeypointDataset(ann_file=ann_file, image_root=image_root, instances=instances, images=images,
                           category_id=int(category["id"]), keypoint_names=names, skeleton=skeleton,
                           image_ids=sorted(keep_ids - set(unreadable)), stats=stats)


# The reasons an annotation is left out, as the log line words them (stat key -> words).
LEFT_OUT_WORDS = {"crowd": "crowd", "no_keypoints": "no labelled keypoints", "other_category": "other category",
                  "unknown_category": "category not in categories", "bad_annotation": "malformed (skipped)",
                  "missing_image": "image missing or unreadable", "other_subset": "other split"}


def _pick_category(categories: list, category_id: int | None, ann_file: str) -> dict:
    with_kpts = [c for c in categories if c.get("keypoints")]
    if category_id is not None:
        found = [c for c in categories if c["id"] == int(category_id)]
        if not found:
            raise DataError(f"{ann_file}: no category with id {category_id}; ids present: "
                             f"{[c.get('id') for c in categories]}")
        if not found[0].get("keypoints"):
            raise DataError(f"{ann_file}: category {category_id} has no 'keypoints' names")
        return found[0]
    if len(with_kpts) != 1:
        raise DataError(f"{ann_file}: expected exactly one category with 'keypoints', found {len(with_kpts)}; "
                         f"set data.category_id")
    return with_kpts[0]


def _read_skeleton(skeleton: list, num_k: int, ann_file: str) -> list[tuple[int, int]]:
    """COCO skeletons are one-based index pairs; we keep zero-based ones."""
    pairs = []
    for pair in skeleton:
        if not all(1 <= p <= num_k for p in pair):
            raise DataError(f"{ann_file}: skeleton link {pair} is not a pair of one-based indices in 1..{num_k}")
        pairs.append((int(pair[0]) - 1, int(pair[1]) - 1))
    return pairs


def _new_stats(raw: dict, dropped) -> dict[str, int]:
    """The reader's counts, zero but for the file's annotations and what :func:`validate_coco` dropped."""
    return {"annotations": len(raw["annotations"]), "crowd": 0, "no_keypoints": 0, "missing_image": 0,
            "outside_image": 0, "other_category": 0, "other_subset": 0,
            "unknown_category": dropped.pop("unknown_category", 0), "bad_annotation": sum(dropped.values()),
            "resized_images": 0}


def _select_annotations(annotations: list, category_id: int, keep_ids: set[int], num_k: int,
                        on_bad_annotation: str, ann_file: str, stats: dict) -> list[tuple[dict, np.ndarray, list]]:
    """``(annotation, keypoints [K, 3] float64, COCO bbox [x, y, w, h])`` of each annotation that can become an
    instance, before its image is looked at; each one left out is counted in ``stats`` by reason."""
    candidates = []
    for ann in annotations:
        if ann["category_id"] != category_id:
            stats["other_category"] += 1
            continue
        if ann["image_id"] not in keep_ids:
            stats["other_subset"] += 1
            continue
        if ann["iscrowd"]:
            stats["crowd"] += 1
            continue
        kpts = np.asarray(ann["keypoints"], dtype=np.float64).reshape(num_k, 3)
        if not (kpts[:, 2] > 0).any():
            stats["no_keypoints"] += 1
            continue
        bbox = ann["bbox"]
        if not has_area(bbox):
            if on_bad_annotation == "error":
                raise DataError(f"{ann_file}: annotation {ann['id']} has a zero-area or negative box {list(bbox)} "
                                f"(w and h must be > 0); {SKIP_HINT}")
            stats["bad_annotation"] += 1
            continue
        candidates.append((ann, kpts, bbox))
    return candidates


def _build_instances(candidates: list[tuple[dict, np.ndarray, list]], paths: dict[int, str],
                     sizes: dict[int, tuple[int, int]], unreadable: dict[int, str],
                     stats: dict) -> list[KeypointInstance]:
    """The instances of the candidates whose image can be read, sized from the file; counts in ``stats`` the
    instances of unreadable images and the keypoints marked unlabelled for lying outside their image."""
    instances = []
    for ann, kpts, bbox in candidates:
        image_id = ann["image_id"]
        if image_id in unreadable:
            stats["missing_image"] += 1
            continue
        width, height = sizes[image_id]
        stats["outside_image"] += _unlabel_outside(kpts, width, height)
        area = float(ann["area"] or bbox[2] * bbox[3])
        instances.append(KeypointInstance(
            image_id=image_id, ann_id=ann["id"], image_path=paths[image_id], image_size=(width, height),
            bbox=coco_xywh_to_xyxy(np.asarray(bbox, dtype=np.float64)), keypoints=kpts, area=area))
    stats["instances"] = len(instances)
    return instances


def _unlabel_outside(kpts: np.ndarray, width: int, height: int) -> int:
    """Mark the labelled keypoints (``[K, 3]``, pixel-index x, y, v) outside the image unlabelled, in place;
    returns how many. They would put targets on padding."""
    # Pixels span [-0.5, W - 0.5]; a labelled point beyond that is off the image.
    off = (kpts[:, 2] > 0) & ((kpts[:, 0] < -0.5) | (kpts[:, 0] > width - 0.5) |
                              (kpts[:, 1] < -0.5) | (kpts[:, 1] > height - 0.5))
    if off.any():
        kpts[off, 2] = 0
    return int(off.sum())


def _report(ann_file: str, subset: str, category_id: int, instances: list[KeypointInstance], stats: dict) -> None:
    """Log what was read and left out; a split with no instance left is an error."""
    left_out = format_left_out(stats, LEFT_OUT_WORDS)
    log.info("%s (%s): %d instances of %d annotations; left out: %s; %d keypoints outside their image marked "
             "unlabelled; %d images sized from the file, not the json", ann_file, subset, len(instances),
             stats["annotations"], left_out, stats["outside_image"], stats["resized_images"])
    if not instances:
        raise DataError(f"{ann_file}: no usable instances of category {category_id} in the {subset!r} split "
                        f"(of {stats['annotations']} annotations, left out: {left_out}); nothing to train on or "
                        f"evaluate")

