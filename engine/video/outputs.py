"""Per-frame pose results on disk: COCO keypoint results with ``frame`` and ``track_id``, and DeepLabCut's CSV
(and its ``.h5``, with pandas and PyTables).

DeepLabCut's CSV has three header rows (single-animal layout), or four with ``individuals`` after ``scorer``
(multi-animal layout), then one row per frame whose first cell is the frame index::

    scorer,      S,    S,    S,          S, ...
    individuals, ind0, ind0, ind0,       ind1, ...     (multi-animal layout only: one block per track id)
    bodyparts,   nose, nose, nose,       ...
    coords,      x,    y,    likelihood, ...
    0,           12.3, 45.6, 0.98,       ...

Which layout: the multi-animal one only when tracking found more than one track; one animal (untracked: the
highest-scoring instance of each frame; tracked: the only track) is written in the single-animal layout, the
one DeepLabCut writes for single-animal projects, which readers written for single-animal output (SimBA,
Keypoint-MoSeq, scripts with ``pandas.read_csv(header=[0, 1, 2])``) assume; a four-row file read that way
silently takes the ``coords`` row for data. Readers of the multi-animal layout (DeepLabCut's ``header=[0, 1,
2, 3]``, movement) take both.

Beside the CSV, ``<name>.h5`` holds the same table as DeepLabCut writes it (a pandas DataFrame indexed by frame,
MultiIndex columns ``(scorer, [individuals,] bodyparts, coords)``, key ``"df_with_missing"``): what
DLC2Kinematics and DeepLabCut's own analysis functions read. It needs pandas and PyTables (``pip install
pandas tables``, or the ``h5`` extra); without them the log says once that it was not written.

Coordinates are image pixels (pixel-index convention, as DeepLabCut's); a keypoint or individual absent
from a frame leaves its cells empty (read as NaN by pandas).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence

import numpy as np

from models.bbox import xyxy_to_coco_xywh

log = logging.getLogger(__name__)
_h5_missing_logged = False       # say once per process that the .h5 needs pandas and PyTables


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
                  frames: Sequence[int], tracked: bool) -> str | None:
    """DeepLabCut-layout CSV of :func:`frame_results` entries, one row per processed frame in ``frames``, and the
    same table as ``.h5`` beside it when pandas and PyTables are installed; returns the ``.h5``'s path, or None.

    ``tracked``: the entries carry ``track_id``s; more than one track gives the multi-animal layout (one
    ``ind<id>`` block per track), one track (or none) the single-animal layout. Untracked: the best-scoring
    entry of each frame, single-animal layout.
    """
    num_k = len(keypoint_names)
    track_ids = sorted({int(r["track_id"]) for r in results}) if tracked else []
    multi = len(track_ids) > 1
    individuals = track_ids if multi else [None]
    column = {tid: i for i, tid in enumerate(individuals)}
    width = 3 * num_k
    by_frame: dict[int, list[dict]] = {}
    for r in results:
        by_frame.setdefault(int(r["frame"]), []).append(r)
    values = np.full((len(frames), width * len(individuals)), np.nan)     # [T, 3 K N]: x, y, likelihood
    for t, frame in enumerate(frames):
        entries = by_frame.get(int(frame), [])
        if not multi and entries:
            entries = [max(entries, key=lambda r: r["score"])]   # one track has one entry a frame anyway
        for r in entries:
            c = column[int(r["track_id"])] if multi else 0
            values[t, c * width:(c + 1) * width] = r["keypoints"]
    columns = [(scorer, *((f"ind{tid}",) if multi else ()), name, coord)
               for tid in individuals for name in keypoint_names for coord in ("x", "y", "likelihood")]
    levels = ["scorer", "individuals", "bodyparts", "coords"] if multi else ["scorer", "bodyparts", "coords"]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerows([[level] + [c[i] for c in columns] for i, level in enumerate(levels)])
        for frame, row in zip(frames, values):
            w.writerow([int(frame)] + ["" if np.isnan(v) else (f"{v:.3f}" if i % 3 < 2 else f"{v:.4f}")
                                       for i, v in enumerate(row)])
    os.replace(path + ".tmp", path)
    return write_dlc_h5(os.path.splitext(path)[0] + ".h5", values, columns, levels, frames)


def write_dlc_h5(path: str, values: np.ndarray, columns: list[tuple], levels: list[str],
                 frames: Sequence[int]) -> str | None:
    """DeepLabCut's ``.h5`` of a table (``values`` [T, C], one column per tuple of ``columns`` named by ``levels``,
    one row per frame): ``DataFrame.to_hdf(path, key="df_with_missing", format="table")`` as DeepLabCut does.
    Returns ``path``, or None (logged once per process) when pandas or PyTables is missing."""
    global _h5_missing_logged
    try:
        import pandas as pd
        import tables  # noqa: F401  (pandas' HDF5 writer needs it; fail here, before a half-written file)
    except ImportError as err:
        if not _h5_missing_logged:
            _h5_missing_logged = True
            log.info("%s not written (%s): DLC2Kinematics and DeepLabCut's analysis functions read the .h5; pip "
                     "install pandas tables (or the h5 extra: pip install -e .[h5]) to get it next to each CSV",
                     path, err)
        return None
    df = pd.DataFrame(values, index=pd.Index([int(f) for f in frames]),
                      columns=pd.MultiIndex.from_tuples(columns, names=levels))
    tmp = path + ".tmp"
    try:
        df.to_hdf(tmp, key="df_with_missing", format="table", mode="w")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_dlc_csv(path: str) -> tuple[list[list[str]], np.ndarray, np.ndarray]:
    """``(header rows, frame indices [T], values [T, C])`` of a DeepLabCut-layout CSV (empty cells: NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    n_header = next(i for i, r in enumerate(rows) if r[0] == "coords") + 1
    body = rows[n_header:]
    frames = np.array([int(r[0]) for r in body], dtype=np.int64)
    values = np.array([[float(v) if v != "" else np.nan for v in r[1:]] for r in body], dtype=np.float64)
    return rows[:n_header], frames, values.reshape(len(body), -1)
