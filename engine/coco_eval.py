"""COCO metrics through pycocotools (never reimplemented), with the setup our data needs.

``coco_eval(gt, results, "keypoints", sigmas=...)`` returns the ten summary numbers by name. The ground
truth may be a json path or an already loaded dict (e.g. the subset of images a split uses); evaluation runs
on exactly the ground truth's images.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

KEYPOINT_METRICS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
BBOX_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def load_coco(gt: str | dict) -> COCO:
    """A pycocotools COCO object from a path or a dict, without its console chatter."""
    coco = COCO()
    if isinstance(gt, str):
        with open(gt) as f:
            gt = json.load(f)
    coco.dataset = copy.deepcopy(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_eval(gt: str | dict | COCO, results: list[dict], iou_type: str = "keypoints",
              sigmas: Sequence[float] | None = None, return_summary: bool = False):
    """Run COCOeval and return ``{metric name: value}`` (and the printed summary when asked).

    Args:
        gt: ground truth (json path, dict or COCO object).
        results: COCO results (``image_id``, ``category_id``, ``score`` and ``keypoints`` or ``bbox``).
        iou_type: ``"keypoints"`` (OKS) or ``"bbox"``.
        sigmas: per-keypoint OKS sigmas (keypoints only); pycocotools' COCO 17 when None.
    An empty result list scores 0 everywhere (pycocotools cannot load it).
    """
    coco_gt = gt if isinstance(gt, COCO) else load_coco(gt)
    names = KEYPOINT_METRICS if iou_type == "keypoints" else BBOX_METRICS
    if not results:
        out = {n: 0.0 for n in names}
        return (out, "no results") if return_summary else out
    unknown = {r["image_id"] for r in results} - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(f"results refer to {len(unknown)} image ids that are not in the ground truth, "
                         f"e.g. {sorted(unknown)[:5]}")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if sigmas is not None:
            sig = np.asarray(sigmas, dtype=np.float64)
            num_k = len(coco_gt.loadCats(coco_gt.getCatIds())[0].get("keypoints", sig))
            if len(sig) != num_k:
                raise ValueError(f"{len(sig)} OKS sigmas given for {num_k} keypoints (data.oks_sigmas)")
            ev.params.kpt_oks_sigmas = sig
        ev.params.imgIds = sorted(coco_gt.getImgIds())
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out = {n: float(v) for n, v in zip(names, ev.stats)}
    return (out, buf.getvalue()) if return_summary else out
