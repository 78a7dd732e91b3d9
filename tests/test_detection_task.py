"""The detection task end to end with an oracle, a few real training steps, and empty images.

An oracle that returns the codec's targets of the true input boxes must put every box back at its image
position and score bbox AP = 1.0 through pycocotools: this pins the letterbox geometry, the codec, the
inverse mapping through box edges, NMS and the COCO conversion together, without any training.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from datasets.coco_detection import coco_detection_subset, load_coco_detection
from datasets.detection_transforms import DetectionTransformDataset, collate_detection
from datasets.image_io import read_image_rgb
from engine.evaluation.evaluator import evaluate_model
from engine.inference.predictors import DetectionPredictor
from engine.tasks.detection import DetectionMeta, DetectionTask
from models.bbox import box_iou
from models.box_codec import CenterNetCodec, logit
from models.detector import build_detector


class OracleDetector(nn.Module):
    """Returns the perfect maps of the boxes of each batch it is shown, in loader order."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.outputs: list[dict] = []

    def forward(self, images):
        return self.outputs.pop(0)


def _oracle_setup(ann_file, image_root, input_size, batch_size=4):
    data = load_coco_detection(ann_file, image_root)
    dataset = DetectionTransformDataset(data.images, input_size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_detection)
    codec = CenterNetCodec(input_size, data.num_classes)
    model = OracleDetector()
    for batch in loader:
        t = codec.encode(batch["boxes"], batch["labels"], batch["mask"])
        size, offset = codec.dense_maps(t)
        model.outputs.append({"heatmap": logit(t.heatmap), "size": size, "offset": offset})
    meta = DetectionMeta(data.class_names, data.category_ids)
    gt = coco_detection_subset(ann_file, data.image_ids, data.category_ids)
    return data, loader, codec, model, DetectionTask(codec, meta, gt, progress=False)


def _check_oracle(data, loader, model, task):
    metrics, evaluator = evaluate_model(task, model, loader)
    results = evaluator.results
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP75"] == pytest.approx(1.0)
    assert len(results) == data.num_objects
    # Every box comes back at its image position (inclusive xyxy, +1 widths) with its category.
    by_image = {im.image_id: im for im in data.images}
    for r in results:
        im = by_image[r["image_id"]]
        x, y, w, h = r["bbox"]
        box = np.array([[x, y, x + w - 1, y + h - 1]])
        best = int(box_iou(box, im.boxes).argmax())
        np.testing.assert_allclose(box[0], im.boxes[best], atol=0.02)
        assert data.category_ids[im.labels[best]] == r["category_id"]
    return metrics


def test_oracle_scores_ap_one_on_synthetic(tiny_synthetic_detection):
    t = tiny_synthetic_detection
    data, loader, _, model, task = _oracle_setup(t["val"], t["images"], (128, 128))
    metrics = _check_oracle(data, loader, model, task)
    assert metrics["APs"] == pytest.approx(1.0)          # small objects are there and recovered


def test_oracle_scores_ap_one_on_fruits_nuts(shared_data):
    root = os.path.join(shared_data, "fruits_nuts")
    data, loader, _, model, task = _oracle_setup(os.path.join(root, "trainval.json"), os.path.join(root, "images"),
                                                 (320, 240))
    _check_oracle(data, loader, model, task)


# ---------------------------------------------------------------------------------------------- training
def _tiny_task(num_classes=4, input_size=(64, 64), giou=0.0):
    codec = CenterNetCodec(input_size, num_classes)
    meta = DetectionMeta([f"c{i}" for i in range(num_classes)], list(range(1, num_classes + 1)))
    return DetectionTask(codec, meta, giou_weight=giou, progress=False)


def _tiny_model(num_classes=4):
    return build_detector(num_classes, out_indices=(1, 2, 3), fpn_channels=16, head_channels=16)


def test_a_few_steps_lower_the_loss(tiny_synthetic_detection):
    torch.manual_seed(0)
    t = tiny_synthetic_detection
    data = load_coco_detection(t["train"], t["images"])
    dataset = DetectionTransformDataset(data.images[:8], (64, 64))
    batch = collate_detection([dataset[i] for i in range(8)])
    model, task = _tiny_model(), _tiny_task(giou=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        out = task.training_step(model, batch)
        assert set(out) >= {"loss", "loss_heatmap", "loss_size", "loss_offset", "loss_giou"}
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0], losses


def test_images_without_objects_train_and_infer():
    torch.manual_seed(0)
    model, task = _tiny_model(), _tiny_task(giou=1.0)
    batch = {"image": torch.zeros(2, 3, 64, 64, dtype=torch.uint8), "boxes": torch.zeros(2, 1, 4),
             "labels": torch.zeros(2, 1, dtype=torch.long), "mask": torch.zeros(2, 1, dtype=torch.bool),
             "image_id": torch.tensor([1, 2])}
    out = task.training_step(model, batch)
    assert torch.isfinite(out["loss"]) and out["loss_size"] == 0 and out["num_objects"] == 0
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    task.score_threshold = 0.5                 # the untrained head sits at its prior 0.1: nothing passes
    dets = DetectionPredictor(model, task, (64, 64)).predict(np.zeros((40, 50, 3), np.uint8))
    assert dets["boxes"].shape == (0, 4) and len(dets["scores"]) == 0
    assert task.to_coco_results([{"image_id": 1, **dets}]) == []


def test_predictor_equals_the_evaluation_path(tiny_synthetic_detection):
    """DetectionPredictor (tools.infer) and the val loader (tools.eval) give the same boxes for an image."""
    torch.manual_seed(0)
    t = tiny_synthetic_detection
    data = load_coco_detection(t["val"], t["images"])
    model, task = _tiny_model().eval(), _tiny_task()
    task.score_threshold = 0.0
    loader = torch.utils.data.DataLoader(DetectionTransformDataset(data.images[:3], (64, 64)), batch_size=3,
                                         collate_fn=collate_detection)
    records = task.predict(model, loader)
    predictor = DetectionPredictor(model, task, (64, 64))
    for rec, im in zip(records, data.images[:3]):
        direct = predictor.predict(read_image_rgb(im.image_path))
        np.testing.assert_allclose(direct["boxes"], rec["boxes"], atol=1e-4)
        np.testing.assert_allclose(direct["scores"], rec["scores"], atol=1e-6)


def test_predict_batch_drops_non_finite_boxes():
    """Every box the detector hands on (DetectionPredictor, the two-stage pipeline) can be cropped."""
    codec = CenterNetCodec((64, 64), 1)
    task = DetectionTask(codec, DetectionMeta(["c0"], [1]), nms=False, progress=False)
    heat = torch.full((1, 1, 16, 16), -10.0)
    heat[0, 0, 4, 4] = heat[0, 0, 10, 10] = 5.0
    size = torch.full((1, 2, 16, 16), 3.0)
    size[0, :, 10, 10] = float("nan")
    model = OracleDetector()
    model.outputs.append({"heatmap": heat, "size": size, "offset": torch.zeros(1, 2, 16, 16)})
    batch = {"image": torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "input_to_image": torch.eye(2, 3)[None],
             "image_size": torch.tensor([[64, 64]])}
    det = task.predict_batch(model, batch)[0]
    assert det["boxes"].shape == (1, 4) and np.isfinite(det["boxes"]).all()
    np.testing.assert_allclose(det["boxes"][0], [12, 12, 23, 23])     # cell 4: centre 17.5, 12 pixels wide


def test_training_step_logs_boxes_over_max_objects(tiny_synthetic_detection, caplog):
    t = tiny_synthetic_detection
    data = load_coco_detection(t["train"], t["images"])
    images = sorted(data.images, key=lambda im: -len(im.boxes))[:2]
    dataset = DetectionTransformDataset(images, (64, 64))
    samples = [dataset[i] for i in range(2)]
    batch = collate_detection(samples, max_objects=1)
    expected = sum(len(s["boxes"]) - 1 for s in samples)
    assert expected > 0 and batch["truncated"] == expected
    torch.manual_seed(0)
    model, task = _tiny_model(), _tiny_task()
    out = task.training_step(model, batch)
    # A CPU scalar like boxes_dropped: the trainer reads it only every log_interval steps, no device sync.
    assert out["boxes_over_max_objects"].ndim == 0 and out["boxes_over_max_objects"].device.type == "cpu"
    assert float(out["boxes_over_max_objects"]) == expected
    assert "data.max_objects" in caplog.text
    caplog.clear()
    task.training_step(model, batch)
    assert "data.max_objects" not in caplog.text          # warned once, then only logged
    assert float(task.training_step(model, collate_detection(samples))["boxes_over_max_objects"]) == 0


def test_validation_is_sharded_over_ranks_and_gathered(tiny_synthetic_detection, monkeypatch):
    """Under DDP each rank evaluates its share of the val set (no image twice) and the predictions of all ranks
    are gathered before COCOeval: the oracle's shares together score AP 1.0 over the whole set, one share alone
    does not."""
    import engine.tasks.detection as det
    import engine.tasks.detection.evaluator as det_evaluator

    t = tiny_synthetic_detection
    ann_file, image_root, input_size = t["val"], t["images"], (128, 128)
    data = load_coco_detection(ann_file, image_root)
    dataset = DetectionTransformDataset(data.images, input_size)
    codec = CenterNetCodec(input_size, data.num_classes)
    task = DetectionTask(codec, DetectionMeta(data.class_names, data.category_ids),
                         coco_detection_subset(ann_file, data.image_ids, data.category_ids), progress=False)

    def shard(rank):
        loader = det.make_loader(dataset, batch_size=3, shuffle=False, seed=0, num_workers=0, rank=rank, world_size=2,
                                 pad=False)
        model = OracleDetector()
        for batch in loader:
            t = codec.encode(batch["boxes"], batch["labels"], batch["mask"])
            size, offset = codec.dense_maps(t)
            model.outputs.append({"heatmap": logit(t.heatmap), "size": size, "offset": offset})
        return loader, model

    (loader0, model0), (loader1, model1) = shard(0), shard(1)
    ids0 = [int(i) for b in loader0 for i in b["image_id"]]
    ids1 = [int(i) for b in loader1 for i in b["image_id"]]
    assert not set(ids0) & set(ids1) and sorted(ids0 + ids1) == sorted(data.image_ids)
    other_rank = task.predict(model1, loader1)
    monkeypatch.setattr(det_evaluator, "all_gather_list", lambda records: records + other_rank)
    metrics, evaluator = evaluate_model(task, model0, loader0)
    results = evaluator.results
    assert metrics["AP"] == pytest.approx(1.0) and len(results) == data.num_objects

    monkeypatch.setattr(det_evaluator, "all_gather_list", lambda records: records)     # rank 0's share alone
    alone, _ = evaluate_model(task, shard(0)[1], loader0)
    assert alone["AR100"] < 0.75
