"""The scores do not move: fixed predictions scored by the evaluators give the numbers the scoring code gave
before the evaluator contract existed.

The expected numbers were computed by the previous code on the same records (``KeypointTask.evaluate``'s
COCO + PCK + NME + face report on ground-truth boxes, ``tools.eval``'s scoring on detected boxes,
``DetectionTask.evaluate`` for boxes). The ground truth and predictions are generated here from numpy's seeded
generator (the same on every machine), so any change in how a metric is computed, which records enter it or
how they are paired fails this test.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from engine.evaluation.face_metrics import FaceReportConfig, build_face_report
from engine.tasks.detection import DetectionEvaluator, DetectionMeta, DetectionTask
from engine.tasks.keypoints import KeypointMeta, KeypointTask
from models.box_codec import CenterNetCodec
from models.heatmap_codec import HeatmapCodec

K = 68


def make_ground_truth(seed=0, num_images=6):
    """A COCO keypoint ground truth of 68-point faces (1-3 per image, ~10 % of points unlabelled) and its
    instances (``bbox`` inclusive xyxy, ``keypoints`` [K, 3])."""
    rng = np.random.default_rng(seed)
    images, annotations, instances = [], [], []
    template = rng.uniform(0, 1, (K, 2))
    ann_id = 1
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 320, "height": 240})
        for _ in range(int(rng.integers(1, 4))):
            size = rng.uniform(40, 110)
            origin = rng.uniform(0, [320 - size, 240 - size])
            xy = origin + template * size + rng.normal(0, 1.5, (K, 2))
            v = np.where(rng.uniform(size=K) < 0.9, 2, 0)
            xy[v == 0] = 0
            labelled = xy[v > 0]
            x1, y1 = labelled.min(0)
            x2, y2 = labelled.max(0)
            bbox = [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]
            kp = np.concatenate([xy, v[:, None]], 1)
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": bbox,
                                "area": bbox[2] * bbox[3], "iscrowd": 0, "num_keypoints": int((v > 0).sum()),
                                "keypoints": [round(float(t), 2) for t in kp.reshape(-1)]})
            instances.append({"index": len(instances), "image_id": image_id, "ann_id": ann_id,
                              "bbox": np.array([x1, y1, x1 + bbox[2] - 1, y1 + bbox[3] - 1]),
                              "keypoints": np.array(annotations[-1]["keypoints"]).reshape(K, 3)})
            ann_id += 1
    cats = [{"id": 1, "name": "face", "keypoints": [f"p{i}" for i in range(K)], "skeleton": []}]
    return {"images": images, "annotations": annotations, "categories": cats}, instances


def make_records(instances, seed=1, jitter_boxes=False):
    """Pose records of the instances with noise of 0.5, 2 or 6 px; with ``jitter_boxes`` as from a detector:
    jittered boxes, ~15 % of faces missed and one false positive."""
    rng = np.random.default_rng(seed)
    out = []
    for inst in instances:
        if jitter_boxes and rng.uniform() < 0.15:
            continue                        # a face the detector missed
        scale = rng.choice([0.5, 2.0, 6.0])
        kp = inst["keypoints"][:, :2] + rng.normal(0, scale, (K, 2))
        bbox = inst["bbox"] + (rng.normal(0, 3, 4) if jitter_boxes else 0)
        rec = {"image_id": inst["image_id"], "bbox": bbox, "box_score": float(rng.uniform(0.3, 1.0)),
               "keypoints": kp, "scores": rng.uniform(0, 1, K)}
        if not jitter_boxes:
            rec.update(ann_id=inst["ann_id"], index=inst["index"])
        out.append(rec)
    if jitter_boxes:                        # and a false positive
        out.append({"image_id": 1, "bbox": np.array([200.0, 10, 260, 70]), "box_score": 0.9,
                    "keypoints": rng.uniform(200, 260, (K, 2)), "scores": rng.uniform(0, 1, K)})
    return out


def make_detections(gt, seed=2):
    """Per-image detection records of the ground-truth boxes jittered by 4 px, with random scores."""
    rng = np.random.default_rng(seed)
    recs = {}
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        box = np.array([x, y, x + w - 1, y + h - 1]) + rng.normal(0, 4, 4)
        r = recs.setdefault(a["image_id"], {"image_id": a["image_id"], "boxes": [], "scores": [], "category_ids": []})
        r["boxes"].append(box)
        r["scores"].append(rng.uniform(0.2, 1))
        r["category_ids"].append(1)
    out = []
    for r in recs.values():
        out.append({"image_id": r["image_id"], "boxes": np.array(r["boxes"]), "scores": np.array(r["scores"]),
                    "category_ids": np.array(r["category_ids"])})
    return out


# Computed by the scoring code of commit b5dd20f on the records above.
BEFORE_GROUND_TRUTH_BOXES = {
    "AP": 0.7411094186341712, "AP50": 1.0, "AP75": 0.6894389438943895, "APm": 0.7306930693069307,
    "APl": 0.8566713814238567, "AR": 0.8153846153846155, "AR50": 1.0, "AR75": 0.7692307692307693,
    "ARm": 0.7333333333333333, "ARl": 1.0, "PCK@0.05": 0.7739463601532567, "PCK@0.1": 0.8978288633461047,
    "PCK@0.2": 0.9910600255427842, "NME": 0.065526979462885, "FR@0.08": 0.25, "FR@0.1": 0.16666666666666666,
    "AUC@0.08": 0.4650781060163423, "AUC@0.1": 0.5284574327153763, "NME/jaw": 0.0639810268847016,
    "NME/brows": 0.062116936653468846, "NME/nose": 0.06666498223833127, "NME/eyes": 0.0686442784267303,
    "NME/mouth": 0.06571704256095003, "faces": 13.0
}
BEFORE_DETECTED_BOXES = {
    "AP": 0.5095483174691096, "AP50": 0.6262164678006261, "AP75": 0.47571900047147575, "APm": 0.4315935879302215,
    "APl": 0.7995049504950495, "AR": 0.6538461538461539, "AR50": 0.7692307692307693, "AR75": 0.6153846153846154,
    "ARm": 0.5, "ARl": 1.0, "NME": 0.10951764105858071, "FR@0.08": 0.38461538461538464,
    "FR@0.1": 0.38461538461538464, "AUC@0.08": 0.3516061092596256, "AUC@0.1": 0.4043618104846236,
    "NME/jaw": 0.10859747829712535, "NME/brows": 0.10486498659937997, "NME/nose": 0.1066903979964295,
    "NME/eyes": 0.0953983763754162, "NME/mouth": 0.12308986116944999, "faces": 13.0, "faces_missed": 1.0
}
BEFORE_DETECTION = {
    "AP": 0.6794778378936794, "AP50": 0.9146991622239147, "AP75": 0.8230976943848229, "APs": -1.0,
    "APm": 0.6415841584158416, "APl": 0.8752475247524752, "AR1": 0.35384615384615387, "AR10": 0.7230769230769231,
    "AR100": 0.7230769230769231, "ARs": -1.0, "ARm": 0.6555555555555554, "ARl": 0.875,
    "detections_per_image": 2.1666666666666665
}


def _keypoint_task(gt):
    meta = KeypointMeta([f"p{i}" for i in range(K)], [], list(range(K)), [0.05] * K, 1, (36, 45))
    face = build_face_report(FaceReportConfig(), K, meta.nme_pair)
    return KeypointTask(HeatmapCodec((64, 64), (16, 16)), meta, val_gt=gt, face=face, progress=False)


# Metrics added to the report after the recording: new numbers beside the old, which must not move.
ADDED_SINCE = {"offset/x", "offset/y"}


def _same(got: dict, want: dict) -> None:
    assert set(got) - ADDED_SINCE == set(want), sorted((set(got) - ADDED_SINCE) ^ set(want))
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_keypoint_scores_on_ground_truth_boxes_are_unchanged():
    gt, instances = make_ground_truth()
    task = _keypoint_task(gt)
    records = make_records(instances)
    for r in records:       # as KeypointTask.predict_batches gives them: the instance each crop came from
        r["truth"], r["truth_bbox"] = instances[r["index"]]["keypoints"], instances[r["index"]]["bbox"]
    evaluator = task.evaluator()
    evaluator.process(records[:5])
    evaluator.process(records[5:])
    _same(evaluator.evaluate(), BEFORE_GROUND_TRUTH_BOXES)
    assert len(evaluator.results) == len(records) and evaluator.describe()["boxes"] == "ground truth"


def test_keypoint_scores_on_detected_boxes_are_unchanged():
    gt, instances = make_ground_truth()
    task = _keypoint_task(gt)
    truth = [types.SimpleNamespace(**i) for i in instances]
    evaluator = task.evaluator(boxes="detections from a file", instances=truth,
                               image_ids=[im["id"] for im in gt["images"]])
    evaluator.process(make_records(instances, jitter_boxes=True))
    _same(evaluator.evaluate(), BEFORE_DETECTED_BOXES)
    # A second round after reset scores the same: nothing of the first is kept.
    evaluator.reset()
    evaluator.process(make_records(instances, jitter_boxes=True))
    _same(evaluator.evaluate(), BEFORE_DETECTED_BOXES)


def test_detection_scores_are_unchanged():
    gt, _ = make_ground_truth()
    meta = DetectionMeta(["face"], [1])
    task = DetectionTask(CenterNetCodec((64, 64), 1), meta, val_gt=gt, progress=False)
    evaluator = task.evaluator()
    assert isinstance(evaluator, DetectionEvaluator)
    evaluator.process(make_detections(gt))
    _same(evaluator.evaluate(), BEFORE_DETECTION)
