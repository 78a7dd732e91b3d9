"""Estimate per-keypoint OKS sigmas for a custom skeleton from two annotations of the same instances.

    python -m tools.estimate_sigmas --ann-a annotator1.json --ann-b annotator2.json

COCO's sigmas measure how much annotators disagree on each keypoint, relative to the object's size:
``sigma_i = sqrt(E[d_i^2 / area])``. Annotate a few dozen instances twice (two people, or one person a week
apart), match them by annotation id, and paste the printed list into ``data.oks_sigmas``. Without double
annotations, borrow COCO's value of the most similar body part (eyes 0.025, wrists 0.062, knees 0.087, ...).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from engine.evaluation.keypoint_metrics import estimate_oks_sigmas
from models.errors import DataError
from tools._common import add_debug_flag, run_cli


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ann-a", required=True, help="COCO keypoint json, first annotation")
    p.add_argument("--ann-b", required=True, help="COCO keypoint json, second annotation (same annotation ids)")
    return p


def main(argv: list[str] | None = None) -> list[float]:
    args = add_debug_flag(get_args_parser()).parse_args(argv)
    a, b = (json.load(open(p)) for p in (args.ann_a, args.ann_b))
    by_id = {ann["id"]: ann for ann in b["annotations"]}
    pairs = [(ann, by_id[ann["id"]]) for ann in a["annotations"] if ann["id"] in by_id and ann.get("keypoints")]
    if not pairs:
        raise DataError(f"{args.ann_a} and {args.ann_b} share no annotation ids with keypoints")
    ka = np.array([x["keypoints"] for x, _ in pairs], float).reshape(len(pairs), -1, 3)
    kb = np.array([y["keypoints"] for _, y in pairs], float).reshape(len(pairs), -1, 3)
    areas = np.array([x.get("area") or x["bbox"][2] * x["bbox"][3] for x, _ in pairs], float)
    sigmas = estimate_oks_sigmas(ka, kb, areas)
    names = next((c.get("keypoints") for c in a.get("categories", []) if c.get("keypoints")), None)
    for i, s in enumerate(sigmas):
        print(f"{names[i] if names else i:>20}: {s:.4f}")
    print("data.oks_sigmas: [" + ", ".join(f"{s:.3f}" for s in sigmas) + "]")
    return [float(s) for s in sigmas]


if __name__ == "__main__":
    run_cli(main)
