"""COCO-style keypoint annotations -> one record per person/animal instance (top-down).

Reads plain JSON (``images``, ``annotations``, ``categories`` with ``keypoints`` names and ``skeleton``) and
checks it on the way in, so a bad file fails here with its name, the field and the fix, not as a shape error
deep in training.

The instances are kept as a few numpy arrays (:class:`KeypointInstances`), not as one Python object per
instance: DataLoader workers are forked, and CPython writes into every object it touches (reference counts,
GC headers), so a list of 200k instance objects is copied page by page into each worker as an epoch reaches
its samples (hundreds of MB per worker, pytorch/pytorch#13246). Arrays are a handful of objects whose data
pages are only read, and stay shared. Indexing still gives a :class:`KeypointInstance`, built on the fly.
"""

from __future__ import annotations

import logging
import operator
import os
from collections.abc import Iterable, Iterator, Sequence
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


class PackedStrings(Sequence):
    """Strings (file paths) packed into one ``uint8`` array with ``int64`` offsets: two objects for any number
    of strings, so forked workers that read them copy nothing. ``os.fsencode``/``os.fsdecode`` round trip,
    so a path with undecodable bytes comes back unchanged."""

    def __init__(self, strings: Iterable[str] = ()):
        encoded = [os.fsencode(s) for s in strings]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(np.array([len(b) for b in encoded], dtype=np.int64), out=self.offsets[1:])
        self.data = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, item):
        try:
            i = check_index(item, len(self))
        except TypeError:       # a slice, a list of indices or a mask
            return PackedStrings(self[j] for j in np.arange(len(self))[item])
        return os.fsdecode(self.data[self.offsets[i]:self.offsets[i + 1]].tobytes())

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"PackedStrings({len(self)} strings, {self.data.nbytes} bytes)"


def check_index(item, length: int) -> int:
    """``item`` as a non-negative index into a sequence of ``length`` (negative ones count from the end)."""
    i = operator.index(item)
    if i < 0:
        i += length
    if not 0 <= i < length:
        raise IndexError(f"index {item} is out of range for {length} items")
    return i


def id_array(values: Sequence[int]) -> np.ndarray:
    """Integer ids as ``int64``; ids beyond its range (valid JSON, never seen in practice) as an object array."""
    try:
        return np.array(values, dtype=np.int64).reshape(len(values))
    except OverflowError:
        out = np.empty(len(values), dtype=object)
        out[:] = list(values)
        return out


class KeypointInstances(Sequence):
    """The instances of a keypoint file as arrays (struct of arrays); ``instances[i]`` is a
    :class:`KeypointInstance` built on the fly whose ``bbox`` and ``keypoints`` are views of the arrays.

    Arrays: ``image_ids`` [N] and ``ann_ids`` [N] int64; ``image_sizes`` [N, 2] int64 (width, height);
    ``bboxes`` [N, 4] and ``keypoints`` [N, K, 3] float64; ``areas`` [N] float64; ``image_paths``
    (:class:`PackedStrings`). A slice (or a list of indices) gives another :class:`KeypointInstances`.
    """

    def __init__(self, image_ids, ann_ids, image_paths: Sequence[str], image_sizes, bboxes, keypoints, areas,
                 num_keypoints: int | None = None):
        n = len(image_ids)
        self.image_ids = id_array(list(image_ids)) if not isinstance(image_ids, np.ndarray) else image_ids
        self.ann_ids = id_array(list(ann_ids)) if not isinstance(ann_ids, np.ndarray) else ann_ids
        self.image_paths = image_paths if isinstance(image_paths, PackedStrings) else PackedStrings(image_paths)
        self.image_sizes = np.asarray(image_sizes, dtype=np.int64).reshape(n, 2)
        self.bboxes = np.asarray(bboxes, dtype=np.float64).reshape(n, 4)
        k = num_keypoints if n == 0 and num_keypoints is not None else None
        self.keypoints = np.asarray(keypoints, dtype=np.float64).reshape(n, -1 if k is None else k, 3)
        self.areas = np.asarray(areas, dtype=np.float64).reshape(n)
        if not (len(self.ann_ids) == len(self.image_paths) == n):
            raise ValueError(f"KeypointInstances: {n} image ids, {len(self.ann_ids)} annotation ids and "
                             f"{len(self.image_paths)} paths")

    @classmethod
    def from_instances(cls, instances: Iterable, num_keypoints: int | None = None) -> KeypointInstances:
        """The arrays of any instances with ``image_id``, ``ann_id``, ``image_path``, ``image_size``, ``bbox``,
        ``keypoints`` [K, 3] and ``area`` (e.g. a list of :class:`KeypointInstance`); ``num_keypoints`` gives
        K when there are none. A :class:`KeypointInstances` is returned as it is."""
        if isinstance(instances, KeypointInstances):
            return instances
        items = list(instances)
        k = len(items[0].keypoints) if items else (num_keypoints or 0)
        kpts = np.stack([np.asarray(i.keypoints, np.float64) for i in items]) if items else np.zeros((0, k, 3))
        return cls([i.image_id for i in items], [i.ann_id for i in items], [i.image_path for i in items],
                   [tuple(i.image_size) for i in items], [np.asarray(i.bbox, np.float64) for i in items], kpts,
                   [i.area for i in items], num_keypoints=k)

    @property
    def num_keypoints(self) -> int:
        return self.keypoints.shape[1]

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, item):
        try:
            i = check_index(item, len(self))
        except TypeError:       # a slice, a list of indices or a mask: the instances it selects
            idx = np.arange(len(self))[item]
            return KeypointInstances(self.image_ids[idx], self.ann_ids[idx], [self.image_paths[j] for j in idx],
                                     self.image_sizes[idx], self.bboxes[idx], self.keypoints[idx], self.areas[idx],
                                     num_keypoints=self.num_keypoints)
        w, h = self.image_sizes[i]
        return KeypointInstance(image_id=int(self.image_ids[i]), ann_id=int(self.ann_ids[i]),
                                image_path=self.image_paths[i], image_size=(int(w), int(h)), bbox=self.bboxes[i],
                                keypoints=self.keypoints[i], area=float(self.areas[i]))

    def __iter__(self) -> Iterator[KeypointInstance]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"KeypointInstances({len(self)} instances, {self.num_keypoints} keypoints)"


@dataclass
class KeypointDataset:
    """What a COCO keypoint file holds, checked: the instances and what describes the skeleton."""

    ann_file: str
    image_root: str
    instances: KeypointInstances       # a sequence of KeypointInstance, stored as arrays
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
    instances = _build_instances(candidates, paths, sizes, unreadable, stats, len(names))
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
                     stats: dict, num_keypoints: int) -> KeypointInstances:
    """The instances of the candidates whose image can be read, sized from the file; counts in ``stats`` the
    instances of unreadable images and the keypoints marked unlabelled for lying outside their image."""
    kept = []
    for ann, kpts, bbox in candidates:
        image_id = ann["image_id"]
        if image_id in unreadable:
            stats["missing_image"] += 1
            continue
        width, height = sizes[image_id]
        stats["outside_image"] += _unlabel_outside(kpts, width, height)
        kept.append((ann, kpts, bbox))
    boxes = np.array([bbox for _, _, bbox in kept], dtype=np.float64).reshape(-1, 4)
    instances = KeypointInstances(
        image_ids=id_array([ann["image_id"] for ann, _, _ in kept]),
        ann_ids=id_array([ann["id"] for ann, _, _ in kept]),
        image_paths=PackedStrings(paths[ann["image_id"]] for ann, _, _ in kept),
        image_sizes=[sizes[ann["image_id"]] for ann, _, _ in kept], bboxes=coco_xywh_to_xyxy(boxes),
        keypoints=np.stack([kpts for _, kpts, _ in kept]) if kept else np.zeros((0, num_keypoints, 3)),
        areas=[float(ann["area"] or bbox[2] * bbox[3]) for ann, _, bbox in kept], num_keypoints=num_keypoints)
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


def _report(ann_file: str, subset: str, category_id: int, instances: KeypointInstances, stats: dict) -> None:
    """Log what was read and left out; a split with no instance left is an error."""
    left_out = format_left_out(stats, LEFT_OUT_WORDS)
    log.info("%s (%s): %d instances of %d annotations; left out: %s; %d keypoints outside their image marked "
             "unlabelled; %d images sized from the file, not the json", ann_file, subset, len(instances),
             stats["annotations"], left_out, stats["outside_image"], stats["resized_images"])
    if not instances:
        raise DataError(f"{ann_file}: no usable instances of category {category_id} in the {subset!r} split "
                        f"(of {stats['annotations']} annotations, left out: {left_out}); nothing to train on or "
                        f"evaluate")

