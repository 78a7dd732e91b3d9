"""Per-frame pose results on disk: COCO keypoint results with ``frame`` and ``track_id``, and DeepLabCut's CSV.

DeepLabCut's CSV (what SimBA, Keypoint-MoSeq, DLC2Kinematics and others read) has three or four header rows,
then one row per frame whose first cell is the frame index::

    scorer,      S,    S,    S,          S, ...
    individuals, ind0, ind0, ind0,       ind1, ...     (only with tracking: one block per track id)
    bodyparts,   nose, nose, nose,       ...
    coords,      x,    y,    likelihood, ...
    0,           12.3, 45.6, 0.98,       ...

Coordinates are image pixels (pixel-index convention, as DeepLabCut's); a keypoint or individual absent
from a frame leaves its cells empty (read as NaN by pandas). Without tracking only one individual is
written: the highest-scoring instance of each frame.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import numpy as np

from models.bbox import xyxy_to_coco_xywh


def frame_results(frame: int, keypoints: np.ndarray, scores: np.ndarray, boxes: np.ndarray,
                  track_ids: np.ndarray | None, category_id: int = 1) -> list[dict]:
    """COCO keypoint results of one frame (``image_id`` = ``frame``, the 0-based frame index) plus ``frame``,
    ``track_id`` (None without tracking) and ``bbox`` ([x, y, w, h]). keypoints: [N, K, 3]; scores: [N]."""
    xywh = xyxy_to_coco_xywh(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
    out = []
    for i in range(len(keypoints)):
        out.append({"image_id": int(frame), "frame": int(frame), "category_id": int(category_id),
                    "keypoints": [round(float(v), 3) for v in np.asarray(keypoints[i]).reshape(-1)],
                    "score": round(float(scores[i]), 6), "bbox": [round(float(v), 2) for v in xywh[i]],
                    "track_id": None if track_ids is None else int(track_ids[i])})
    return out


def write_dlc_csv(path: str, results: list[dict], keypoint_names: Sequence[str], scorer: str,
                  frames: Sequence[int], tracked: bool) -> None:
    """DeepLabCut-layout CSV of :func:`frame_results` entries, one row per processed frame in ``frames``."""
    num_k = len(keypoint_names)
    by_frame: dict[int, list[dict]] = {}
    for r in results:
        by_frame.setdefault(int(r["frame"]), []).append(r)
    if tracked:
        individuals = sorted({int(r["track_id"]) for r in results})
    else:
        individuals = [0]
    column = {tid: i for i, tid in enumerate(individuals)}
    width = 3 * num_k
    header = [["scorer"] + [scorer] * width * len(individuals)]
    if tracked:
        header.append(["individuals"] + [f"ind{tid}" for tid in individuals for _ in range(width)])
    header.append(["bodyparts"] + [n for _ in individuals for n in keypoint_names for _ in range(3)])
    header.append(["coords"] + ["x", "y", "likelihood"] * num_k * len(individuals))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerows(header)
        for frame in frames:
            row = [""] * (width * len(individuals))
            entries = by_frame.get(int(frame), [])
            if not tracked and entries:
                entries = [max(entries, key=lambda r: r["score"])]
            for r in entries:
                c = column[int(r["track_id"])] if tracked else 0
                row[c * width:(c + 1) * width] = [f"{v:.3f}" if i % 3 < 2 else f"{v:.4f}"
                                                  for i, v in enumerate(r["keypoints"])]
            w.writerow([int(frame)] + row)
    os.replace(path + ".tmp", path)


def read_dlc_csv(path: str) -> tuple[list[list[str]], np.ndarray, np.ndarray]:
    """``(header rows, frame indices [T], values [T, C])`` of a DeepLabCut-layout CSV (empty cells: NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    n_header = next(i for i, r in enumerate(rows) if r[0] == "coords") + 1
    body = rows[n_header:]
    frames = np.array([int(r[0]) for r in body], dtype=np.int64)
    values = np.array([[float(v) if v != "" else np.nan for v in r[1:]] for r in body], dtype=np.float64)
    return rows[:n_header], frames, values.reshape(len(body), -1)
