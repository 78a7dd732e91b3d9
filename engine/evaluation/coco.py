"""COCO metrics through pycocotools (never reimplemented), with the setup our data needs.

``coco_eval(gt, results, "keypoints", sigmas=...)`` returns the ten summary numbers by name. The ground
truth may be a json path or an already loaded dict (e.g. the subset of images a split uses); evaluation runs
on exactly the ground truth's images.

pycocotools scores whatever it is given: a NaN keypoint or area in the ground truth yields AP 1.0 for an
untrained model. So the ground truth always passes :func:`datasets.coco_validate.validate_coco` here (a
malformed annotation is an error naming it; readers that skip such annotations hand over the clean subset),
and a result with a non-finite number is dropped and counted (a miss, as it should be).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
from collections.abc import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from datasets.coco_common import load_json
from datasets.coco_validate import validate_coco

log = logging.getLogger(__name__)

KEYPOINT_METRICS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
BBOX_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def load_coco(gt: str | dict, kind: str = "detection") -> COCO:
    """A pycocotools COCO object from a path or a dict, checked (``kind``: ``"keypoints"`` or ``"detection"``,
    see :func:`datasets.coco_validate.validate_coco`), without its console chatter."""
    coco = COCO()
    source = gt if isinstance(gt, str) else "ground truth"
    if isinstance(gt, str):
        gt = load_json(gt, kind)
    clean, _ = validate_coco(gt, source, kind, "error")
    coco.dataset = copy.deepcopy(clean)
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
    kind = "keypoints" if iou_type == "keypoints" else "detection"
    coco_gt = gt if isinstance(gt, COCO) else load_coco(gt, kind)
    if isinstance(gt, COCO):
        validate_coco(coco_gt.dataset, "ground truth", kind, "error")
    names = KEYPOINT_METRICS if iou_type == "keypoints" else BBOX_METRICS
    results = _finite_results(results, "keypoints" if iou_type == "keypoints" else "bbox")
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


def _finite_results(results: list[dict], field: str) -> list[dict]:
    """The results whose score and ``field`` numbers are all finite; the others are dropped with a warning."""
    def finite(r) -> bool:
        values = [r.get("score", 0.0), *(r.get(field) or [])]
        return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)

    kept = [r for r in results if finite(r)]
    if len(kept) != len(results):
        log.warning("dropped %d of %d results with a non-finite score or %s (counted as misses)",
                    len(results) - len(kept), len(results), field)
    return kept
