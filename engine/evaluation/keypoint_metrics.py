"""PCK and NME: the distance metrics of face and animal keypoint benchmarks, next to COCO's OKS AP.

Both take predictions and ground truth in image pixel coordinates and count only labelled keypoints
(``v > 0``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.bbox import box_width_height


def pck(pred: np.ndarray, gt: np.ndarray, boxes: np.ndarray, thresholds: Sequence[float] = (0.05, 0.1, 0.2)) -> dict:
    """Percentage of Correct Keypoints: distance <= alpha * the box's longer side.

    pred: [N, K, 2]; gt: [N, K, 3] (x, y, v); boxes: [N, 4] inclusive xyxy.
    Returns ``{"PCK@0.05": fraction, ...}`` over all labelled keypoints (0 when there are none).
    """
    pred, gt, boxes = np.asarray(pred, float), np.asarray(gt, float), np.asarray(boxes, float)
    labelled = gt[..., 2] > 0
    w, h = box_width_height(boxes)
    norm = np.maximum(np.maximum(w, h), 1e-6)[:, None]
    dist = np.linalg.norm(pred - gt[..., :2], axis=-1) / norm
    n = labelled.sum()
    return {f"PCK@{t:g}": float(((dist <= t) & labelled).sum() / n) if n else 0.0 for t in thresholds}


def nme(pred: np.ndarray, gt: np.ndarray, boxes: np.ndarray | None = None,
        norm_pair: tuple[int, int] | None = None) -> float:
    """Normalised Mean Error: mean over labelled keypoints of distance / normaliser.

    The normaliser is the distance between the ground-truth keypoints ``norm_pair`` (e.g. the outer eye
    corners, 36 and 45 of the 68-point face: the inter-ocular NME of 300-W), or the box diagonal
    ``sqrt(w^2 + h^2)`` when no pair is given. Instances whose pair is not labelled are left out.
    pred: [N, K, 2]; gt: [N, K, 3]; boxes: [N, 4] inclusive xyxy (needed without a pair).
    """
    pred, gt = np.asarray(pred, float), np.asarray(gt, float)
    labelled = gt[..., 2] > 0
    if norm_pair is not None:
        i, j = norm_pair
        norm = np.linalg.norm(gt[:, i, :2] - gt[:, j, :2], axis=-1)
        usable = labelled[:, i] & labelled[:, j] & (norm > 0)
    else:
        if boxes is None:
            raise ValueError("nme needs boxes when no normalising keypoint pair is given")
        w, h = box_width_height(np.asarray(boxes, float))
        norm = np.sqrt(w ** 2 + h ** 2)
        usable = norm > 0
    mask = labelled & usable[:, None]
    if not mask.any():
        return float("nan")
    dist = np.linalg.norm(pred - gt[..., :2], axis=-1) / np.where(usable, norm, 1.0)[:, None]
    return float(dist[mask].mean())


def estimate_oks_sigmas(kpts_a: np.ndarray, kpts_b: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """Per-keypoint OKS sigmas from two independent annotations of the same instances (COCO's recipe).

    COCO defines ``sigma_i^2 = E[d_i^2 / s^2]`` over redundantly annotated instances, with ``d_i`` the distance
    between two annotators' keypoint i and ``s^2`` the object area. kpts_a, kpts_b: [N, K, 3]; areas: [N].
    Keypoints labelled in both annotations count. Returns [K] (NaN where no pair was labelled).
    """
    a, b = np.asarray(kpts_a, float), np.asarray(kpts_b, float)
    both = (a[..., 2] > 0) & (b[..., 2] > 0)
    d2 = ((a[..., :2] - b[..., :2]) ** 2).sum(-1) / np.maximum(np.asarray(areas, float), 1e-9)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt((d2 * both).sum(0) / both.sum(0))
