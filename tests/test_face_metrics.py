"""The face-alignment report against numbers worked out by hand, and on the real 300-W annotations."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

from engine.evaluation.face_metrics import (
    FACE68_REGIONS,
    FaceReport,
    FaceReportConfig,
    build_face_report,
    ced_auc,
    ced_curve,
    failure_rate,
    match_faces,
    normalisers,
    pair_with_instances,
    plot_ced,
    summarize,
)


def square_face(scale: float) -> np.ndarray:
    """Four labelled points at the corners of a square of side 10 * scale: [4, 3]."""
    pts = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], float) * scale
    return np.concatenate([pts, np.full((4, 1), 2.0)], axis=1)


def test_nme_fr_auc_by_hand():
    # Face 0: the pair (0, 1) is 10 px apart, every point 0.9 px off -> NME 0.09.
    # Face 1: twice the size (pair 20 px), exact -> NME 0.
    gt = np.stack([square_face(1), square_face(2)])
    pred = gt[..., :2].copy()
    pred[0, :, 0] += 0.9
    report = FaceReport("inter_ocular", pair=(0, 1), pupils=None, regions={"top": [0, 1], "bottom": [2, 3]})
    m = report.evaluate(pred, gt)
    assert m["NME"] == pytest.approx(0.045)
    assert m["FR@0.08"] == 0.5 and m["FR@0.1"] == 0.0           # 0.09 fails at 8 %, passes at 10 %
    assert m["AUC@0.08"] == pytest.approx((0.0 + 0.08) / 2 / 0.08)        # = 0.5
    assert m["AUC@0.1"] == pytest.approx((0.01 + 0.1) / 2 / 0.1)          # = 0.55
    assert m["NME/top"] == pytest.approx(0.045) and m["NME/bottom"] == pytest.approx(0.045)
    assert m["faces"] == 2
    assert m["offset/x"] == pytest.approx(0.045) and m["offset/y"] == 0.0


def test_offset_is_signed_and_skips_unlabelled_points():
    # Face of pair distance 10: point 0 is 1 px right and 2 px down, point 1 is 1 px left (errors that cancel
    # in x), point 3 is unlabelled and 50 px off (ignored), point 2 exact.
    gt = square_face(1)[None].copy()
    gt[0, 3, 2] = 0
    pred = gt[..., :2].copy()
    pred[0, 0] += (1.0, 2.0)
    pred[0, 1, 0] -= 1.0
    pred[0, 3] += 50.0
    m = FaceReport("inter_ocular", pair=(0, 1), pupils=None).evaluate(pred, gt)
    assert m["offset/x"] == pytest.approx(0.0) and m["offset/y"] == pytest.approx(0.2 / 3)
    assert m["NME"] > 0.05


def test_regions_unlabelled_points_and_misses():
    gt = np.stack([square_face(1)])
    pred = gt[..., :2].copy()
    pred[0, 2] += [3.0, 4.0]                         # point 2 is 5 px off: 0.5 of the 10 px pair distance
    gt[0, 3, 2] = 0                                  # point 3 unlabelled: ignored even though far off
    pred[0, 3] += 100
    report = FaceReport("inter_ocular", pair=(0, 1), pupils=None, regions={"top": [0, 1], "bottom": [2, 3]})
    m = report.evaluate(pred, gt, missed=1)
    assert m["NME"] == pytest.approx(0.5 / 3)                   # mean over the 3 labelled points
    assert m["NME/top"] == 0.0 and m["NME/bottom"] == pytest.approx(0.5)
    # The missed face fails at every threshold; the predicted one fails too (0.167 > 0.1).
    assert m["FR@0.1"] == 1.0 and m["AUC@0.1"] == 0.0 and m["faces"] == 2 and m["faces_missed"] == 1


def test_normalisers_inter_pupil_and_box():
    gt = np.zeros((1, 6, 3))
    gt[..., 2] = 2
    gt[0, :3, :2] = [[0, 0], [2, 0], [1, 3]]         # left group, mean (1, 1)
    gt[0, 3:, :2] = [[10, 1], [12, 1], [11, 1]]      # right group, mean (11, 1)
    assert normalisers(gt, "inter_pupil", pupils=([0, 1, 2], [3, 4, 5]))[0] == pytest.approx(10.0)
    assert normalisers(gt, "inter_ocular", pair=(0, 4))[0] == pytest.approx(np.hypot(12, 1))
    # Inclusive boxes: [0, 0, 9, 19] is 10 x 20 pixels.
    assert normalisers(gt, "box", boxes=np.array([[0, 0, 9, 19]]))[0] == pytest.approx(np.sqrt(200.0))
    gt[0, 4, 2] = 0                                  # a pupil needs every point of its group
    assert np.isnan(normalisers(gt, "inter_pupil", pupils=([0, 1, 2], [3, 4, 5]))[0])
    with pytest.raises(ValueError, match="not one of"):
        normalisers(gt, "diagonal")


def test_auc_of_a_known_step_distribution():
    errors = np.array([0.0, 0.02, 0.04, 0.06])
    # The CED is a staircase rising by 1/4 at each error: its area on [0, 0.08] is 0.08 + 0.06 + 0.04 + 0.02
    # quarters, i.e. 0.05; divided by 0.08 -> 0.625.
    assert ced_auc(errors, 0.08) == pytest.approx(0.625)
    grid, share = ced_curve(errors, 0.08, num=80001)
    assert np.trapezoid(share, grid) / 0.08 == pytest.approx(0.625, abs=1e-4)
    assert ced_auc(np.full(5, 0.05), 0.1) == pytest.approx(0.5)
    assert ced_auc(np.array([np.inf, 0.0]), 0.1) == pytest.approx(0.5)
    assert failure_rate(np.array([0.08, 0.0800001, np.nan]), 0.08) == 0.5   # strictly above fails; NaN not counted
    s = summarize(np.array([0.02, np.inf]))
    assert s["NME"] == pytest.approx(0.02) and s["FR@0.08"] == 0.5


def test_match_faces_by_iou_greedy_one_to_one():
    gt = np.array([[0, 0, 99, 99], [200, 0, 299, 99]], float)
    pred = np.array([[205, 5, 300, 100], [500, 500, 520, 520], [10, 10, 105, 105], [0, 0, 98, 98]], float)
    assert match_faces(gt, pred).tolist() == [3, 0]      # the better overlap wins; the far box matches nothing
    assert match_faces(gt, np.zeros((0, 4))).tolist() == [-1, -1]
    instances = [SimpleNamespace(image_id=1, bbox=gt[0], keypoints=np.ones((2, 3))),
                 SimpleNamespace(image_id=1, bbox=gt[1], keypoints=np.ones((2, 3))),
                 SimpleNamespace(image_id=2, bbox=gt[0], keypoints=np.ones((2, 3)))]
    records = [{"image_id": 1, "bbox": pred[0], "keypoints": np.full((2, 2), 7.0)}]
    p, g, b, missed = pair_with_instances(records, instances, [1, 2])
    assert missed == 2 and p.shape == (1, 2, 2) and p[0, 0, 0] == 7 and b[0].tolist() == gt[1].tolist()


def test_build_from_config_uses_68_point_defaults():
    report = build_face_report(FaceReportConfig(), 68, nme_pair=None)
    assert report.pair == (36, 45) and report.pupils[0] == tuple(range(36, 42))
    assert set(report.regions) == {"jaw", "brows", "nose", "eyes", "mouth"}
    assert sorted(i for r in FACE68_REGIONS.values() for i in r) == list(range(68))
    assert build_face_report(None, 68) is None
    five = build_face_report(FaceReportConfig(normalize="box", regions={"eyes": [0, 1]}), 5)
    assert five.regions == {"eyes": (0, 1)} and five.pair is None
    with pytest.raises(ValueError, match="outside 0..4"):
        build_face_report(FaceReportConfig(regions={"eyes": [0, 7]}, ocular_pair=[0, 1]), 5)
    with pytest.raises(ValueError, match="ocular_pair"):
        build_face_report(FaceReportConfig(), 5)


def test_ced_png(tmp_path):
    path = str(tmp_path / "ced.png")
    plot_ced({"a": np.array([0.01, 0.05, 0.2]), "b": np.array([0.03, np.inf])}, path, 0.1)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_real_300w_faces(shared_data):
    """On the real annotations: ground truth scores 0; a 1 px shift scores mean(1 / inter-ocular distance)."""
    with open(os.path.join(shared_data, "faces300w_train", "annotations.json")) as f:
        anns = json.load(f)["annotations"][:50]
    gt = np.array([a["keypoints"] for a in anns], float).reshape(-1, 68, 3)
    boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2] - 1, a["bbox"][1] + a["bbox"][3] - 1]
                      for a in anns])
    report = build_face_report(FaceReportConfig(), 68, nme_pair=(36, 45))
    exact = report.evaluate(gt[..., :2], gt, boxes)
    assert exact["NME"] == 0 and exact["FR@0.08"] == 0 and exact["AUC@0.1"] == pytest.approx(1.0)
    shifted = gt[..., :2] + [1.0, 0.0]
    io = np.linalg.norm(gt[:, 36, :2] - gt[:, 45, :2], axis=1)
    assert report.evaluate(shifted, gt, boxes)["NME"] == pytest.approx(np.mean(1 / io))
    # The eye centres are closer together than the outer corners: inter-pupil NME is the larger.
    pupil = build_face_report(FaceReportConfig(normalize="inter_pupil"), 68).evaluate(shifted, gt, boxes)
    assert pupil["NME"] > report.evaluate(shifted, gt, boxes)["NME"]
    assert set(FACE68_REGIONS) <= {k.split("/")[1] for k in exact if k.startswith("NME/")}


def test_peer_score_of_ground_truth_results(shared_data, tmp_path):
    """bench/dlib_landmarks.py score: ground truth written as keypoint results scores NME 0 and AP 1."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("dlib_landmarks", os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "dlib_landmarks.py"))
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    config = "configs/hg-fpn_resnet18_300w-faces_128x128.yaml"
    anns = json.load(open(os.path.join(shared_data, "faces300w_train", "annotations.json")))["annotations"]
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "keypoints": a["keypoints"], "score": 1.0}
               for a in anns]
    path = tmp_path / "gt_results.json"
    path.write_text(json.dumps(results))
    out = peer.main(["score", "--config", config, "--results", f"truth={path}", "--out-dir", str(tmp_path)])
    m = out["models"]["truth"]
    assert m["NME"] == 0 and m["AP"] == pytest.approx(1.0) and m["faces"] > 100 and "faces_missed" not in m
    assert os.path.isfile(tmp_path / "ced.png") and out["face_report"]["normalize"] == "inter_ocular"


def test_peer_predict_needs_no_torch():
    """bench/dlib_landmarks.py predict runs in dlib's own environment (dlib and numpy, no torch, no OpenCV):
    what it imports of ours must pull neither."""
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys; import datasets.coco_common, models.errors, tools._common; "
            "assert 'torch' not in sys.modules, 'torch imported'; assert 'cv2' not in sys.modules, 'cv2 imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
