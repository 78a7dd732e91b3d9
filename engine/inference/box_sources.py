"""Where a top-down model's boxes come from, one interface for all: ``boxes_for(image_id, image) ->
(boxes [n, 4] inclusive xyxy clipped to the image, scores [n])`` and ``log_summary()`` (what was clipped or
left out, counted).

* :class:`DetectorBoxes`: a detector checkpoint or exported model run on the image (letterboxed like its
  evaluation).
* :class:`DetectionFileBoxes`: a COCO detection-results JSON (``image_id``, ``bbox`` [x, y, w, h],
  ``score``), the standard top-down protocol (e.g. COCO's person detections with 56 AP); read and checked
  by :mod:`engine.inference.detection_files`.
* :class:`WholeImageBoxes`: the whole frame as one instance (single-subject images).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from engine.inference.detection_files import (
    croppable,
    describe_categories,
    filter_detections,
    parse_categories,
    read_detections,
)
from engine.inference.loading import load_detection_predictor
from engine.inference.predictors import DetectionPredictor
from models.bbox import box_is_empty, clip_boxes, coco_xywh_to_xyxy
from models.errors import InputError

log = logging.getLogger(__name__)


def clip_to_image(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip croppable boxes to an image (the ``+1`` convention: pixels ``0..W-1``) and drop those left empty.

    Returns ``(kept boxes, kept mask [N], clipped mask [N])``: a box is clipped when clipping moved it and it
    still covers a pixel, and dropped when it lies entirely outside the image.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    clipped = clip_boxes(boxes, int(width), int(height))
    keep = ~box_is_empty(clipped)
    moved = (clipped != boxes).any(-1) & keep
    return clipped[keep], keep, moved



class WholeImageBoxes:
    """The whole frame ``[0, 0, W - 1, H - 1]`` as one box with score 1."""

    description = "whole image"

    def __init__(self):
        self.stats: dict[str, int] = {}

    def boxes_for(self, image_id: int, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = image.shape[:2]
        return np.array([[0, 0, w - 1, h - 1]], dtype=np.float64), np.ones(1)

    def log_summary(self) -> dict[str, int]:
        return self.stats



class DetectionFileBoxes:
    """Boxes from a COCO detection-results file.

    Boxes that cannot be cropped (``w`` or ``h`` < 1, non-finite) are left out when the file is read, with a
    warning naming the first few entries. Per image, boxes reaching beyond the image are clipped to it and
    boxes entirely outside it are dropped; :meth:`log_summary` counts both.

    Args:
        path: the JSON list.
        score_threshold: ignore detections below this score.
        category_ids: keep only these categories; each must occur in the file (an error lists the file's).
            None: ``default_category_id`` when the file has entries of it, else every category.
        default_category_id: the keypoint model's category id; entries without ``category_id`` count as it.
        category_names: {id: name}, only to name categories in messages.
    """

    def __init__(self, path: str, score_threshold: float = 0.0, category_ids: Sequence[int] | None = None,
                 default_category_id: int | None = None, category_names: dict[int, str] | None = None):
        self.path = path
        self.score_threshold = score_threshold
        names = {int(k): v for k, v in (category_names or {}).items()}
        entries = read_detections(path)
        no_category = sum(e["category_id"] is None for e in entries)
        if default_category_id is not None:          # as the keypoint annotations are read
            for e in entries:
                if e["category_id"] is None:
                    e["category_id"] = int(default_category_id)
        counts = Counter(e["category_id"] for e in entries)
        in_file = describe_categories(counts, names)
        if no_category and default_category_id is not None:
            in_file += f" ({no_category} without category_id, taken as {default_category_id})"
        if category_ids is not None:
            missing = sorted({int(c) for c in category_ids} - set(counts))
            if missing:
                raise InputError(f"{path}: --det-category {missing} has no entries in the file; its categories "
                                 f"(entries per category_id): {in_file}")
            used, why = sorted({int(c) for c in category_ids}), "--det-category"
        elif default_category_id is not None and int(default_category_id) in counts:
            used, why = [int(default_category_id)], "the keypoint model's category"
        elif default_category_id is not None:
            used, why = None, f"the file has no entry of the keypoint model's category {default_category_id}"
        else:
            used, why = None, "no --det-category"
        self.category_ids = used
        cats = "all categories" if used is None else f"categories {used}"
        if used is None and default_category_id is not None and any(c is not None for c in counts):
            log.warning("%s: using %s (%s): its categories are %s; pass --det-category to choose", path, cats, why,
                        in_file)
        else:
            log.info("%s: using %s (%s); the file's entries per category_id: %s", path, cats, why, in_file)
        self.stats: dict[str, int] = {"entries": len(entries)}
        self.by_image = filter_detections(path, entries, score_threshold, used, self.stats)
        self.num_boxes = sum(len(v) for v in self.by_image.values())
        self.stats.update(clipped=0, outside_image=0)
        self.description = f"detections from {path} ({cats}, {self.num_boxes} boxes with score >= {score_threshold})"

    def check_image_ids(self, known_ids, what: str = "input image") -> list[int]:
        """Image ids of the file that match no ``known_ids``; raises when none matches, warns otherwise."""
        known = {int(i) for i in known_ids if i is not None}
        unknown = sorted(set(self.by_image) - known)
        if self.by_image and not (set(self.by_image) & known):
            raise InputError(f"{self.path}: none of its {len(self.by_image)} image ids matches an {what} (its ids "
                             f"include {unknown[:10]}); pass --image-info with the images' COCO json, or the file "
                             f"of the right split")
        if unknown:
            log.warning("%s: %d image ids match no %s and are ignored: %s%s", self.path, len(unknown), what,
                        unknown[:20], " ..." if len(unknown) > 20 else "")
        return unknown

    def boxes_for(self, image_id: int, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The image's boxes (inclusive xyxy) clipped to it, and their scores; boxes entirely outside it are
        dropped. Counted in ``stats`` (``clipped``, ``outside_image``)."""
        dets = self.by_image.get(int(image_id), [])
        boxes = coco_xywh_to_xyxy(np.array([d["bbox"] for d in dets], dtype=np.float64).reshape(-1, 4))
        scores = np.array([d["score"] for d in dets], dtype=np.float64)
        h, w = image.shape[:2]
        boxes, keep, moved = clip_to_image(boxes, w, h)
        self.stats["clipped"] += int(moved.sum())
        self.stats["outside_image"] += int((~keep).sum())
        return boxes, scores[keep]

    def log_summary(self) -> dict[str, int]:
        """Log how many boxes were clipped to their image or dropped outside it; returns ``stats``."""
        if self.stats["clipped"] or self.stats["outside_image"]:
            log.warning("%s: %d boxes reaching beyond their image were clipped to it, %d boxes entirely outside "
                        "their image were dropped", self.path, self.stats["clipped"], self.stats["outside_image"])
        return self.stats



class DetectorBoxes:
    """Boxes from a detector checkpoint.

    Args:
        predictor: a :class:`engine.inference.predictors.DetectionPredictor`.
        category_ids: keep only detections of these COCO category ids (all when None).
        score_threshold: keep detections at or above this score.
        name: how reports name it (the checkpoint path).
    """

    def __init__(self, predictor: DetectionPredictor, category_ids: Sequence[int] | None = None,
                 score_threshold: float = 0.3, name: str = "detector"):
        self.predictor = predictor
        self.category_ids = None if category_ids is None else np.asarray(sorted(category_ids), dtype=np.int64)
        self.score_threshold = score_threshold
        cats = "all classes" if category_ids is None else f"categories {sorted(category_ids)}"
        self.description = f"detector {name} ({cats}, score >= {score_threshold})"
        self.last: dict | None = None          # the latest image's full detections (all classes), for drawing
        self.stats: dict[str, int] = {"unusable": 0, "outside_image": 0}

    @property
    def class_names(self) -> list[str]:
        """The detector's class names, by class index (``labels``)."""
        return list(self.predictor.task.meta.class_names)

    def selected(self, det: dict) -> np.ndarray:
        """bool [n]: the detections of ``det`` (the predictor's dict) at or above ``score_threshold`` and of
        ``category_ids`` (every class when None); one rule for images, videos and engine.api."""
        keep = np.asarray(det["scores"]) >= self.score_threshold
        if self.category_ids is not None:
            keep &= np.isin(det["category_ids"], self.category_ids)
        return keep

    def boxes_for(self, image_id: int, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        det = self.predictor.predict(image)
        self.last = det
        boxes, scores, _ = self.from_detections(det, image.shape[:2])
        return boxes, scores

    def from_detections(self, det: dict, image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(boxes [n, 4], scores [n], labels [n])`` of the predictor's detections ``det`` on an image of
        ``image_hw`` (H, W) that the crop can use: :meth:`selected`, croppable, clipped to the image."""
        keep = self.selected(det)
        boxes = np.asarray(det["boxes"], dtype=np.float64)[keep].reshape(-1, 4)
        scores, labels = np.asarray(det["scores"])[keep], np.asarray(det["labels"])[keep]
        # The detector clips its boxes and drops empty ones; this guards the crop against anything else.
        ok = croppable(boxes)
        self.stats["unusable"] += int((~ok).sum())
        h, w = image_hw
        boxes, inside, _ = clip_to_image(boxes[ok], w, h)
        self.stats["outside_image"] += int((~inside).sum())
        return boxes, scores[ok][inside], labels[ok][inside]

    def log_summary(self) -> dict[str, int]:
        if self.stats["unusable"] or self.stats["outside_image"]:
            log.warning("detector: %d boxes that could not be cropped (non-finite or less than one pixel) and %d "
                        "outside their image were dropped", self.stats["unusable"], self.stats["outside_image"])
        return self.stats



def select_categories(class_names: Sequence[str], category_ids: Sequence[int], wanted: str | None) -> list[int] | None:
    """Category ids named by ``wanted`` (comma-separated names or ids); all (None) when ``wanted`` is empty.

    Raises naming the detector's classes when a name or id is not among them.
    """
    if not wanted:
        return None
    out = []
    for token in (t.strip() for t in wanted.split(",") if t.strip()):
        if token.lstrip("-").isdigit() and int(token) in category_ids:
            out.append(int(token))
        elif token in class_names:
            out.append(int(category_ids[list(class_names).index(token)]))
        else:
            raise InputError(f"category {token!r} is not one of the detector's classes "
                             f"{[f'{n} (id {i})' for n, i in zip(class_names, category_ids)]}")
    return out



def detector_boxes(checkpoint: str, device: torch.device, categories: str | None = None,
                   score_threshold: float = 0.3, batch_size: int = 8, loaded: tuple | None = None) -> DetectorBoxes:
    """A :class:`DetectorBoxes` source from a detection checkpoint or exported ONNX detector (``loaded``: its
    ``load_for_inference`` result, when the caller has it); ``categories`` as ``--det-category``;
    ``batch_size`` images per forward pass of ``predict_many`` (videos)."""
    predictor, _ = load_detection_predictor(checkpoint, device, batch_size, loaded)
    meta = predictor.task.meta
    cats = select_categories(meta.class_names, meta.category_ids, categories)
    return DetectorBoxes(predictor, cats, score_threshold, checkpoint)



def detection_file_boxes(path: str, score_threshold: float, categories: str | None,
                         category_names: dict[int, str], default_category_id: int | None) -> DetectionFileBoxes:
    """A :class:`DetectionFileBoxes` source; ``categories`` as ``--det-category`` (ids, or names found in
    ``category_names``)."""
    return DetectionFileBoxes(path, score_threshold, parse_categories(categories, category_names),
                              default_category_id=default_category_id, category_names=category_names)
