"""OKS-based non-maximum suppression of keypoint instances (HRNet, MMPose), vectorised over pairs.

Top-down inference estimates one pose per detected box; two boxes on the same person give two nearly equal
poses. Box NMS cannot tell them from two people standing close; the keypoints can. OKS (object keypoint
similarity, COCO's keypoint "IoU") between two poses is ``mean_k exp(-d_k^2 / (2 * s^2 * (2 sigma_k)^2))``
with ``s^2`` the mean of the two instances' areas, and a pose is dropped when its OKS with a higher-scored
kept pose exceeds the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Keeps the OKS exponent finite for zero-area instances (HRNet adds np.spacing(1) for the same reason).
_AREA_EPS = np.spacing(1)


def oks_matrix(keypoints: np.ndarray, areas: np.ndarray, sigmas: Sequence[float],
               vis_threshold: float | None = None) -> np.ndarray:
    """Pairwise OKS of N instances.

    keypoints: [N, K, 3] (x, y, confidence) in image pixels; areas: [N]; sigmas: [K] per-keypoint OKS sigmas.
    vis_threshold: when set, only keypoints confident above it in *both* instances count (an instance pair
    with none scores 0). Returns [N, N], symmetric, 1 on the diagonal (without ``vis_threshold``).
    """
    kpts = np.asarray(keypoints, dtype=np.float64)
    if kpts.ndim != 3 or kpts.shape[-1] != 3:
        raise ValueError(f"keypoints must be [N, K, 3], got {kpts.shape}")
    sig = np.asarray(sigmas, dtype=np.float64)
    if len(sig) != kpts.shape[1]:
        raise ValueError(f"{len(sig)} OKS sigmas for {kpts.shape[1]} keypoints")
    var = (2 * sig) ** 2                                                   # [K]
    d2 = ((kpts[:, None, :, :2] - kpts[None, :, :, :2]) ** 2).sum(-1)      # [N, N, K]
    area = np.asarray(areas, dtype=np.float64)
    scale = (area[:, None] + area[None, :]) / 2 + _AREA_EPS                # [N, N]
    e = d2 / var / scale[..., None] / 2
    sim = np.exp(-e)
    if vis_threshold is None:
        return sim.mean(-1)
    conf = kpts[..., 2] > vis_threshold
    both = conf[:, None, :] & conf[None, :, :]
    n = both.sum(-1)
    return np.where(n > 0, (sim * both).sum(-1) / np.maximum(n, 1), 0.0)


def oks_nms(keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, sigmas: Sequence[float],
            threshold: float = 0.9, vis_threshold: float | None = None) -> np.ndarray:
    """Greedy OKS-NMS: indices of the kept instances, by decreasing score.

    keypoints: [N, K, 3]; scores: [N]; areas: [N] (instance areas in pixels, e.g. the box area).
    An instance is dropped when its OKS with an already kept, higher-scored one is above ``threshold``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        return np.zeros(0, dtype=np.int64)
    oks = oks_matrix(keypoints, areas, sigmas, vis_threshold)
    order = np.argsort(-scores, kind="stable")
    suppressed = np.zeros(len(scores), dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= oks[i] > threshold
    return np.asarray(keep, dtype=np.int64)
