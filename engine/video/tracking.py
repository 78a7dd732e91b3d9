"""Identities across frames: a small tracking-by-detection matcher on box IoU and keypoint OKS.

Each frame's instances are matched to the live tracks (those seen within the last ``max_gap`` frames):

1. Similarity of every (track, instance) pair: ``iou_weight * IoU(boxes) + (1 - iou_weight) * OKS(poses)``,
   both in [0, 1]. The track's box and pose are those of the last frame it was matched in. IoU follows the
   +1 box convention (models.bbox); OKS is COCO's, with the model's per-keypoint sigmas, the mean of the
   two boxes' areas as the scale and only keypoints confident in both poses (engine.inference.oks_nms.oks_matrix).
2. Assignment: ``"hungarian"`` (the maximum-total-similarity one-to-one matching, scipy's
   ``linear_sum_assignment``) or ``"greedy"`` (repeatedly take the most similar free pair). Pairs below
   ``min_similarity`` are never matched.
3. An unmatched instance starts a new track with the next id (ids count up from 0 and are never reused).
   A track unmatched for more than ``max_gap`` frames is retired.

No motion model: at video frame rates an instance moves little between frames, and a short gap is bridged
by the last-seen box and pose. Crossing, look-alike animals swap ids like every appearance-free tracker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from engine.inference.oks_nms import oks_matrix
from models.bbox import box_area, box_iou


@dataclass
class Track:
    track_id: int
    box: np.ndarray            # [4] inclusive xyxy, at the last match
    keypoints: np.ndarray      # [K, 3]
    last_frame: int
    hits: int = 1


def match(similarity: np.ndarray, min_similarity: float, method: str = "hungarian") -> list[tuple[int, int]]:
    """One-to-one pairs ``(row, col)`` of a similarity matrix [T, N], each at least ``min_similarity``.

    ``hungarian`` maximises the total similarity; ``greedy`` takes the most similar remaining pair first.
    """
    t, n = similarity.shape
    if t == 0 or n == 0:
        return []
    if method == "hungarian":
        rows, cols = linear_sum_assignment(-similarity)
        return [(int(r), int(c)) for r, c in zip(rows, cols) if similarity[r, c] >= min_similarity]
    if method == "greedy":
        pairs, sim = [], similarity.astype(np.float64).copy()
        while True:
            r, c = np.unravel_index(np.argmax(sim), sim.shape)
            if sim[r, c] < min_similarity or sim[r, c] == -np.inf:
                return pairs
            pairs.append((int(r), int(c)))
            sim[r, :] = -np.inf
            sim[:, c] = -np.inf
    raise ValueError(f"tracking method {method!r}: use 'hungarian' or 'greedy'")


class PoseTracker:
    """Args:
        oks_sigmas: [K] per-keypoint OKS sigmas (the keypoint model's ``meta.oks_sigmas``).
        iou_weight: weight of box IoU in the similarity; ``1 - iou_weight`` goes to OKS.
        min_similarity: pairs less similar than this are not matched.
        max_gap: frames a track may go unmatched before it is retired (counted in frame indices, so a
            stride of 2 spends two per processed frame).
        method: ``"hungarian"`` or ``"greedy"``.
        keypoint_threshold: keypoints at or below this confidence do not enter OKS.
    """

    def __init__(self, oks_sigmas: Sequence[float], iou_weight: float = 0.5, min_similarity: float = 0.3,
                 max_gap: int = 10, method: str = "hungarian", keypoint_threshold: float = 0.2):
        if not 0 <= iou_weight <= 1:
            raise ValueError(f"iou_weight must be in [0, 1], got {iou_weight}")
        if method not in ("hungarian", "greedy"):
            raise ValueError(f"tracking method {method!r}: use 'hungarian' or 'greedy'")
        self.oks_sigmas = list(oks_sigmas)
        self.iou_weight = iou_weight
        self.min_similarity = min_similarity
        self.max_gap = max_gap
        self.method = method
        self.keypoint_threshold = keypoint_threshold
        self.tracks: list[Track] = []
        self.next_id = 0

    def similarity(self, boxes: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
        """[T, N] similarity of the live tracks with N instances (boxes [N, 4], keypoints [N, K, 3])."""
        if not self.tracks or len(boxes) == 0 or len(keypoints) == 0:
            return np.zeros((len(self.tracks), len(boxes)))
        t_boxes = np.stack([t.box for t in self.tracks])
        iou = box_iou(t_boxes, boxes)
        t_kpts = np.stack([t.keypoints for t in self.tracks])
        all_kpts = np.concatenate([t_kpts, keypoints])
        areas = np.concatenate([box_area(t_boxes), box_area(boxes)])
        oks = oks_matrix(all_kpts, areas, self.oks_sigmas, self.keypoint_threshold)[: len(t_kpts), len(t_kpts):]
        return self.iou_weight * iou + (1 - self.iou_weight) * oks

    def update(self, frame: int, boxes: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
        """Track ids [N] (int64) of this frame's instances; boxes [N, 4] inclusive xyxy, keypoints [N, K, 3]."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        keypoints = np.asarray(keypoints, dtype=np.float64)
        self.tracks = [t for t in self.tracks if frame - t.last_frame <= self.max_gap]
        ids = np.full(len(boxes), -1, dtype=np.int64)
        for r, c in match(self.similarity(boxes, keypoints), self.min_similarity, self.method):
            track = self.tracks[r]
            track.box, track.keypoints, track.last_frame = boxes[c], keypoints[c], frame
            track.hits += 1
            ids[c] = track.track_id
        for c in np.flatnonzero(ids < 0):
            self.tracks.append(Track(self.next_id, boxes[c], keypoints[c], frame))
            ids[c] = self.next_id
            self.next_id += 1
        return ids

