"""COCO detection annotations (boxes only) -> one record per image, checked on the way in.

Crowd boxes are ignored (COCO marks groups with ``iscrowd``; a detector that learns them as one object
learns the wrong thing, and COCOeval ignores them too). A box that reaches beyond its image is clipped to
it; one that is empty after clipping, or has no area to begin with, is dropped. Every such case is counted
in ``stats`` and logged, so a bad file shows up as numbers rather than as a silent change of the data.
Images without objects are kept: they are the negatives a detector needs.

The images are kept as numpy arrays (:class:`DetectionImages`), not one Python object per image, so that
forked DataLoader workers share them instead of copying them page by page as they touch them (see
:mod:`datasets.coco_keypoints`); indexing still gives a :class:`DetectionImage`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from datasets.coco_common import (
    has_area,
    load_validated_ground_truth,
    read_coco_json,
    resolve_image_paths,
    select_split_images,
)
from datasets.coco_keypoints import PackedStrings, check_index, id_array
from datasets.coco_validate import format_left_out, validate_coco
from datasets.image_io import probe_image_files
from models.bbox import box_is_empty, clip_boxes, coco_xywh_to_xyxy
from models.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class DetectionImage:
    """One image and its (non-crowd) objects. Boxes are inclusive xyxy pixels of the stored image."""

    image_id: int
    image_path: str
    image_size: tuple[int, int]        # (width, height) of the stored image (the file's, when the json differs)
    boxes: np.ndarray                  # [N, 4] float64
    labels: np.ndarray                 # [N] int64, contiguous class index 0..C-1
    ann_ids: np.ndarray                # [N] int64


class DetectionImages(Sequence):
    """Images and their objects as arrays; ``images[i]`` is a :class:`DetectionImage` built on the fly whose
    ``boxes``, ``labels`` and ``ann_ids`` are views of the arrays.

    Per image: ``image_ids`` [N] int64, ``image_sizes`` [N, 2] int64 (width, height), ``image_paths``
    (:class:`datasets.coco_keypoints.PackedStrings`), ``offsets`` [N + 1] int64 (image i's objects are rows
    ``offsets[i]:offsets[i + 1]``). Per object: ``boxes`` [M, 4] float64, ``labels`` [M] int64, ``ann_ids``
    [M] int64. A slice (or a list of indices) gives another :class:`DetectionImages`.
    """

    def __init__(self, image_ids, image_paths: Sequence[str], image_sizes, offsets, boxes, labels, ann_ids):
        n = len(image_ids)
        self.image_ids = image_ids if isinstance(image_ids, np.ndarray) else id_array(list(image_ids))
        self.image_paths = image_paths if isinstance(image_paths, PackedStrings) else PackedStrings(image_paths)
        self.image_sizes = np.asarray(image_sizes, dtype=np.int64).reshape(n, 2)
        self.offsets = np.asarray(offsets, dtype=np.int64).reshape(n + 1)
        self.boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.ann_ids = ann_ids if isinstance(ann_ids, np.ndarray) else id_array(list(ann_ids))
        m = int(self.offsets[-1])
        if len(self.image_paths) != n or not (len(self.boxes) == len(self.labels) == len(self.ann_ids) == m):
            raise ValueError(f"DetectionImages: {n} images, {len(self.image_paths)} paths, {m} objects by the offsets, "
                             f"{len(self.boxes)} boxes, {len(self.labels)} labels, {len(self.ann_ids)} ids")

    @classmethod
    def from_images(cls, images: Iterable) -> DetectionImages:
        """The arrays of any images with ``image_id``, ``image_path``, ``image_size``, ``boxes`` [n, 4],
        ``labels`` [n] and ``ann_ids`` [n] (e.g. a list of :class:`DetectionImage`). A :class:`DetectionImages`
        is returned as it is."""
        if isinstance(images, DetectionImages):
            return images
        items = list(images)
        boxes = [np.asarray(im.boxes, np.float64).reshape(-1, 4) for im in items]
        offsets = np.zeros(len(items) + 1, dtype=np.int64)
        np.cumsum(np.array([len(b) for b in boxes], dtype=np.int64), out=offsets[1:])
        ann_ids = [int(a) for im in items for a in np.asarray(im.ann_ids).reshape(-1)]
        return cls([im.image_id for im in items], [im.image_path for im in items],
                   [tuple(im.image_size) for im in items], offsets,
                   np.concatenate(boxes) if boxes else np.zeros((0, 4)),
                   np.concatenate([np.asarray(im.labels, np.int64).reshape(-1) for im in items]) if items else [],
                   id_array(ann_ids))

    @property
    def num_objects(self) -> int:
        return len(self.boxes)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, item):
        try:
            i = check_index(item, len(self))
        except TypeError:       # a slice, a list of indices or a mask: the images it selects
            return DetectionImages.from_images([self[j] for j in np.arange(len(self))[item]])
        lo, hi = self.offsets[i], self.offsets[i + 1]
        w, h = self.image_sizes[i]
        return DetectionImage(image_id=int(self.image_ids[i]), image_path=self.image_paths[i],
                              image_size=(int(w), int(h)), boxes=self.boxes[lo:hi], labels=self.labels[lo:hi],
                              ann_ids=self.ann_ids[lo:hi])

    def __iter__(self) -> Iterator[DetectionImage]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"DetectionImages({len(self)} images, {self.num_objects} objects)"


@dataclass
class DetectionDataset:
    """What a COCO detection file holds for one split, checked."""

    ann_file: str
    image_root: str
    images: DetectionImages            # a sequence of DetectionImage, stored as arrays
    category_ids: list[int]            # COCO category id of each class index
    class_names: list[str]
    image_ids: list[int] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    @property
    def num_objects(self) -> int:
        if isinstance(self.images, DetectionImages):
            return self.images.num_objects
        return int(sum(len(im.boxes) for im in self.images))


def load_coco_detection(ann_file: str, image_root: str, category_ids: list[int] | None = None,
                        missing_images: str = "error", subset: str = "all", holdout_fraction: float = 0.1,
                        holdout_seed: int = 0, on_bad_annotation: str = "error") -> DetectionDataset:
    """Read and check a COCO detection file.

    Args:
        ann_file: path of the json (``images``, ``annotations`` with ``bbox`` [x, y, w, h], ``categories``).
        image_root: folder the images' ``file_name`` are relative to.
        category_ids: which categories to detect, in class-index order; all of the file's (sorted by id) when
            None. Annotations of other categories are skipped and counted.
        missing_images: ``"error"`` or ``"skip"`` (data.on_bad_image: drop images that are missing,
            truncated or unreadable).
        subset: ``"all"``, ``"holdout"`` or ``"rest"``: a seeded split of the images (as for keypoints).
        on_bad_annotation: ``"error"`` or ``"skip"`` (data.on_bad_annotation), see :mod:`datasets.coco_validate`.

    Boxes are clipped to the file's size (which wins over the json's width/height when they differ).
    Every annotation left out is counted by reason; a split without images, or whose annotations were all
    left out, is an error.
    """
    raw = read_coco_json(ann_file, image_root, missing_images, kind="detection")
    data, dropped = validate_coco(raw, ann_file, "detection", on_bad_annotation)
    cats = {c["id"]: c for c in data["categories"]}
    category_ids = _choose_categories(cats, category_ids, ann_file)
    records, keep_ids = select_split_images(data, ann_file, subset, holdout_fraction, holdout_seed)
    paths = resolve_image_paths(image_root, records, keep_ids, ann_file)
    sizes, unreadable, resized = probe_image_files(paths, records, ann_file, missing_images)
    stats = _new_stats(raw, dropped, unreadable, resized)
    label_of = {int(c): i for i, c in enumerate(category_ids)}
    objects = _collect_objects(data["annotations"], label_of, keep_ids, sizes, unreadable, stats)
    images = _build_images(objects, paths, sizes, stats)
    _report(ann_file, subset, images, stats)
    names = [str(cats[c].get("name", c)) for c in category_ids]
    return DetectionDataset(ann_file=ann_file, image_root=image_root, images=images,
                            category_ids=[int(c) for c in category_ids], class_names=names,
                            image_ids=[int(i) for i in images.image_ids], stats=stats)


# The reasons an annotation is left out, as the log line words them (stat key -> words).
LEFT_OUT_WORDS = {"crowd": "crowd", "other_category": "other category",
                  "unknown_category": "category not in categories", "bad_annotation": "malformed (skipped)",
                  "degenerate": "box without area", "outside_image": "box outside the image",
                  "missing_image_boxes": "image missing or unreadable", "other_subset": "other split"}


def _choose_categories(cats: dict, category_ids: list[int] | None, ann_file: str) -> list:
    """The categories to detect, in class-index order: ``category_ids``, or all of the file's sorted by id."""
    if category_ids is None:
        category_ids = sorted(cats)
    unknown = [c for c in category_ids if int(c) not in cats]
    if unknown:
        raise DataError(f"{ann_file}: categories {unknown} are not in the file; its categories are "
                        f"{[(i, c.get('name')) for i, c in sorted(cats.items())]}; fix data.category_ids")
    if not category_ids:
        raise DataError(f"{ann_file}: no categories to detect; the file's categories list is empty")
    return category_ids


def _new_stats(raw: dict, dropped, unreadable: dict[int, str], resized: list[int]) -> dict[str, int]:
    """The reader's counts, zero but for the file's annotations, what :func:`validate_coco` dropped and what
    the image files' check found."""
    return {"annotations": len(raw["annotations"]), "crowd": 0, "other_category": 0, "other_subset": 0,
            "degenerate": 0, "clipped": 0, "outside_image": 0, "missing_image": len(unreadable),
            "missing_image_boxes": 0, "unknown_category": dropped.pop("unknown_category", 0),
            "bad_annotation": sum(dropped.values()), "resized_images": len(resized)}


def _collect_objects(annotations: list, label_of: dict[int, int], keep_ids: set[int],
                     sizes: dict[int, tuple[int, int]], unreadable: dict[int, str],
                     stats: dict) -> dict[int, list[tuple[np.ndarray, int, int]]]:
    """Image id -> ``(box [4] inclusive xyxy clipped to the image, class index, annotation id)`` of its objects,
    for every readable image of the split (with or without objects); each annotation left out and each box
    clipped is counted in ``stats``."""
    objects: dict[int, list[tuple[np.ndarray, int, int]]] = {i: [] for i in keep_ids if i not in unreadable}
    for ann in annotations:
        reason = _reason_left_out(ann, label_of, keep_ids, unreadable)
        if reason:
            stats[reason] += 1
            continue
        image_id = ann["image_id"]
        box = coco_xywh_to_xyxy(np.asarray(ann["bbox"], dtype=np.float64))
        clipped = clip_boxes(box, *sizes[image_id])
        if box_is_empty(clipped):
            stats["outside_image"] += 1
            continue
        if not np.allclose(clipped, box):
            stats["clipped"] += 1
        objects[image_id].append((clipped, label_of[ann["category_id"]], ann["id"]))
    return objects


def _reason_left_out(ann: dict, label_of: dict[int, int], keep_ids: set[int], unreadable: dict[int, str]) -> str | None:
    """The ``stats`` key an annotation is left out under before its box is clipped, or None to keep it."""
    if ann["image_id"] not in keep_ids:
        return "other_subset"
    if ann["category_id"] not in label_of:
        return "other_category"
    if ann["iscrowd"]:
        return "crowd"
    if ann["image_id"] in unreadable:
        return "missing_image_boxes"
    if not has_area(ann["bbox"]):
        return "degenerate"
    return None


def _build_images(objects: dict[int, list[tuple[np.ndarray, int, int]]], paths: dict[int, str],
                  sizes: dict[int, tuple[int, int]], stats: dict) -> DetectionImages:
    """The images, by image id, as :class:`DetectionImages`; counts the images and objects in ``stats``."""
    ids = sorted(objects)
    objs = [o for image_id in ids for o in objects[image_id]]
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(np.array([len(objects[i]) for i in ids], dtype=np.int64), out=offsets[1:])
    images = DetectionImages(
        image_ids=id_array(ids), image_paths=PackedStrings(paths[i] for i in ids), image_sizes=[sizes[i] for i in ids],
        offsets=offsets, boxes=np.array([o[0] for o in objs], dtype=np.float64).reshape(-1, 4),
        labels=np.array([o[1] for o in objs], dtype=np.int64), ann_ids=id_array([o[2] for o in objs]))
    stats["images"] = len(images)
    stats["objects"] = images.num_objects
    stats["empty_images"] = int((np.diff(offsets) == 0).sum())
    return images


def _report(ann_file: str, subset: str, images: DetectionImages, stats: dict) -> None:
    """Log what was read, left out and clipped; a split without images, or whose annotations were all left
    out, is an error."""
    left_out = format_left_out(stats, LEFT_OUT_WORDS)
    log.info("%s (%s): %d images, %d objects (%d images without objects) of %d annotations; left out: %s; %d boxes "
             "clipped to their image; %d images sized from the file, not the json", ann_file, subset,
             stats["images"], stats["objects"], stats["empty_images"], stats["annotations"], left_out,
             stats["clipped"], stats["resized_images"])
    if stats["degenerate"] + stats["outside_image"] or stats["clipped"]:
        log.warning("%s: %d boxes reached beyond their image and were clipped; %d were dropped", ann_file,
                    stats["clipped"], stats["degenerate"] + stats["outside_image"])
    if not images:
        raise DataError(f"{ann_file}: no readable image in the {subset!r} split (left out: {left_out}); nothing "
                        f"to train on or evaluate")
    considered = stats["annotations"] - stats["other_subset"] - stats["other_category"]
    if considered > 0 and stats["objects"] == 0:
        raise DataError(f"{ann_file}: none of the {considered} annotations of the {subset!r} split is usable "
                        f"(left out: {left_out}); nothing to train on or evaluate")


def coco_detection_subset(ann_file: str, image_ids, category_ids: list[int], on_bad_annotation: str = "error") -> dict:
    """Ground truth of ``image_ids`` and ``category_ids`` only (a split of a larger file), for COCOeval.

    The file goes through the same check as the reader (:mod:`datasets.coco_validate`), so no malformed or
    non-finite annotation reaches pycocotools. Crowd boxes stay in: COCOeval treats them as regions where
    detections are neither right nor wrong.
    """
    data = load_validated_ground_truth(ann_file, "detection", on_bad_annotation)
    keep, cats = {int(i) for i in image_ids}, {int(c) for c in category_ids}
    anns = [a for a in data["annotations"] if a["image_id"] in keep and a["category_id"] in cats]
    return {"images": [im for im in data["images"] if im["id"] in keep], "annotations": anns,
            "categories": [c for c in data["categories"] if c["id"] in cats]}
