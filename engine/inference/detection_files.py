"""COCO detection-results files (``image_id``, ``bbox`` [x, y, w, h], ``score``, ``category_id``) read and
checked: every entry normalised or refused naming it, boxes too small to crop (or not finite) left out with
a warning, categories chosen by id or name. :class:`engine.inference.box_sources.DetectionFileBoxes` serves
them per image.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Sequence

import numpy as np

from models.bbox import box_is_empty, coco_xywh_to_xyxy
from models.errors import InputError

log = logging.getLogger(__name__)


def croppable(boxes: np.ndarray) -> np.ndarray:
    """True where an inclusive xyxy box can be cropped: finite and at least one pixel wide and high
    (``x2 >= x1`` and ``y2 >= y1``, i.e. COCO ``w >= 1`` and ``h >= 1``). boxes: [N, 4] -> bool [N]."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    with np.errstate(invalid="ignore"):
        return np.isfinite(boxes).all(-1) & ~box_is_empty(boxes)


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



def filter_detections(path: str, entries: list[dict], score_threshold: float,
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
    return filter_detections(path, entries, score_threshold, category_ids, stats)



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



def describe_categories(counts: Counter, names: dict[int, str]) -> str:
    parts = []
    for c in sorted(counts, key=lambda c: (c is None, c if c is not None else 0)):
        label = "no category_id" if c is None else (f"{c} ({names[c]})" if c in names else str(c))
        parts.append(f"{label}: {counts[c]}")
    return "{" + ", ".join(parts) + "}"
