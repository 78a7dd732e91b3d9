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
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from datasets.image_io import image_problem, read_image_rgb
from engine.inference import DetectionPredictor, TopDownPredictor, load_for_inference
from engine.oks_nms import oks_nms
from models.bbox import box_area, box_is_empty, clip_boxes, coco_xywh_to_xyxy
from models.errors import CheckpointError, DataError, InputError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- box sources
def croppable(boxes: np.ndarray) -> np.ndarray:
    """True where an inclusive xyxy box can be cropped: finite and at least one pixel wide and high
    (``x2 >= x1`` and ``y2 >= y1``, i.e. COCO ``w >= 1`` and ``h >= 1``). boxes: [N, 4] -> bool [N]."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    with np.errstate(invalid="ignore"):
        return np.isfinite(boxes).all(-1) & ~box_is_empty(boxes)


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


def read_detections(path: str) -> list[dict]:
    """The entries of a COCO detection-results file, checked and normalised: ``index`` (position in the file),
    ``image_id`` (int), ``bbox`` (4 floats, COCO ``[x, y, w, h]``), ``score`` (float, 1 when absent) and
    ``category_id`` (int, or None when absent). Raises naming the entry on a missing ``image_id``, a ``bbox``
    that is not 4 numbers or a non-numeric ``score``; boxes too small to crop are checked later."""
    if not os.path.isfile(path):
        raise InputError(f"box file not found: {path} (--boxes); give a COCO detection-results JSON file")
    try:
        with open(path) as f:
            dets = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path} (--boxes) is not valid JSON ({err}); it must be a COCO detection-results file: "
                         f"a JSON list of {{image_id, bbox, score}}") from None
    if not isinstance(dets, list):
        raise InputError(f"{path}: a detection-results file is a JSON list of {{image_id, bbox, score}}")
    out = []
    for i, d in enumerate(dets):
        bbox = d.get("bbox") if isinstance(d, dict) else None
        if not isinstance(d, dict) or "image_id" not in d or not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise InputError(f"{path}: entry {i} lacks image_id or a 4-number bbox [x, y, w, h]")
        try:
            bbox = [float(v) for v in bbox]
            score = float(d.get("score", 1.0))
            image_id = int(d["image_id"])
            cat = None if d.get("category_id") is None else int(d["category_id"])
        except (TypeError, ValueError) as e:
            raise InputError(f"{path}: entry {i} (image {d.get('image_id')!r}) has a non-numeric image_id, bbox, "
                             f"score or category_id: {e}") from None
        out.append({**d, "index": i, "image_id": image_id, "bbox": bbox, "score": score, "category_id": cat})
    return out


def _filter_detections(path: str, entries: list[dict], score_threshold: float,
                       category_ids: Sequence[int] | None, stats: dict[str, int]) -> dict[int, list[dict]]:
    """Keep the entries of ``category_ids`` (all when None) scoring at least ``score_threshold`` whose box can be
    cropped; group them by image id. Counts what it leaves out in ``stats`` and warns about unusable boxes."""
    cats = None if category_ids is None else {int(c) for c in category_ids}
    entries = [e for e in entries if cats is None or e["category_id"] in cats]
    stats["other_category"] = stats["entries"] - len(entries)
    kept = [e for e in entries if not e["score"] < score_threshold]      # a NaN score is not below: checked next
    stats["below_score"] = len(entries) - len(kept)
    xyxy = coco_xywh_to_xyxy(np.array([e["bbox"] for e in kept], dtype=np.float64).reshape(-1, 4))
    ok = croppable(xyxy) & np.isfinite([e["score"] for e in kept]).reshape(-1)
    bad = [e for e, good in zip(kept, ok) if not good]
    stats["unusable"] = len(bad)
    if bad:
        log.warning("%s: %d boxes are left out: less than one pixel wide or high (w or h < 1), or a bbox or score "
                    "that is not finite; e.g. %s", path, len(bad),
                    "; ".join(f"entry {e['index']} (image {e['image_id']}, bbox {e['bbox']}, score {e['score']})"
                              for e in bad[:5]))
    by_image: dict[int, list[dict]] = {}
    for e, good in zip(kept, ok):
        if good:
            by_image.setdefault(e["image_id"], []).append(e)
    return by_image


def load_detections(path: str, score_threshold: float = 0.0, category_ids: Sequence[int] | None = None,
                    stats: dict[str, int] | None = None) -> dict[int, list[dict]]:
    """COCO detection results grouped by image id, as :func:`read_detections` normalises them.

    Left out: entries below ``score_threshold``, of other categories (all are kept when ``category_ids`` is
    None; an entry without ``category_id`` only then), and boxes that cannot be cropped (``w`` or ``h`` < 1,
    or a non-finite bbox or score: a warning counts them and names the first few by index, image id and
    bbox). ``stats``, when given, receives the counts. Raises on entries without an ``image_id`` or a 4-number
    ``bbox``, naming the entry."""
    entries = read_detections(path)
    stats = {} if stats is None else stats
    stats["entries"] = len(entries)
    return _filter_detections(path, entries, score_threshold, category_ids, stats)


def parse_categories(wanted: str | None, names: dict[int, str] | None = None) -> list[int] | None:
    """Category ids named by ``wanted`` (comma-separated ids, or names found in ``names`` {id: name}); None when
    ``wanted`` is empty. Raises on a name that is not in ``names``."""
    if not wanted:
        return None
    names = names or {}
    by_name = {v: k for k, v in names.items()}
    out = []
    for token in (t.strip() for t in wanted.split(",") if t.strip()):
        if token.lstrip("-").isdigit():
            out.append(int(token))
        elif token in by_name:
            out.append(int(by_name[token]))
        else:
            known = f"known names: {[f'{n} (id {i})' for i, n in sorted(names.items())]}" if names else \
                "no category names are known here"
            raise InputError(f"category {token!r} is not a category id and not a known category name ({known}); "
                             f"give the category_id of the detection file's entries")
    return out


def _describe_categories(counts: Counter, names: dict[int, str]) -> str:
    parts = []
    for c in sorted(counts, key=lambda c: (c is None, c if c is not None else 0)):
        label = "no category_id" if c is None else (f"{c} ({names[c]})" if c in names else str(c))
        parts.append(f"{label}: {counts[c]}")
    return "{" + ", ".join(parts) + "}"


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
        in_file = _describe_categories(counts, names)
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
        self.by_image = _filter_detections(path, entries, score_threshold, used, self.stats)
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
        box_scores = np.asarray(box_scores, dtype=np.float64).reshape(-1)
        pred = self.predictor.predict(image, boxes, self.flip_test)
        keep, scores = rescore_and_suppress(self.task, boxes, box_scores, pred, self.oks_nms_threshold,
                                            self.oks_sigmas)
        return [{"image_id": int(image_id), "bbox": boxes[i], "box_score": float(box_scores[i]),
                 "keypoints": pred[i, :, :2], "scores": pred[i, :, 2], "score": float(score)}
                for i, score in zip(keep, scores)]


def rescore_and_suppress(task, boxes: np.ndarray, box_scores: np.ndarray, poses: np.ndarray,
                         oks_nms_threshold: float | None, oks_sigmas: Sequence[float] | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """``(kept indices by decreasing score, their instance scores)`` of one image's poses [N, K, 3] from boxes
    [N, 4] with ``box_scores`` [N]: the task's rescoring (box score x mean confident-keypoint confidence,
    unrounded) and OKS-NMS (``oks_sigmas``, default the task's; ``oks_nms_threshold`` None keeps every pose).
    The one rule for images, videos and engine.api."""
    if len(poses) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    scores = task.rescore(poses[:, :, 2], np.asarray(box_scores, dtype=np.float64))
    if oks_nms_threshold is None or len(poses) < 2:
        keep = np.argsort(-scores, kind="stable")
    else:
        sigmas = task.meta.oks_sigmas if oks_sigmas is None else oks_sigmas
        keep = oks_nms(poses, scores, box_area(boxes), sigmas, oks_nms_threshold)
    return keep, scores[keep]


# ---------------------------------------------------------------------------------------------- set-up and loop
def load_keypoint_predictor(path: str, device: torch.device, flip_test: bool | None = None,
                            batch_size: int = 32, loaded: tuple | None = None) -> tuple[TopDownPredictor, object]:
    """``(TopDownPredictor, cfg)`` of a keypoint checkpoint or exported ONNX model (via ``load_for_inference``,
    or its ``loaded`` result when the caller has it already); images, videos and engine.api all load through
    here. flip_test: None keeps the model's ``eval.flip_test``."""
    from engine.tasks import keypoints as kp

    cfg, model, state = loaded or load_for_inference(path, device)
    if cfg.task != "keypoints":
        raise CheckpointError(f"--checkpoint {path} is a {cfg.task!r} checkpoint; pass a detector as "
                              f"--det-checkpoint and a keypoint model as --checkpoint")
    task = kp.build_task(cfg, kp.KeypointMeta.from_dict(state["meta"]), progress=False, flip_test=flip_test)
    return TopDownPredictor(model, task, cfg.data.input_size, cfg.data.bbox_padding, batch_size=batch_size,
                            recrop_passes=cfg.eval.recrop_passes), cfg


def keypoint_pipeline(checkpoint: str, device: torch.device, no_flip: bool = False,
                      oks_nms_threshold: float | None = 0.9, model=None, cfg=None, meta=None) -> TwoStagePipeline:
    """The two-stage pipeline of a keypoint checkpoint (its config and meta inside), or of an already loaded
    ``model`` with its ``cfg`` and ``meta``. Flip testing as ``eval.flip_test``, off with ``no_flip``."""
    from engine.tasks import keypoints as kp

    if model is None:
        predictor, _ = load_keypoint_predictor(checkpoint, device, False if no_flip else None)
    else:
        task = kp.build_task(cfg, meta, progress=False, flip_test=cfg.eval.flip_test and not no_flip)
        predictor = TopDownPredictor(model, task, cfg.data.input_size, cfg.data.bbox_padding,
                                     recrop_passes=cfg.eval.recrop_passes)
    return TwoStagePipeline(predictor, predictor.task.meta.oks_sigmas, oks_nms_threshold)


def detector_boxes(checkpoint: str, device: torch.device, categories: str | None = None,
                   score_threshold: float = 0.3, batch_size: int = 8, loaded: tuple | None = None) -> DetectorBoxes:
    """A :class:`DetectorBoxes` source from a detection checkpoint or exported ONNX detector (``loaded``: its
    ``load_for_inference`` result, when the caller has it); ``categories`` as ``--det-category``;
    ``batch_size`` images per forward pass of ``predict_many`` (videos)."""
    from engine.tasks import detection as det

    cfg, model, state = loaded or load_for_inference(checkpoint, device)
    if cfg.task != "detection":
        raise CheckpointError(f"--det-checkpoint {checkpoint} is a {cfg.task!r} checkpoint, not a detector")
    meta = det.DetectionMeta.from_dict(state["meta"])
    cats = select_categories(meta.class_names, meta.category_ids, categories)
    predictor = DetectionPredictor(model, det.build_task(cfg, meta, progress=False), cfg.data.input_size,
                                   batch_size=batch_size)
    return DetectorBoxes(predictor, cats, score_threshold, checkpoint)


def detection_file_boxes(path: str, score_threshold: float, categories: str | None,
                         category_names: dict[int, str], default_category_id: int | None) -> DetectionFileBoxes:
    """A :class:`DetectionFileBoxes` source; ``categories`` as ``--det-category`` (ids, or names found in
    ``category_names``)."""
    return DetectionFileBoxes(path, score_threshold, parse_categories(categories, category_names),
                              default_category_id=default_category_id, category_names=category_names)


@dataclass
class ImageResult:
    """One image's outcome: its boxes and, with a keypoint pipeline, the poses kept (records as
    :meth:`TwoStagePipeline.run` returns them); with a detector, its full detections (all classes)."""

    path: str
    image_id: int
    boxes: np.ndarray
    box_scores: np.ndarray
    poses: list[dict] = field(default_factory=list)
    detections: dict | None = None


@dataclass
class TwoStageRun:
    """What :func:`run_on_images` did: pose records of every image, detections (with a detector), the number
    of boxes used, the images that could not be read, and the box source's counts."""

    records: list[dict] = field(default_factory=list)
    detections: list[dict] = field(default_factory=list)
    num_boxes: int = 0
    num_images: int = 0
    unreadable: list[str] = field(default_factory=list)
    box_stats: dict = field(default_factory=dict)


def run_on_images(images: Sequence[tuple[str, int]], source, pipeline: TwoStagePipeline | None = None,
                  on_bad_image: str = "skip", progress: bool = True,
                  on_image: Callable[[np.ndarray, ImageResult], None] | None = None) -> TwoStageRun:
    """Boxes from ``source``, then poses from ``pipeline`` (when given), for every ``(path, image_id)``.

    An unreadable image is skipped with a warning (``on_bad_image="skip"``) or raises ``DataError``
    (``"error"``). ``on_image(image, result)`` sees each image as it is done (to draw it, say).
    """
    run = TwoStageRun()
    for path, image_id in tqdm(list(images), desc="two-stage", disable=not progress, leave=False):
        image = read_image_rgb(path)
        if image is None:
            why = image_problem(path) or "corrupt"
            if on_bad_image == "error":
                raise DataError(f"cannot read image {path} ({why}); fix or remove it, or skip such images "
                                f"(--on-bad-image skip)")
            log.warning("cannot read image %s (%s); skipped", path, why)
            run.unreadable.append(path)
            continue
        boxes, scores = source.boxes_for(image_id, image)
        result = ImageResult(path, int(image_id), boxes, scores)
        if isinstance(source, DetectorBoxes):
            result.detections = {"image_id": int(image_id), **source.last}
            run.detections.append(result.detections)
        if pipeline is not None:
            result.poses = pipeline.run(image, image_id, boxes, scores)
            run.records.extend(result.poses)
        run.num_boxes += len(boxes)
        run.num_images += 1
        if on_image is not None:
            on_image(image, result)
    run.box_stats = source.log_summary()
    if run.unreadable:
        log.warning("%d images could not be read and have no predictions, e.g. %s", len(run.unreadable),
                    run.unreadable[:3])
    return run
