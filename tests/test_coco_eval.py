"""Our COCO evaluation equals pycocotools called directly (all ten numbers); PCK and NME on hand-computed cases."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from datasets.skeletons import COCO_SIGMAS
from engine.evaluation.coco import KEYPOINT_METRICS, coco_eval, load_coco
from engine.evaluation.keypoint_metrics import nme, pck


@pytest.fixture(scope="module")
def gt_path(shared_data) -> str:
    return os.path.join(shared_data, "coco_mini", "test_coco.json")


@pytest.fixture(scope="module")
def gt(gt_path) -> dict:
    with open(gt_path) as f:
        return json.load(f)


def _gt_results(gt: dict) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "keypoints": list(a["keypoints"]),
             "score": 1.0} for a in gt["annotations"] if a["num_keypoints"] > 0]


def _jittered(gt: dict, seed: int = 0, noise_px: float = 6.0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for r in _gt_results(gt):
        k = np.asarray(r["keypoints"], float).reshape(-1, 3)
        k[:, :2] += rng.normal(0, noise_px, (len(k), 2))
        k[:, 2] = 1
        out.append({**r, "keypoints": k.ravel().tolist(), "score": float(rng.uniform(0.1, 1.0))})
    return out


def _pycocotools(gt_path: str, results: list[dict], iou_type: str = "keypoints", sigmas=None) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt_path)
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = np.asarray(sigmas)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


def test_ground_truth_scores_ap_one(gt_path, gt):
    stats = coco_eval(gt_path, _gt_results(gt))
    assert list(stats) == list(KEYPOINT_METRICS)
    assert stats["AP"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)
    # A dict and a COCO object are accepted as well.
    assert coco_eval(gt, _gt_results(gt))["AP"] == pytest.approx(1.0)
    assert coco_eval(load_coco(gt), _gt_results(gt))["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_jittered_equals_pycocotools_directly(gt_path, gt, seed):
    results = _jittered(gt, seed)
    ours = coco_eval(gt_path, results)
    theirs = _pycocotools(gt_path, results)
    assert len(theirs) == 10
    np.testing.assert_array_equal([ours[n] for n in KEYPOINT_METRICS], theirs)
    assert 0.05 < ours["AP"] < 0.95          # the jitter makes the comparison non-trivial
    # Our call did not modify the caller's results (pycocotools adds fields to what it loads).
    assert set(results[0]) == {"image_id", "category_id", "keypoints", "score"}


def test_custom_sigmas_pass_through(gt_path, gt):
    results = _jittered(gt, seed=2)
    wide = [2 * s for s in COCO_SIGMAS]
    default = coco_eval(gt_path, results)
    explicit = coco_eval(gt_path, results, sigmas=COCO_SIGMAS)
    widened = coco_eval(gt_path, results, sigmas=wide)
    assert explicit == default
    assert widened["AP"] > default["AP"]
    np.testing.assert_array_equal([widened[n] for n in KEYPOINT_METRICS], _pycocotools(gt_path, results, sigmas=wide))
    with pytest.raises(ValueError, match="16 OKS sigmas given for 17 keypoints"):
        coco_eval(gt_path, results, sigmas=COCO_SIGMAS[:16])


def test_empty_results_score_zero(gt_path):
    stats = coco_eval(gt_path, [])
    assert stats == {n: 0.0 for n in KEYPOINT_METRICS}


def test_unknown_image_id_raises(gt_path, gt):
    results = _gt_results(gt)
    results.append({**results[0], "image_id": 987654321})
    with pytest.raises(ValueError, match="987654321"):
        coco_eval(gt_path, results)


def test_bbox_mode_ground_truth_and_agreement(gt_path, gt):
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
               for a in gt["annotations"]]
    stats = coco_eval(gt_path, results, "bbox")
    assert stats["AP"] == pytest.approx(1.0)
    rng = np.random.default_rng(3)
    jittered = [{**r, "bbox": (np.asarray(r["bbox"]) * rng.uniform(0.8, 1.2, 4)).tolist(),
                 "score": float(rng.uniform())} for r in results]
    ours = coco_eval(gt_path, jittered, "bbox")
    np.testing.assert_array_equal(list(ours.values()), _pycocotools(gt_path, jittered, "bbox"))


def test_return_summary(gt_path, gt):
    stats, text = coco_eval(gt_path, _gt_results(gt), return_summary=True)
    assert "Average Precision" in text and stats["AP"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------- PCK / NME
def test_pck_hand_values_with_plus_one_box():
    # Box [0, 0, 9, 19]: w = 10, h = 20 (inclusive pixels), so the normaliser is 20.
    gt = np.zeros((1, 6, 3))
    gt[0, :, 2] = [2, 2, 1, 2, 2, 0]
    offsets = np.array([[0.3, 0.4], [0.585, 0.78], [0.9, 1.2], [1.8, 2.4], [3.0, 4.0], [50.0, 0.0]])
    # distances:       0.5           0.975          1.5          3.0          5.0      (unlabelled)
    # / 20:            0.025         0.04875        0.075        0.15         0.25
    pred = gt[..., :2] + offsets
    out = pck(pred, gt, np.array([[0, 0, 9, 19]]))
    # 0.975 / 20 <= 0.05; with a box height of 19 (no +1) it would be 0.0513 > 0.05.
    assert out == pytest.approx({"PCK@0.05": 2 / 5, "PCK@0.1": 3 / 5, "PCK@0.2": 4 / 5})
    assert pck(pred, gt, np.array([[0, 0, 9, 19]]), thresholds=(0.3,)) == {"PCK@0.3": 1.0}
    gt_none = gt.copy()
    gt_none[..., 2] = 0
    assert pck(pred, gt_none, np.array([[0, 0, 9, 19]]))["PCK@0.1"] == 0.0


def test_pck_uses_each_instances_box():
    gt = np.zeros((2, 1, 3))
    gt[:, 0] = [5, 5, 2]
    pred = gt[..., :2] + [[[3.0, 4.0]], [[3.0, 4.0]]]       # distance 5 in both
    boxes = np.array([[0, 0, 99, 9], [0, 0, 9, 9]])          # longer sides 100 and 10
    assert pck(pred, gt, boxes, thresholds=(0.1,)) == {"PCK@0.1": 0.5}


def test_nme_with_keypoint_pair():
    gt = np.zeros((2, 4, 3))
    gt[0, :, :2] = [[0, 0], [6, 8], [20, 20], [30, 30]]       # pair (0, 1) 10 apart
    gt[0, :, 2] = [2, 2, 1, 0]
    pred = gt[..., :2].copy()
    pred[0] += [[1, 0], [0, 2], [1.8, 2.4], [100, 100]]      # errors 1, 2, 3, (unlabelled)
    # Instance 1 has its pair unlabelled: left out, however wrong.
    gt[1, :, 2] = [0, 2, 2, 2]
    pred[1] += 50
    assert nme(pred, gt, norm_pair=(0, 1)) == pytest.approx((1 + 2 + 3) / 3 / 10)
    assert math.isnan(nme(pred[1:], gt[1:], norm_pair=(0, 1)))


def test_nme_with_box_diagonal_plus_one():
    gt = np.zeros((1, 3, 3))
    gt[0, :, :2] = [[5, 5], [10, 10], [15, 15]]
    gt[0, :, 2] = [2, 1, 0]
    pred = gt[..., :2] + [[[3, 4], [6, 8], [40, 40]]]         # errors 5, 10, (unlabelled)
    box = np.array([[0, 0, 29, 39]])                          # w 30, h 40: diagonal 50 (48.6 without +1)
    assert nme(pred, gt, boxes=box) == pytest.approx(7.5 / 50)
    with pytest.raises(ValueError, match="needs boxes"):
        nme(pred, gt)
