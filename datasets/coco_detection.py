"""COCO detection annotations (boxes only) -> one record per image, checked on the way in.

Crowd boxes are ignored (COCO marks groups with ``iscrowd``; a detector that learns them as one object
learns the wrong thing, and COCOeval ignores them too). A box that reaches beyond its image is clipped to
it; one that is empty after clipping, or has no area to begin with, is dropped. Every such case is counted
in ``stats`` and logged, so a bad file shows up as numbers rather than as a silent change of the data.
Images without objects are kept: they are the negatives a detector needs.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

import numpy as np

from datasets.coco_common import index_image_records, read_coco_json, resolve_image_path, split_image_ids
from models.bbox import box_area, box_is_empty, clip_boxes, coco_xywh_to_xyxy

log = logging.getLogger(__name__)


@dataclass
class DetectionImage:
    """One image and its (non-crowd) objects. Boxes are inclusive xyxy pixels of the stored image."""

    image_id: int
    image_path: str
    image_size: tuple[int, int]        # (width, height) from the json
    boxes: np.ndarray                  # [N, 4] float64
    labels: np.ndarray                 # [N] int64, contiguous class index 0..C-1
    ann_ids: np.ndarray                # [N] int64


@dataclass
class DetectionDataset:
    """What a COCO detection file holds for one split, checked."""

    ann_file: str
    image_root: str
    images: list[DetectionImage]
    category_ids: list[int]            # COCO category id of each class index
    class_names: list[str]
    image_ids: list[int] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    @property
    def num_objects(self) -> int:
        return int(sum(len(im.boxes) for im in self.images))


def load_coco_detection(ann_file: str, image_root: str, category_ids: list[int] | None = None,
                        missing_images: str = "error", subset: str = "all", holdout_fraction: float = 0.1,
                        holdout_seed: int = 0) -> DetectionDataset:
    """Read and check a COCO detection file.

    Args:
        ann_file: path of the json (``images``, ``annotations`` with ``bbox`` [x, y, w, h], ``categories``).
        image_root: folder the images' ``file_name`` are relative to.
        category_ids: which categories to detect, in class-index order; all of the file's (sorted by id) when
            None. Annotations of other categories are skipped and counted.
        missing_images: ``"error"`` or ``"skip"`` (drop images that are not on disk).
        subset: ``"all"``, ``"holdout"`` or ``"rest"``: a seeded split of the images (as for keypoints).
    """
    data = read_coco_json(ann_file, image_root, missing_images, kind="detection")
    cats = {int(c["id"]): c for c in data["categories"]}
    if category_ids is None:
        category_ids = sorted(cats)
    unknown = [c for c in category_ids if int(c) not in cats]
    if unknown:
        raise ValueError(f"{ann_file}: categories {unknown} are not in the file; its categories are "
                         f"{[(i, c.get('name')) for i, c in sorted(cats.items())]}")
    if not category_ids:
        raise ValueError(f"{ann_file}: no categories to detect")
    label_of = {int(c): i for i, c in enumerate(category_ids)}

    records = index_image_records(data, ann_file)
    keep_ids = split_image_ids(sorted(records), subset, holdout_fraction, holdout_seed)

    stats = {"annotations": 0, "crowd": 0, "other_category": 0, "other_subset": 0, "degenerate": 0,
             "clipped": 0, "outside_image": 0, "missing_image": 0}
    objects: dict[int, list[tuple[np.ndarray, int, int]]] = {i: [] for i in keep_ids}
    for ann in data["annotations"]:
        stats["annotations"] += 1
        ann_id = int(ann.get("id", -1))
        image_id = int(ann.get("image_id", -1))
        if image_id not in records:
            raise ValueError(f"{ann_file}: annotation {ann_id} refers to image_id {image_id}, which is not in images")
        if image_id not in keep_ids:
            stats["other_subset"] += 1
            continue
        cat = int(ann.get("category_id", -1))
        if cat not in label_of:
            stats["other_category"] += 1
            continue
        if ann.get("iscrowd", 0):
            stats["crowd"] += 1
            continue
        bbox = ann.get("bbox")
        if bbox is None or len(bbox) != 4 or not all(np.isfinite(bbox)):
            raise ValueError(f"{ann_file}: annotation {ann_id} has no finite 4-number 'bbox' [x, y, w, h]")
        if not (bbox[2] > 0 and bbox[3] > 0):
            stats["degenerate"] += 1
            continue
        box = coco_xywh_to_xyxy(np.asarray(bbox, dtype=np.float64))
        img = records[image_id]
        clipped = clip_boxes(box, int(img["width"]), int(img["height"]))
        if box_is_empty(clipped):
            stats["outside_image"] += 1
            continue
        if not np.allclose(clipped, box):
            stats["clipped"] += 1
        objects[image_id].append((clipped, label_of[cat], ann_id))

    images = []
    for image_id in sorted(keep_ids):
        img = records[image_id]
        objs = objects[image_id]
        images.append(DetectionImage(
            image_id=image_id, image_path=resolve_image_path(image_root, img["file_name"], ann_file),
            image_size=(int(img["width"]), int(img["height"])),
            boxes=np.array([o[0] for o in objs], dtype=np.float64).reshape(-1, 4),
            labels=np.array([o[1] for o in objs], dtype=np.int64), ann_ids=np.array([o[2] for o in objs], np.int64)))
    missing = [im for im in images if not os.path.isfile(im.image_path)]
    if missing:
        if missing_images == "error":
            raise FileNotFoundError(f"{ann_file}: {len(missing)} image files are missing, e.g. "
                                    f"{[m.image_path for m in missing[:3]]}; fix image_root or set "
                                    f"data.on_bad_image=skip to drop them")
        gone = {m.image_id for m in missing}
        stats["missing_image"] = len(gone)
        images = [im for im in images if im.image_id not in gone]
        log.warning("%s: skipped %d images whose files are missing, e.g. %s", ann_file, len(gone),
                    [m.image_path for m in missing[:3]])
    stats["images"] = len(images)
    stats["objects"] = int(sum(len(im.boxes) for im in images))
    stats["empty_images"] = int(sum(len(im.boxes) == 0 for im in images))
    dropped = stats["degenerate"] + stats["outside_image"]
    log.info("%s: %d images, %d objects (%d images without objects); ignored %d crowd boxes; %d boxes clipped "
             "to their image, %d dropped (%d without area, %d outside the image)", ann_file, stats["images"],
             stats["objects"], stats["empty_images"], stats["crowd"], stats["clipped"], dropped,
             stats["degenerate"], stats["outside_image"])
    if dropped or stats["clipped"]:
        log.warning("%s: %d boxes reached beyond their image and were clipped; %d were dropped", ann_file,
                    stats["clipped"], dropped)
    names = [str(cats[c].get("name", c)) for c in category_ids]
    return DetectionDataset(ann_file=ann_file, image_root=image_root, images=images,
                            category_ids=[int(c) for c in category_ids], class_names=names,
                            image_ids=[im.image_id for im in images], stats=stats)


def coco_detection_subset(ann_file: str, image_ids, category_ids: list[int]) -> dict:
    """Ground truth of ``image_ids`` and ``category_ids`` only (a split of a larger file), for COCOeval.

    Crowd boxes stay in: COCOeval treats them as regions where detections are neither right nor wrong.
    """
    with open(ann_file) as f:
        data = json.load(f)
    keep, cats = {int(i) for i in image_ids}, {int(c) for c in category_ids}
    anns = []
    for a in data["annotations"]:
        if int(a["image_id"]) in keep and int(a["category_id"]) in cats:
            a = dict(a)
            a.setdefault("iscrowd", 0)
            if "area" not in a:
                a["area"] = float(box_area(coco_xywh_to_xyxy(np.asarray(a["bbox"], np.float64))))
            anns.append(a)
    return {"images": [im for im in data["images"] if int(im["id"]) in keep], "annotations": anns,
            "categories": [c for c in data["categories"] if int(c["id"]) in cats]}
