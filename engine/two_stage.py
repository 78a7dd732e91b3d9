"""Multi-instance keypoints on whole images: boxes (detector, detection file or whole frame) -> top-down poses.

One code path for ``tools.infer`` and ``tools.eval``: a *box source* gives each image's boxes and scores;
:class:`TwoStagePipeline` crops each box (the +1 box padded to the keypoint model's aspect ratio, as in
training), estimates keypoints, maps them back to the image, rescores each instance (box score times the
mean confidence of its confident keypoints) and removes duplicate poses with OKS-NMS.

Box sources:

* :class:`DetectorBoxes`: a CenterNet checkpoint run on the image (letterboxed like its evaluation).
* :class:`DetectionFileBoxes`: a COCO detection-results JSON (``image_id``, ``bbox`` [x, y, w, h], ``score``),
  the standard top-down protocol (e.g. COCO's person detections with 56 AP).
* :class:`WholeImageBoxes`: the whole frame as one instance (single-subject images).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import numpy as np

from engine.inference import DetectionPredictor, TopDownPredictor
from engine.oks_nms import oks_nms
from models.bbox import box_area, coco_xywh_to_xyxy

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- box sources
class WholeImageBoxes:
    """The whole frame ``[0, 0, W - 1, H - 1]`` as one box with score 1."""

    description = "whole image"

    def boxes_for(self, image_id: int, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = image.shape[:2]
        return np.array([[0, 0, w - 1, h - 1]], dtype=np.float64), np.ones(1)


def load_detections(path: str, score_threshold: float = 0.0,
                    category_ids: Sequence[int] | None = None) -> dict[int, list[dict]]:
    """COCO detection results grouped by image id; entries below ``score_threshold`` (or of other categories)
    are left out. Raises on entries without an ``image_id`` or a 4-number ``bbox``, naming the entry."""
    with open(path) as f:
        dets = json.load(f)
    if not isinstance(dets, list):
        raise ValueError(f"{path}: a detection-results file is a JSON list of {{image_id, bbox, score}}")
    cats = None if category_ids is None else {int(c) for c in category_ids}
    by_image: dict[int, list[dict]] = {}
    for i, d in enumerate(dets):
        if not isinstance(d, dict) or "image_id" not in d or "bbox" not in d or len(d["bbox"]) != 4:
            raise ValueError(f"{path}: entry {i} lacks image_id or a 4-number bbox [x, y, w, h]")
        if d.get("score", 1.0) < score_threshold:
            continue
        if cats is not None and int(d.get("category_id", -1)) not in cats:
            continue
        by_image.setdefault(int(d["image_id"]), []).append(d)
    return by_image


class DetectionFileBoxes:
    """Boxes from a COCO detection-results file.

    Args:
        path: the JSON list.
        score_threshold: ignore detections below this score.
        category_ids: keep only these categories (all when None).
    """

    def __init__(self, path: str, score_threshold: float = 0.0, category_ids: Sequence[int] | None = None):
        self.path = path
        self.score_threshold = score_threshold
        self.by_image = load_detections(path, score_threshold, category_ids)
        self.num_boxes = sum(len(v) for v in self.by_image.values())
        self.description = f"detections from {path} ({self.num_boxes} boxes with score >= {score_threshold})"

    def check_image_ids(self, known_ids, what: str = "input image") -> list[int]:
        """Image ids of the file that match no ``known_ids``; raises when none matches, warns otherwise."""
        known = {int(i) for i in known_ids if i is not None}
        unknown = sorted(set(self.by_image) - known)
        if self.by_image and not (set(self.by_image) & known):
            raise ValueError(f"{self.path}: none of its {len(self.by_image)} image ids matches an {what} (its ids "
                             f"include {unknown[:10]}); pass --image-info with the images' COCO json, or the file "
                             f"of the right split")
        if unknown:
            log.warning("%s: %d image ids match no %s and are ignored: %s%s", self.path, len(unknown), what,
                        unknown[:20], " ..." if len(unknown) > 20 else "")
        return unknown

    def boxes_for(self, image_id: int, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dets = self.by_image.get(int(image_id), [])
        boxes = coco_xywh_to_xyxy(np.array([d["bbox"] for d in dets], dtype=np.float64).reshape(-1, 4))
        return boxes, np.array([d.get("score", 1.0) for d in dets], dtype=np.float64)


class DetectorBoxes:
    """Boxes from a detector checkpoint.

    Args:
        predictor: a :class:`engine.inference.DetectionPredictor`.
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

    def boxes_for(self, image_id: int, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        det = self.predictor.predict(image)
        self.last = det
        keep = det["scores"] >= self.score_threshold
        if self.category_ids is not None:
            keep &= np.isin(det["category_ids"], self.category_ids)
        return det["boxes"][keep], det["scores"][keep]


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
            raise ValueError(f"category {token!r} is not one of the detector's classes "
                             f"{[f'{n} (id {i})' for n, i in zip(class_names, category_ids)]}")
    return out


# ---------------------------------------------------------------------------------------------- pipeline
class TwoStagePipeline:
    """Keypoints for every box of an image, rescored and de-duplicated.

    Args:
        predictor: the keypoint model's :class:`engine.inference.TopDownPredictor`.
        oks_sigmas: per-keypoint OKS sigmas (the keypoint model's ``meta.oks_sigmas``).
        oks_nms_threshold: drop a pose whose OKS with a higher-scored one exceeds this; None disables.
        flip_test: override the task's flip testing (None keeps it).
    """

    def __init__(self, predictor: TopDownPredictor, oks_sigmas: Sequence[float], oks_nms_threshold: float | None = 0.9,
                 flip_test: bool | None = None):
        self.predictor = predictor
        self.task = predictor.task
        self.oks_sigmas = list(oks_sigmas)
        self.oks_nms_threshold = oks_nms_threshold
        self.flip_test = flip_test

    def run(self, image: np.ndarray, image_id: int, boxes: np.ndarray, box_scores: np.ndarray) -> list[dict]:
        """Records (``image_id``, ``bbox``, ``box_score``, ``keypoints`` [K, 2], ``scores`` [K], ``score``) of the
        instances that survive OKS-NMS, by decreasing instance score. No boxes give no records."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if len(boxes) == 0:
            return []
        pred = self.predictor.predict(image, boxes, self.flip_test)
        records = [{"image_id": int(image_id), "bbox": box, "box_score": float(s), "keypoints": k[:, :2],
                    "scores": k[:, 2]} for box, s, k in zip(boxes, box_scores, pred)]
        # The instance score is the task's rescoring (box score x mean confident-keypoint confidence).
        for rec, res in zip(records, self.task.to_coco_results(records)):
            rec["score"] = float(res["score"])
        if self.oks_nms_threshold is None or len(records) < 2:
            return sorted(records, key=lambda r: -r["score"])
        kpts = np.stack([np.concatenate([r["keypoints"], r["scores"][:, None]], 1) for r in records])
        keep = oks_nms(kpts, np.array([r["score"] for r in records]), box_area(boxes), self.oks_sigmas,
                       self.oks_nms_threshold)
        return [records[i] for i in keep]
