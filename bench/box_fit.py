r"""How detected boxes miss their labels, edge by edge, and how well the labels agree with themselves.

    .venv/bin/python bench/box_fit.py --ann ../shared/data/tiger_pose/val.json \
        --results runs/<run>/eval/detection_results.json \
        --neighbour-frames ../shared/data/tiger_pose/train.json

COCO AP averages over IoU thresholds 0.50-0.95, so on large objects it is decided by the last few pixels of
each edge. This script says where they go:

* ``--results``: each labelled box against the highest-scoring detection of its image and class that overlaps
  it most (one per label, as AR1 would take it): the IoU's quantiles and, per edge (x1, y1, x2, y2, in image
  pixels, the ``+1`` inclusive convention of models/bbox.py), the signed error's median and 10th / 90th
  percentiles. A box that is too large on every side has negative x1/y1 and positive x2/y2 errors.
* ``--neighbour-frames``: for sets sampled from a video (file names ending in a frame number), each labelled
  box against the average of the nearest boxes in the neighbouring frames ``n - 1`` and ``n + 1`` of another
  split; scored with pycocotools as if it were a detector. How far the labels move between consecutive
  frames bounds how well any detector can fit them: if this "detector" scores AP 0.99, the labels are
  consistent and a miss is the model's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a script: bench/ is on sys.path
from models.bbox import box_iou, coco_xywh_to_xyxy  # noqa: E402

EDGES = ("x1", "y1", "x2", "y2")


def frame_number(file_name: str) -> int | None:
    """The last number in a file name (``Frame_101.jpg`` -> 101), or None."""
    found = re.findall(r"\d+", os.path.basename(file_name))
    return int(found[-1]) if found else None


def label_boxes(data: dict) -> dict[tuple[int, int], np.ndarray]:
    """``{(image_id, category_id): boxes [N, 4] inclusive xyxy}`` of a COCO json's annotations."""
    out: dict[tuple[int, int], list] = {}
    for a in data["annotations"]:
        out.setdefault((int(a["image_id"]), int(a["category_id"])), []).append(a["bbox"])
    return {k: coco_xywh_to_xyxy(np.asarray(v, float).reshape(-1, 4)) for k, v in out.items()}


def edge_errors(truth: dict, results: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """``(errors [M, 4] predicted - label per edge, ious [M])`` over the labels that have a detection: for each
    label, among its image's detections of its class, the highest-scoring one that overlaps it most."""
    by_key: dict[tuple[int, int], list] = {}
    for r in results:
        by_key.setdefault((int(r["image_id"]), int(r["category_id"])), []).append(r)
    errors, ious = [], []
    for key, labels in truth.items():
        dets = by_key.get(key)
        if not dets:
            continue
        boxes = coco_xywh_to_xyxy(np.asarray([d["bbox"] for d in dets], float))
        scores = np.asarray([d["score"] for d in dets])
        overlap = box_iou(labels, boxes)                                                 # [N, D]
        for i, label in enumerate(labels):
            best = overlap[i].max()
            if best <= 0:
                continue
            j = int(np.argmax(np.where(overlap[i] >= best - 1e-9, scores, -np.inf)))
            errors.append(boxes[j] - label)
            ious.append(overlap[i, j])
    return np.asarray(errors).reshape(-1, 4), np.asarray(ious)


def neighbour_results(data: dict, other: dict) -> list[dict]:
    """A detection per label of ``data``: the mean of the nearest boxes (by IoU) of its class in frames
    ``n - 1`` and ``n + 1`` of ``other`` (score 1). Labels without a labelled neighbour get none."""
    other_boxes = label_boxes(other)
    frames = {frame_number(im["file_name"]): int(im["id"]) for im in other["images"]}
    out = []
    for im in data["images"]:
        n = frame_number(im["file_name"])
        if n is None:
            continue
        for (image_id, cat), labels in label_boxes({"annotations": [a for a in data["annotations"]
                                                                     if a["image_id"] == im["id"]]}).items():
            near = [other_boxes.get((frames[m], cat)) for m in (n - 1, n + 1) if m in frames]
            near = [b for b in near if b is not None and len(b)]
            for label in labels:
                if not near:
                    continue
                picks = [b[int(np.argmax(box_iou(label[None], b)[0]))] for b in near]
                x1, y1, x2, y2 = np.mean(picks, 0)
                out.append({"image_id": image_id, "category_id": cat, "score": 1.0,
                            "bbox": [float(x1), float(y1), float(x2 - x1 + 1), float(y2 - y1 + 1)]})
    return out


def coco_box_scores(ann_file: str, results: list[dict]) -> dict[str, float]:
    """pycocotools' bbox AP, AP75 and AR100 of ``results`` on the images they cover."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(ann_file)
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.params.imgIds = sorted({r["image_id"] for r in results})
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": ev.stats[0], "AP75": ev.stats[2], "AR100": ev.stats[8]}


def report(errors: np.ndarray, ious: np.ndarray) -> str:
    q = np.percentile(ious, [10, 50, 90])
    lines = [f"{len(ious)} labels; IoU p10 {q[0]:.3f}, median {q[1]:.3f}, p90 {q[2]:.3f}; "
             f">= 0.90: {np.mean(ious >= 0.9):.0%}, >= 0.95: {np.mean(ious >= 0.95):.0%}",
             "edge   median    p10    p90   (predicted - label, image pixels)"]
    for k, name in enumerate(EDGES):
        p10, med, p90 = np.percentile(errors[:, k], [10, 50, 90])
        lines.append(f"{name:<4} {med:>8.1f} {p10:>6.1f} {p90:>6.1f}")
    return "\n".join(lines)


def read_json(path: str, needs: str | None) -> dict | list:
    """A json file, or one line naming the file and what is wrong (missing, not json, no ``needs`` key)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: cannot read {path}: {err}") from None
    if needs and not (isinstance(data, dict) and needs in data):
        raise SystemExit(f"error: {path} has no '{needs}': give a COCO json with boxes")
    return data


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ann", required=True, help="the labels: a COCO json with boxes")
    p.add_argument("--results", help="a COCO detection-results json (tools.eval writes detection_results.json)")
    p.add_argument("--neighbour-frames", help="another split of the same video: score its neighbouring frames' "
                                              "boxes as a detector")
    args = p.parse_args(argv)
    data = read_json(args.ann, "annotations")
    out = {}
    for name, path in (("results", args.results), ("neighbour-frames", args.neighbour_frames)):
        if not path:
            continue
        other = read_json(path, "annotations" if name == "neighbour-frames" else None)
        results = other if name == "results" else neighbour_results(data, other)
        if name == "results" and not all(isinstance(r, dict) and "bbox" in r for r in results):
            raise SystemExit(f"error: {path} is not a COCO detection-results list (each entry needs 'bbox', "
                             f"'score', 'image_id', 'category_id'); tools.eval writes detection_results.json")
        if not results:
            print(f"{name}: no detection to score ({path})")
            continue
        errors, ious = edge_errors(label_boxes(data), results)
        scores = coco_box_scores(args.ann, results)
        print(f"== {name}: {path}\n" + report(errors, ious) + "\n"
              + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()) + " (pycocotools, the images scored)")
        out[name] = {"errors": errors, "ious": ious, **scores}
    return out


if __name__ == "__main__":
    main()
