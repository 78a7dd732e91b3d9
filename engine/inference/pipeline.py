"""The two-stage pipeline's second stage: keypoints for every box of an image, rescored and de-duplicated.

:class:`TwoStagePipeline` crops each box (the +1 box padded to the keypoint model's aspect ratio, as in
training), estimates keypoints, maps them back to the image, rescores each instance (box score times the
mean confidence of its confident keypoints) and removes duplicate poses with OKS-NMS. The boxes come from
a box source (:mod:`engine.inference.box_sources`); :func:`engine.inference.images.run_on_images` runs both
over image files, :mod:`engine.video.runner` over frames.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from engine.inference.loading import load_first_pass, load_keypoint_predictor
from engine.inference.oks_nms import oks_nms
from engine.inference.predictors import TopDownPredictor
from engine.tasks.keypoints import build_task as build_keypoint_task
from models.bbox import box_area

log = logging.getLogger(__name__)


class TwoStagePipeline:
    """Keypoints for every box of an image, rescored and de-duplicated.

    Args:
        predictor: the keypoint model's :class:`engine.inference.predictors.TopDownPredictor`.
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



def keypoint_pipeline(checkpoint: str, device: torch.device, no_flip: bool = False,
                      oks_nms_threshold: float | None = 0.9, model=None, cfg=None, meta=None,
                      first_pass: str | None = None) -> TwoStagePipeline:
    """The two-stage pipeline of a keypoint checkpoint (its config and meta inside), or of an already loaded
    ``model`` with its ``cfg`` and ``meta``. Flip testing as ``eval.flip_test``, off with ``no_flip``.
    ``first_pass``: a cheaper keypoint model that places this one's re-crops (:class:`TopDownPredictor`)."""
    if model is None:
        predictor, _ = load_keypoint_predictor(checkpoint, device, False if no_flip else None, first_pass=first_pass)
    else:
        task = build_keypoint_task(cfg, meta, progress=False, flip_test=cfg.eval.flip_test and not no_flip)
        first = load_first_pass(first_pass, device, meta, checkpoint, cfg.eval.recrop_passes) if first_pass else None
        predictor = TopDownPredictor(model, task, cfg.data.input_size, cfg.data.bbox_padding,
                                     recrop_passes=cfg.eval.recrop_passes, first_pass=first)
    return TwoStagePipeline(predictor, predictor.task.meta.oks_sigmas, oks_nms_threshold)
