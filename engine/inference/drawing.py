"""Pictures a person would rather look at than read: skeletons and boxes drawn on images.

The image and the coordinates drawn on it must share one pixel grid. ``tools.infer`` hands over the picture
turned upright by its EXIF orientation with its results in that grid (engine.inference.images), so a phone photo
is drawn as its owner sees it; the images written here carry no EXIF, so every viewer shows them as drawn.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence

import cv2
import numpy as np

SIDE_COLOURS = {"first": (255, 140, 0), "second": (30, 144, 255), "centre": (50, 205, 50)}


DETECTION_COLOURS = [(255, 255, 0), (255, 0, 255), (0, 255, 255), (255, 96, 96), (96, 255, 96), (96, 96, 255)]



def side_of_keypoints(flip_index: Sequence[int]) -> list[str]:
    """'first' for the lower index of each flip pair (COCO: the left side), 'second' for its partner,
    'centre' for keypoints that map to themselves."""
    return ["centre" if j == i else ("first" if i < j else "second") for i, j in enumerate(flip_index)]



def draw_keypoints(image: np.ndarray, keypoints: np.ndarray, skeleton: Sequence[tuple[int, int]] = (),
                   flip_index: Sequence[int] | None = None, score_threshold: float = 0.2,
                   boxes: np.ndarray | None = None, labels: bool = False, radius: int | None = None) -> np.ndarray:
    """Draw instances on a copy of an RGB uint8 image.

    keypoints: [N, K, 3] with (x, y, score or visibility); points at or below ``score_threshold`` are
    skipped. skeleton: zero-based index pairs. boxes: optional [N, 4] inclusive xyxy. ``labels`` writes each
    keypoint's index next to it.
    """
    out = np.ascontiguousarray(image.copy())
    kpts = np.asarray(keypoints, dtype=np.float64).reshape(-1, *np.shape(keypoints)[-2:])
    num_k = kpts.shape[1] if kpts.size else 0
    sides = side_of_keypoints(flip_index) if flip_index is not None else ["centre"] * num_k
    scale = max(out.shape[:2]) / 256
    r = radius or max(int(round(2 * scale)), 2)
    thick = max(int(round(1.5 * scale)), 1)
    if boxes is not None:
        for box in np.asarray(boxes).reshape(-1, 4):
            if not np.isfinite(box).all():
                continue
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            cv2.rectangle(out, (x1, y1), (x2, y2), (255, 255, 0), thick)
    for inst in kpts:
        # A point with a non-finite coordinate or score is not drawn (int(NaN) would raise mid-picture).
        ok = np.isfinite(inst).all(-1) & (np.nan_to_num(inst[:, 2], nan=-np.inf) > score_threshold)
        for a, b in skeleton:
            if ok[a] and ok[b]:
                colour = SIDE_COLOURS[sides[a] if sides[a] != "centre" else sides[b]]
                cv2.line(out, _pt(inst[a]), _pt(inst[b]), colour, thick, cv2.LINE_AA)
        for k in np.flatnonzero(ok):
            cv2.circle(out, _pt(inst[k]), r, SIDE_COLOURS[sides[k]], -1, cv2.LINE_AA)
            cv2.circle(out, _pt(inst[k]), r, (0, 0, 0), 1, cv2.LINE_AA)
            if labels:
                cv2.putText(out, str(k), (_pt(inst[k])[0] + r, _pt(inst[k])[1] - r), cv2.FONT_HERSHEY_SIMPLEX,
                            0.25 * max(scale, 1), (255, 255, 255), 1, cv2.LINE_AA)
    return out



def draw_detections(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray | None = None,
                    labels: Sequence[str] | None = None) -> np.ndarray:
    """Draw inclusive-xyxy boxes [N, 4] with optional scores and label names on a copy of an RGB image."""
    out = np.ascontiguousarray(image.copy())
    scale = max(out.shape[:2]) / 256
    thick = max(int(round(1.5 * scale)), 1)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    for i, box in enumerate(boxes):
        colour = DETECTION_COLOURS[zlib.crc32(labels[i].encode()) % len(DETECTION_COLOURS) if labels is not None else 0]
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick)
        text = " ".join(t for t in ((labels[i] if labels is not None else ""),
                                    (f"{scores[i]:.2f}" if scores is not None else "")) if t)
        if text:
            cv2.putText(out, text, (x1, max(y1 - 2, 8)), cv2.FONT_HERSHEY_SIMPLEX, 0.3 * max(scale, 1), colour,
                        max(thick // 2, 1), cv2.LINE_AA)
    return out



def _pt(p) -> tuple[int, int]:
    return int(round(float(p[0]))), int(round(float(p[1])))



def save_rgb(path: str, image: np.ndarray) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write image {path}")



def draw_image_result(image: np.ndarray, result, skeleton=None, flip_index=None, num_keypoints: int = 0,
                      keypoint_threshold: float = 0.2, draw_boxes: bool = True, class_names=None,
                      detection_threshold: float = 0.0) -> np.ndarray:
    """One image of a two-stage run (:class:`engine.inference.images.ImageResult`) drawn: its poses (with their
    boxes unless ``draw_boxes`` is False) when it has a keypoint model, else its detections at or above
    ``detection_threshold`` labelled with ``class_names``."""
    if skeleton is not None:
        kept = result.poses
        poses = np.stack([np.concatenate([r["keypoints"], r["scores"][:, None]], 1) for r in kept]) if kept \
            else np.zeros((0, num_keypoints, 3))
        boxes = np.array([r["bbox"] for r in kept]).reshape(-1, 4) if draw_boxes else None
        return draw_keypoints(image, poses, skeleton, flip_index, keypoint_threshold, boxes=boxes)
    det = result.detections
    keep = det["scores"] >= detection_threshold
    names = [class_names[int(c)] for c, k in zip(det["labels"], keep) if k]
    return draw_detections(image, det["boxes"][keep], det["scores"][keep], names)
