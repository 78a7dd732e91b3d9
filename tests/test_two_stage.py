"""Detect, then estimate keypoints: OKS-NMS, rescoring, the real COCO person detections on coco_mini, and
the CLIs with a detector checkpoint, a detection file or ground-truth boxes (and saying which)."""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch

from datasets.skeletons import COCO_FLIP_INDEX, COCO_KEYPOINT_NAMES, COCO_SIGMAS, COCO_SKELETON
from engine.checkpoint import save_checkpoint
from engine.config.loading import config_to_dict
from engine.inference.box_sources import DetectionFileBoxes, DetectorBoxes
from engine.inference.detection_files import load_detections
from engine.inference.oks_nms import oks_matrix, oks_nms
from engine.inference.pipeline import TwoStagePipeline
from engine.tasks import keypoints as kp
from engine.tasks.keypoints.schema import KeypointConfig
from engine.tasks.registry import load_config
from models.bbox import box_to_center_size
from models.errors import InputError

DET_FILE = "coco_mini/test_coco_det_AP_H_56.json"


# ---------------------------------------------------------------------------------------------- OKS-NMS
def _hrnet_oks_nms(kpts, scores, areas, sigmas, thr):
    """HRNet's oks_iou / oks_nms loop (lib/nms/nms.py), for comparison."""
    sig = np.asarray(sigmas)
    var = (sig * 2) ** 2
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        ious = []
        for j in order[1:]:
            dx, dy = kpts[j, :, 0] - kpts[i, :, 0], kpts[j, :, 1] - kpts[i, :, 1]
            e = (dx ** 2 + dy ** 2) / var / ((areas[i] + areas[j]) / 2 + np.spacing(1)) / 2
            ious.append(np.exp(-e).mean())
        order = order[np.where(np.asarray(ious) <= thr)[0] + 1]
    return keep


def test_oks_nms_equals_hrnets_loop():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 100, (4, 17, 2))
    kpts = np.concatenate([base[rng.integers(0, 4, 30)] + rng.normal(0, 3, (30, 17, 2)), np.ones((30, 17, 1))], -1)
    scores, areas = rng.uniform(0, 1, 30), rng.uniform(2000, 6000, 30)
    for thr in (0.5, 0.9):
        assert oks_nms(kpts, scores, areas, COCO_SIGMAS, thr).tolist() == _hrnet_oks_nms(kpts, scores, areas,
                                                                                          COCO_SIGMAS, thr)


def test_oks_hand_value():
    # One keypoint moved by 10 px, area 400 for both, sigma 0.1: exp(-100 / (2 * 400 * 0.04)) = exp(-3.125).
    a = np.zeros((1, 2, 3))
    b = a.copy()
    b[0, 0, 0] = 10
    m = oks_matrix(np.concatenate([a, b]), np.array([400.0, 400.0]), [0.1, 0.1])
    assert m[0, 1] == pytest.approx((np.exp(-3.125) + 1) / 2, rel=1e-6) and m[0, 0] == pytest.approx(1.0)


class _StubPredictor:
    """Returns fixed poses per box: the keypoint task only rescores them."""

    def __init__(self, poses):
        self.poses = poses
        self.task = kp.KeypointTask(None, kp.KeypointMeta(["a", "b"], [], [0, 1], [0.1, 0.1]), rescore_threshold=0.2)

    def predict(self, image, boxes, flip_test=None):
        return self.poses[: len(boxes)]


def test_pipeline_rescores_and_drops_duplicate_poses():
    poses = np.array([[[10, 10, 0.9], [20, 20, 0.5]],        # a person
                      [[10.5, 10, 0.8], [20, 20.5, 0.1]],    # the same person from a second box
                      [[60, 60, 0.6], [70, 70, 0.6]]])       # someone else
    boxes = np.array([[0, 0, 29, 29], [1, 1, 30, 30], [50, 50, 79, 79]], float)
    pipe = TwoStagePipeline(_StubPredictor(poses), [0.1, 0.1], oks_nms_threshold=0.9)
    out = pipe.run(np.zeros((100, 100, 3), np.uint8), 5, boxes, np.array([0.9, 0.95, 0.5]))
    # Instance score = box score x mean confidence of keypoints above 0.2: 0.9 * 0.7, 0.95 * 0.8, 0.5 * 0.6.
    assert [round(r["score"], 4) for r in out] == [0.76, 0.3]
    assert [r["bbox"].tolist() for r in out] == [[1, 1, 30, 30], [50, 50, 79, 79]]
    keep_all = TwoStagePipeline(_StubPredictor(poses), [0.1, 0.1], oks_nms_threshold=None)
    assert len(keep_all.run(np.zeros((100, 100, 3), np.uint8), 5, boxes, np.ones(3))) == 3
    assert pipe.run(np.zeros((9, 9, 3), np.uint8), 5, np.zeros((0, 4)), np.zeros(0)) == []


def test_images_videos_and_the_api_rank_poses_by_the_same_unrounded_scores():
    from engine.inference.pipeline import rescore_and_suppress

    # Two poses whose instance scores differ by 1e-8: rounded to 6 decimals (as the written results are) they
    # would tie and keep the box order; the image pipeline, the video runner and engine.api rank the better first.
    poses = np.array([[[10, 10, 0.5], [20, 20, 0.5]],
                      [[60, 60, 0.5], [70, 70, 0.50000002]]])
    boxes = np.array([[0, 0, 29, 29], [50, 50, 79, 79]], float)
    task = _StubPredictor(poses).task
    keep, scores = rescore_and_suppress(task, boxes, np.ones(2), poses, 0.9)
    assert keep.tolist() == [1, 0]
    np.testing.assert_array_equal(scores, task.rescore(poses[:, :, 2], np.ones(2))[[1, 0]])
    assert scores[0] > scores[1]
    out = TwoStagePipeline(_StubPredictor(poses), [0.1, 0.1]).run(np.zeros((90, 90, 3), np.uint8), 1, boxes,
                                                                    np.ones(2))
    assert [r["score"] for r in out] == scores.tolist() and out[0]["bbox"].tolist() == boxes[1].tolist()


# ---------------------------------------------------------------------------------------------- box sources
def _write(path, entries) -> str:
    path.write_text(json.dumps(entries))
    return str(path)


def test_detection_file_leaves_out_uncroppable_boxes_and_clips_to_the_image(tmp_path, caplog):
    entries = [{"image_id": 7, "bbox": [10, 10, 20, 30], "score": 0.9, "category_id": 1},        # 0 kept
               {"image_id": 7, "bbox": [5, 5, 0.5, 10], "score": 0.8, "category_id": 1},         # 1 w < 1
               {"image_id": 7, "bbox": [5, 5, 10, 0], "score": 0.8, "category_id": 1},           # 2 h = 0
               {"image_id": 8, "bbox": [float("nan"), 5, 10, 10], "score": 0.8, "category_id": 1},  # 3 not finite
               {"image_id": 7, "bbox": [-5, 70, 20, 30], "score": 0.7, "category_id": 1},        # 4 partly outside
               {"image_id": 7, "bbox": [200, 10, 20, 30], "score": 0.6, "category_id": 1},       # 5 outside
               {"image_id": 7, "bbox": [1, 1, 1, 1], "score": 0.5, "category_id": 1}]            # 6 one pixel: kept
    path = _write(tmp_path / "dets.json", entries)
    with caplog.at_level(logging.WARNING):
        src = DetectionFileBoxes(path)
    # Counted and named (index in the file, image id, bbox) when the file is read, not at the crop.
    assert src.stats["unusable"] == 3 and src.num_boxes == 4
    assert "3 boxes are left out" in caplog.text
    assert "entry 1 (image 7, bbox [5.0, 5.0, 0.5, 10.0]" in caplog.text
    assert "entry 2 (image 7, bbox [5.0, 5.0, 10.0, 0.0]" in caplog.text
    assert "entry 3 (image 8, bbox [nan, 5.0, 10.0, 10.0]" in caplog.text
    boxes, scores = src.boxes_for(7, np.zeros((80, 100, 3), np.uint8))     # 100 wide, 80 high
    # Partly outside: clipped to the image (+1 convention: pixels 0..99, 0..79); entirely outside: dropped.
    np.testing.assert_allclose(boxes, [[10, 10, 29, 39], [0, 70, 14, 79], [1, 1, 1, 1]])
    np.testing.assert_allclose(scores, [0.9, 0.7, 0.5])
    assert src.boxes_for(8, np.zeros((80, 100, 3), np.uint8))[0].shape == (0, 4)
    caplog.clear()
    stats = src.log_summary()
    assert stats["clipped"] == 1 and stats["outside_image"] == 1
    assert "1 boxes reaching beyond their image were clipped" in caplog.text
    assert "1 boxes entirely outside" in caplog.text
    # Every box handed on can be cropped.
    for b in boxes:
        box_to_center_size(b, 0.75)
    # The module-level reader leaves out the same boxes and counts them.
    stats = {}
    by_image = load_detections(path, stats=stats)
    assert sum(len(v) for v in by_image.values()) == 4 and stats["unusable"] == 3


def test_detection_file_categories_default_to_the_keypoint_models(tmp_path, caplog):
    entries = ([{"image_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9, "category_id": 1}] * 2 +
               [{"image_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9, "category_id": 2}] * 3)
    path = _write(tmp_path / "dets.json", entries)
    with caplog.at_level(logging.INFO):
        src = DetectionFileBoxes(path, default_category_id=1, category_names={1: "person", 2: "dog"})
    assert src.category_ids == [1] and src.num_boxes == 2 and src.stats["other_category"] == 3
    assert "using categories [1] (the keypoint model's category)" in caplog.text
    assert "1 (person): 2, 2 (dog): 3" in caplog.text
    assert DetectionFileBoxes(path, category_ids=[2], default_category_id=1).num_boxes == 3
    assert DetectionFileBoxes(path, category_ids=[1, 2], default_category_id=1).num_boxes == 5
    with pytest.raises(ValueError, match=r"--det-category \[3\] has no entries.*1: 2, 2: 3"):
        DetectionFileBoxes(path, category_ids=[3])
    # Not the model's category in the file: all of them, with a warning that says so.
    caplog.clear()
    src = DetectionFileBoxes(path, default_category_id=5)
    assert src.category_ids is None and src.num_boxes == 5
    assert "using all categories" in caplog.text and "category 5" in caplog.text


class _StubDetector:
    def __init__(self, boxes, scores):
        self.det = {"boxes": np.asarray(boxes, float), "scores": np.asarray(scores, float),
                    "labels": np.zeros(len(scores), np.int64), "category_ids": np.ones(len(scores), np.int64)}

    def predict(self, image):
        return self.det


def test_detector_boxes_never_hand_on_an_uncroppable_box():
    det = _StubDetector([[10, 10, 20, 20], [5, 5, 4.6, 9], [np.nan, 0, 5, 5], [-20, 5, 30, 9], [200, 0, 210, 9]],
                        [0.9, 0.9, 0.9, 0.8, 0.7])
    src = DetectorBoxes(det, score_threshold=0.5)
    boxes, scores = src.boxes_for(1, np.zeros((50, 100, 3), np.uint8))
    np.testing.assert_allclose(boxes, [[10, 10, 20, 20], [0, 5, 30, 9]])
    np.testing.assert_allclose(scores, [0.9, 0.8])
    assert src.log_summary() == {"unusable": 2, "outside_image": 1}


# ---------------------------------------------------------------------------------------------- CLIs
TINY_KPT = {"model": {"out_indices": [1, 2, 3], "fpn_channels": 16, "head_channels": 16, "depth": 2, "num_stacks": 1},
            "data": {"input_size": [32, 48], "flip_index": COCO_FLIP_INDEX, "val_batch_size": 8},
            "train": {"num_workers": 0}}


@pytest.fixture(scope="module")
def keypoint_checkpoint(tmp_path_factory) -> str:
    """An untrained tiny keypoint model saved like tools.train saves one (the pipeline, not its accuracy)."""
    from engine.tasks.registry import config_from_dict

    torch.manual_seed(0)
    split = {"ann_file": "x", "image_root": "x"}
    data = {**TINY_KPT["data"], "train": split, "val": split}
    cfg = config_from_dict({"task": "keypoints", **TINY_KPT, "data": data})
    assert isinstance(cfg, KeypointConfig)
    model = kp.build_model(cfg, 17, pretrained=False)
    meta = kp.KeypointMeta(COCO_KEYPOINT_NAMES, [(a - 1, b - 1) for a, b in COCO_SKELETON], COCO_FLIP_INDEX,
                           COCO_SIGMAS, category_id=1)
    path = str(tmp_path_factory.mktemp("kpt") / "kpt.pt")
    save_checkpoint({"model": model.state_dict(), "config": config_to_dict(cfg), "meta": meta.to_dict()}, path)
    return path


@pytest.fixture(scope="module")
def coco_mini_config(shared_data, tmp_path_factory) -> str:
    root = os.path.join(shared_data, "coco_mini")
    path = tmp_path_factory.mktemp("cfg") / "coco_mini.yaml"
    split = f"{{ann_file: {root}/test_coco.json, image_root: {root}}}"
    path.write_text(f"""task: keypoints
model: {json.dumps(TINY_KPT['model'])}
data:
  train: {split}
  val: {split}
  input_size: [32, 48]
  flip_index: {COCO_FLIP_INDEX}
train: {{num_workers: 0}}
""")
    return str(path)


def test_real_detection_file_on_coco_mini_through_infer(shared_data, keypoint_checkpoint, tmp_path):
    from tools import infer

    root = os.path.join(shared_data, "coco_mini")
    dets = json.load(open(os.path.join(shared_data, DET_FILE)))
    out = infer.main(["--checkpoint", keypoint_checkpoint, "--input", root, "--boxes",
                      os.path.join(shared_data, DET_FILE), "--image-info", os.path.join(root, "test_coco.json"),
                      "--output-dir", str(tmp_path),
                      "--no-progress", "--no-flip"])
    assert out["images"] == 4 and out["boxes"] == len(dets) == 118
    assert "detections from" in out["box_source"] and out["unknown_image_ids"] == []
    results = json.load(open(out["results"]))
    assert 0 < len(results) == out["instances"] <= 118
    assert {r["image_id"] for r in results} <= {785, 40083, 196141, 197388}
    assert all(len(r["keypoints"]) == 51 and r["category_id"] == 1 for r in results)
    # Rescored: an instance never scores above its box.
    assert max(r["score"] for r in results) <= max(d["score"] for d in dets) + 1e-6
    assert len(os.listdir(out["vis_dir"])) == 4


def test_detection_file_with_unknown_image_ids_says_which(shared_data, keypoint_checkpoint, tmp_path, caplog):
    from tools import infer

    root = os.path.join(shared_data, "coco_mini")
    dets = json.load(open(os.path.join(shared_data, DET_FILE)))[:3]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets + [{"image_id": 123456, "bbox": [0, 0, 10, 10], "score": 0.9}]))
    out = infer.main(["--checkpoint", keypoint_checkpoint, "--input", root, "--boxes", str(path), "--image-info",
                      os.path.join(root, "test_coco.json"), "--output-dir", str(tmp_path / "o"), "--no-progress"])
    assert out["unknown_image_ids"] == [123456] and "123456" in caplog.text and out["boxes"] == 3
    path.write_text(json.dumps([{"image_id": 123456, "bbox": [0, 0, 10, 10], "score": 0.9}]))
    with pytest.raises(ValueError, match="123456"):
        infer.main(["--checkpoint", keypoint_checkpoint, "--input", root, "--boxes", str(path), "--image-info",
                    os.path.join(root, "test_coco.json"), "--output-dir", str(tmp_path / "o"), "--no-progress"])


def test_eval_says_which_boxes_it_used(shared_data, keypoint_checkpoint, coco_mini_config, tmp_path):
    from tools import eval as eval_tool

    gt = eval_tool.main(["--config", coco_mini_config, "--checkpoint", keypoint_checkpoint, "--output-dir",
                         str(tmp_path / "gt"), "--no-progress", "eval.flip_test=false"])
    det = eval_tool.main(["--config", coco_mini_config, "--checkpoint", keypoint_checkpoint, "--output-dir",
                          str(tmp_path / "det"), "--no-progress", "--boxes", os.path.join(shared_data, DET_FILE),
                          "eval.flip_test=false"])
    assert gt["boxes"] == "ground truth" and "PCK@0.1" in gt["metrics"]
    assert det["boxes"].startswith("detections from") and det["boxes_used"] == 118
    assert "AP" in det["metrics"] and "PCK@0.1" not in det["metrics"]
    saved = json.load(open(tmp_path / "det" / "metrics.json"))
    assert saved["boxes"] == det["boxes"]
    # One code path: the ground-truth boxes given as a detection file (score 1, no OKS-NMS) give the same
    # poses as the ground-truth evaluation.
    ann = json.load(open(os.path.join(shared_data, "coco_mini", "test_coco.json")))
    gt_dets = [{"image_id": a["image_id"], "bbox": a["bbox"], "score": 1.0, "category_id": 1}
               for a in ann["annotations"] if not a.get("iscrowd") and a["num_keypoints"] > 0]
    (tmp_path / "gt_dets.json").write_text(json.dumps(gt_dets))
    same = eval_tool.main(["--config", coco_mini_config, "--checkpoint", keypoint_checkpoint, "--output-dir",
                           str(tmp_path / "same"), "--no-progress", "--boxes", str(tmp_path / "gt_dets.json"),
                           "--oks-nms-threshold", "2", "eval.flip_test=false"])
    assert same["metrics"]["AP"] == pytest.approx(gt["metrics"]["AP"])

    def poses(folder):
        return sorted((r["image_id"], *np.round(r["keypoints"], 2)) for r in
                      json.load(open(tmp_path / folder / "keypoint_results.json")))
    assert poses("same") == poses("gt") and len(poses("gt")) == len(gt_dets)


# ---------------------------------------------------------------------------------------------- detector
TINY_DET = ["model.out_indices=[1,2,3]", "model.fpn_channels=16", "model.head_channels=16", "data.input_size=[64,64]",
            "train.batch_size=8", "data.val_batch_size=8", "train.num_workers=0", "train.log_interval=2",
            "train.warmup_steps=2", "eval.topk=3", "eval.nms=true"]


@pytest.fixture(scope="module")
def trained_detector(tmp_path_factory, tiny_synthetic_detection):
    from tools import train

    t = tiny_synthetic_detection
    tmp = tmp_path_factory.mktemp("det")
    cfg = tmp / "det.yaml"
    cfg.write_text(f"""task: detection
name: tiny-det
data:
  train: {{ann_file: {t['train']}, image_root: {t['images']}}}
  val: {{ann_file: {t['val']}, image_root: {t['images']}}}
""")
    run = str(tmp / "run")
    summary = train.main(["--config", str(cfg), "--run-dir", run, "--no-progress", "train.epochs=1", *TINY_DET])
    return {"cfg": str(cfg), "run": run, "summary": summary}


@pytest.mark.slow
def test_detector_trains_evaluates_and_infers(trained_detector, tiny_synthetic_detection, tmp_path):
    from tools import eval as eval_tool
    from tools import infer

    run = trained_detector["run"]
    for name in ("config.yaml", "last.pt", "best.pt", "metrics.json"):
        assert os.path.isfile(os.path.join(run, name)), name
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"} <= set(trained_detector["summary"]["last"])
    report = eval_tool.main(["--config", trained_detector["cfg"], "--checkpoint", os.path.join(run, "best.pt"),
                             "--output-dir", str(tmp_path / "eval"), "--no-progress", *TINY_DET])
    assert report["task"] == "detection" and report["images"] == 8 and "APs" in report["metrics"]
    val_dir = os.path.join(tiny_synthetic_detection["images"], "val")
    out = infer.main(["--det-checkpoint", os.path.join(run, "best.pt"), "--input", val_dir, "--output-dir",
                      str(tmp_path / "infer"), "--det-score-threshold", "0", "--no-progress"])
    assert out["images"] == 8 and out["boxes"] <= 3 * 8 and len(os.listdir(out["vis_dir"])) == 8
    dets = json.load(open(out["detection_results"]))
    assert all(len(d["bbox"]) == 4 and d["category_id"] in (1, 2, 3, 4) for d in dets)
    # Nothing above a score of 0.99 from a one-epoch model: empty results, not a crash.
    out = infer.main(["--det-checkpoint", os.path.join(run, "best.pt"), "--input", val_dir, "--output-dir",
                      str(tmp_path / "none"), "--det-score-threshold", "0.99", "--no-progress"])
    assert out["boxes"] == 0


@pytest.mark.slow
def test_two_stage_detector_then_keypoints(trained_detector, keypoint_checkpoint, tiny_synthetic_detection, tmp_path):
    from tools import infer

    best = os.path.join(trained_detector["run"], "best.pt")
    val_dir = os.path.join(tiny_synthetic_detection["images"], "val")
    out = infer.main(["--det-checkpoint", best, "--checkpoint", keypoint_checkpoint, "--input", val_dir,
                      "--output-dir", str(tmp_path), "--det-score-threshold", "0", "--det-category", "disc,square",
                      "--max-images", "3", "--no-progress", "--no-flip"])
    assert out["box_source"].startswith("detector") and "categories [1, 2]" in out["box_source"]
    assert 0 < out["boxes"] <= 9 and out["instances"] <= out["boxes"]
    results = json.load(open(out["results"]))
    assert len(results) == out["instances"] and all(len(r["keypoints"]) == 51 for r in results)
    assert os.path.isfile(out["detection_results"])
    with pytest.raises(ValueError, match="not one of the detector's classes"):
        infer.main(["--det-checkpoint", best, "--checkpoint", keypoint_checkpoint, "--input", val_dir,
                    "--output-dir", str(tmp_path), "--det-category", "person", "--no-progress"])
    with pytest.raises(ValueError, match="is a 'detection' checkpoint"):
        infer.main(["--checkpoint", best, "--input", val_dir, "--output-dir", str(tmp_path), "--no-progress"])


@pytest.mark.slow
def test_eval_takes_the_detector_threshold_from_det_score_threshold(trained_detector, keypoint_checkpoint,
                                                                    coco_mini_config, tmp_path):
    from tools import eval as eval_tool

    common = ["--config", coco_mini_config, "--checkpoint", keypoint_checkpoint, "--no-progress",
              "--det-checkpoint", os.path.join(trained_detector["run"], "best.pt"), "eval.flip_test=false"]
    every = eval_tool.main([*common, "--output-dir", str(tmp_path / "a")])
    assert "score >= 0.0)" in every["boxes"] and every["boxes_used"] > 0      # AP's default: every box
    none = eval_tool.main([*common, "--output-dir", str(tmp_path / "b"), "--det-score-threshold", "0.99"])
    assert "score >= 0.99)" in none["boxes"] and none["boxes_used"] == 0


@pytest.mark.slow
def test_two_stage_with_a_multi_level_detector(tiny_synthetic_detection, keypoint_checkpoint, coco_mini_config,
                                               tmp_path):
    """--det-checkpoint takes a multi-level detector unchanged: its config in the checkpoint rebuilds the head."""
    from tools import eval as eval_tool
    from tools import infer, train

    t = tiny_synthetic_detection
    cfg = tmp_path / "det.yaml"
    cfg.write_text(f"""task: detection
name: tiny-det-multi
data:
  train: {{ann_file: {t['train']}, image_root: {t['images']}}}
  val: {{ann_file: {t['val']}, image_root: {t['images']}}}
""")
    run = str(tmp_path / "run")
    train.main(["--config", str(cfg), "--run-dir", run, "--no-progress", "train.epochs=1", *TINY_DET,
                "model.head=multi_level", "model.head_strides=[4,8,16]", "model.level_size_bounds=[16,32]"])
    best = os.path.join(run, "best.pt")
    assert "head: multi_level" in open(os.path.join(run, "config.yaml")).read()
    val_dir = os.path.join(t["images"], "val")
    out = infer.main(["--det-checkpoint", best, "--checkpoint", keypoint_checkpoint, "--input", val_dir,
                      "--output-dir", str(tmp_path / "infer"), "--det-score-threshold", "0", "--max-images", "3",
                      "--no-progress", "--no-flip"])
    assert out["box_source"].startswith("detector") and 0 < out["boxes"] <= 9
    results = json.load(open(out["results"]))
    assert len(results) == out["instances"] and all(len(r["keypoints"]) == 51 for r in results)
    report = eval_tool.main(["--config", coco_mini_config, "--checkpoint", keypoint_checkpoint, "--no-progress",
                             "--det-checkpoint", best, "--output-dir", str(tmp_path / "eval"), "eval.flip_test=false"])
    assert report["boxes"].startswith("detector") and report["boxes_used"] > 0


def test_detection_configs_load():
    for head in ("centernet", "ltrb"):
        for data in ("synthetic-det_128x128", "fruits-nuts_320x240", "tiger-box_320x192"):
            cfg = load_config(os.path.join("configs", f"{head}-fpn_resnet18_{data}.yaml"))
            assert cfg.task == "detection" and cfg.data.input_size[0] % 16 == 0 and cfg.data.input_size[1] % 16 == 0
            assert (cfg.model.head == "ltrb") == (head == "ltrb")


# ---------------------------------------------------------------------------------------------- CLI checks
def test_infer_leaves_out_tiny_boxes_and_clips_with_counts(shared_data, keypoint_checkpoint, tmp_path, caplog):
    from tools import infer

    root = os.path.join(shared_data, "coco_mini")
    dets = [d for d in json.load(open(os.path.join(shared_data, DET_FILE))) if d["image_id"] == 785][:2]
    dets += [{"image_id": 785, "bbox": [10, 10, 0.5, 40], "score": 0.9, "category_id": 1},      # under a pixel
             {"image_id": 785, "bbox": [5000, 10, 20, 20], "score": 0.9, "category_id": 1},     # outside the image
             {"image_id": 785, "bbox": [-30, -30, 60, 60], "score": 0.9, "category_id": 1}]     # partly outside
    path = _write(tmp_path / "dets.json", dets)
    with caplog.at_level(logging.INFO):
        out = infer.main(["--checkpoint", keypoint_checkpoint, "--input", os.path.join(root, "000000000785.jpg"),
                          "--boxes", path, "--output-dir", str(tmp_path / "o"), "--no-progress", "--no-flip"])
    assert out["boxes"] == 3 and out["box_stats"]["unusable"] == 1
    assert out["box_stats"]["outside_image"] == 1 and out["box_stats"]["clipped"] == 1
    assert "entry 2 (image 785, bbox [10.0, 10.0, 0.5, 40.0]" in caplog.text
    assert "1 boxes reaching beyond their image were clipped" in caplog.text
    assert len(json.load(open(out["results"]))) == out["instances"] >= 1


def test_infer_with_boxes_needs_every_images_id(shared_data, keypoint_checkpoint, tmp_path):
    from tools import infer

    root = os.path.join(shared_data, "coco_mini")
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(os.path.join(root, "000000000785.jpg"), inputs / "2.jpg")
    shutil.copy(os.path.join(root, "000000040083.jpg"), inputs / "frame.jpg")
    path = _write(tmp_path / "dets.json", [{"image_id": 2, "bbox": [10, 10, 100, 200], "score": 0.9},
                                           {"image_id": 3, "bbox": [50, 50, 100, 200], "score": 0.9}])
    # frame.jpg has no id: it must not borrow one (3 here, or 2) and with it another image's boxes.
    with pytest.raises(ValueError, match=r"frame\.jpg.*--image-info ann\.json"):
        infer.main(["--checkpoint", keypoint_checkpoint, "--input", str(inputs), "--boxes", path,
                    "--output-dir", str(tmp_path / "o"), "--no-progress"])
    # Without --boxes a made-up id is fine, and it is not another input's.
    out = infer.main(["--checkpoint", keypoint_checkpoint, "--input", str(inputs), "--output-dir",
                      str(tmp_path / "w"), "--no-progress", "--no-flip"])
    assert sorted(r["image_id"] for r in json.load(open(out["results"]))) == [2, 3]


def test_boxes_and_det_checkpoint_are_refused(coco_mini_config, tmp_path):
    from tools import eval as eval_tool
    from tools import infer

    with pytest.raises(InputError, match="two sources of boxes"):
        infer.main(["--checkpoint", "k.pt", "--det-checkpoint", "d.pt", "--boxes", "b.json", "--input", "x"])
    with pytest.raises(InputError, match="two sources of boxes"):
        eval_tool.main(["--config", coco_mini_config, "--checkpoint", "k.pt", "--det-checkpoint", "d.pt",
                        "--boxes", "b.json", "--output-dir", str(tmp_path)])
    # Each threshold belongs to one source: given with the other, it would silently do nothing.
    for tool, extra in ((infer, ["--input", "x"]), (eval_tool, ["--config", coco_mini_config])):
        with pytest.raises(InputError, match="--det-score-threshold"):
            tool.main(["--checkpoint", "k.pt", "--det-checkpoint", "d.pt", "--box-score-threshold", "0.5", *extra])
        with pytest.raises(InputError, match="--box-score-threshold"):
            tool.main(["--checkpoint", "k.pt", "--boxes", "b.json", "--det-score-threshold", "0.5", *extra])


def test_boxes_of_several_categories_default_to_the_keypoint_models(shared_data, keypoint_checkpoint,
                                                                     coco_mini_config, tmp_path):
    from tools import eval as eval_tool
    from tools import infer

    root = os.path.join(shared_data, "coco_mini")
    dets = json.load(open(os.path.join(shared_data, DET_FILE)))
    others = [{**d, "category_id": 18} for d in dets[:5]]          # five "dog" boxes on top of the people
    path = _write(tmp_path / "dets.json", dets + others)
    common = ["--checkpoint", keypoint_checkpoint, "--input", root, "--boxes", path, "--image-info",
              os.path.join(root, "test_coco.json"), "--no-progress", "--no-flip", "--max-images", "1"]
    out = infer.main([*common, "--output-dir", str(tmp_path / "a")])
    n_first = sum(d["image_id"] == 785 for d in dets)
    assert "categories [1]" in out["box_source"] and out["boxes"] == n_first
    out = infer.main([*common, "--output-dir", str(tmp_path / "b"), "--det-category", "18"])
    assert "categories [18]" in out["box_source"] and out["boxes"] == sum(d["image_id"] == 785 for d in others)
    with pytest.raises(ValueError, match=r"\[7\] has no entries"):
        infer.main([*common, "--output-dir", str(tmp_path / "c"), "--det-category", "7"])
    report = eval_tool.main(["--config", coco_mini_config, "--checkpoint", keypoint_checkpoint, "--output-dir",
                             str(tmp_path / "e"), "--no-progress", "--boxes", path, "--det-category", "person",
                             "eval.flip_test=false"])
    assert "categories [1]" in report["boxes"] and report["boxes_used"] == len(dets)


def test_keypoints_tight_box_hand_values_and_fallback():
    from models.bbox import keypoints_tight_box

    points = np.array([[[10.0, 20.0], [50.0, 80.0], [30.0, 25.0]],        # spans 40 x 60
                       [[5.0, 5.0], [5.5, 40.0], [5.0, 9.0]],             # 0.5 px wide: degenerate
                       [[np.nan, 1.0], [3.0, 4.0], [9.0, 9.0]]])          # not finite
    fallback = np.array([[0.0, 0.0, 9.0, 9.0]] * 3)
    boxes = keypoints_tight_box(points, fallback)
    # COCO extent [10, 20, 40, 60] -> inclusive xyxy [10, 20, 49, 79] (x2 = x + w - 1).
    np.testing.assert_array_equal(boxes, [[10, 20, 49, 79], [0, 0, 9, 9], [0, 0, 9, 9]])


def test_recrop_passes_crop_again_on_the_predicted_keypoints_box():
    from engine.inference.predictors import TopDownPredictor

    seen = []
    answers = iter([np.array([[[10.0, 20.0, 0.9], [50.0, 80.0, 0.9]]]),
                    np.array([[[12.0, 22.0, 0.9], [48.0, 78.0, 0.9]]]),
                    np.array([[[11.0, 21.0, 0.9], [49.0, 79.0, 0.9]]])])
    predictor = TopDownPredictor(model=None, task=None, input_size=(64, 64), recrop_passes=2)
    predictor.task = type("T", (), {"meta": type("M", (), {"keypoint_names": ["a", "b"]})})()

    def once(images, boxes, flip_test):
        seen.append(boxes[0].copy())
        return [next(answers)]

    predictor._predict_once = once
    out = predictor.predict(np.zeros((100, 100, 3), np.uint8), np.array([[0.0, 0.0, 99.0, 99.0]]))
    np.testing.assert_array_equal(seen[0], [[0, 0, 99, 99]])     # the detector's box
    np.testing.assert_array_equal(seen[1], [[10, 20, 49, 79]])   # the first prediction's tight box
    np.testing.assert_array_equal(seen[2], [[12, 22, 47, 77]])   # the second's
    np.testing.assert_array_equal(out[0, 0], [11, 21, 0.9])      # the last pass is the answer
