"""The multi-level CenterNet head: level assignment by size, per-level targets and decoding, the model, the task.

Tests named ``level_assignment`` pin the ranges (an object of each size lands on the level the bounds say),
the exact round trip on every level, and the batched targets against a per-sample, per-level loop.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bench.bench_detection import centernet_style_targets
from datasets.coco_detection import coco_detection_subset, load_coco_detection
from datasets.detection_transforms import DetectionTransformDataset, collate_detection
from engine.evaluation.evaluator import evaluate_model
from engine.tasks import detection as det_task
from engine.tasks.detection import DetectionMeta, DetectionTask
from engine.tasks.registry import load_config
from models.box_codec import MultiLevelCenterNetCodec, assign_levels, default_size_bounds, logit
from models.detector import MultiLevelCenterNetDetector, build_detector
from models.errors import ConfigError

STRIDES = [4, 8, 16, 32]


def _square(cx, cy, side):
    """A +1 box of ``side`` pixels centred at (cx, cy)."""
    half = (side - 1) / 2
    return [cx - half, cy - half, cx + half, cy + half]


def test_level_assignment_default_bounds_are_eight_strides():
    assert default_size_bounds(STRIDES) == [32.0, 64.0, 128.0]
    assert default_size_bounds([8, 16, 32, 64]) == [64.0, 128.0, 256.0]


def test_level_assignment_puts_each_size_on_the_level_its_range_says():
    # Bounds [32, 64, 128] on max(w, h): [0, 32) -> level 0, [32, 64) -> 1, [64, 128) -> 2, [128, inf) -> 3.
    # Lower bounds are inclusive; a wide, flat box goes by its larger side.
    codec = MultiLevelCenterNetCodec((256, 256), 2, STRIDES)
    sides = [1, 31, 32, 63, 64, 127, 128, 250]
    boxes = [_square(128, 128, s) for s in sides] + [[10, 100, 109, 109]]      # 100 x 10: level 2
    expected = [0, 0, 1, 1, 2, 2, 3, 3, 2]
    boxes = torch.tensor([boxes], dtype=torch.float32)
    assert codec.assign(boxes).tolist() == [expected]
    assert assign_levels(boxes, torch.tensor([16.0, 100.0])).tolist() == [[0, 1, 1, 1, 1, 2, 2, 2, 2]]   # 100 >= 100
    labels = torch.zeros(1, len(expected), dtype=torch.long)
    mask = torch.ones(1, len(expected), dtype=torch.bool)
    targets = codec.encode(boxes, labels, mask)
    for level, t in enumerate(targets):
        on_level = [e == level for e in expected]
        assert t.mask[0].bool().tolist() == on_level
        assert t.heatmap.shape[-2:] == (256 // STRIDES[level],) * 2
        # The objects of a level have their size in that level's cells, and only they raise its heatmap.
        sizes = torch.tensor([[max(s, 1), max(s, 1)] for s in sides] + [[100, 10]], dtype=torch.float32)
        torch.testing.assert_close(t.size[0][t.mask[0] > 0], sizes[torch.tensor(on_level)] / STRIDES[level])
        assert (t.heatmap.amax() == 1.0) == any(on_level)
    # Other bounds from the config move the same boxes.
    codec = MultiLevelCenterNetCodec((256, 256), 2, STRIDES, size_bounds=[40, 80, 200])
    assert codec.assign(boxes).tolist() == [[0, 0, 0, 1, 1, 2, 2, 3, 2]]


def test_level_assignment_rejects_bad_strides_and_bounds():
    with pytest.raises(ValueError, match="double level to level"):
        MultiLevelCenterNetCodec((256, 256), 2, [4, 16])
    with pytest.raises(ValueError, match="increasing positive"):
        MultiLevelCenterNetCodec((256, 256), 2, STRIDES, size_bounds=[64, 32, 128])
    with pytest.raises(ValueError, match="increasing positive"):
        MultiLevelCenterNetCodec((256, 256), 2, STRIDES, size_bounds=[32, 64])
    with pytest.raises(ValueError, match="multiple of the stride 32"):
        MultiLevelCenterNetCodec((240, 256), 2, STRIDES)


def _boxes_on_every_level(rng, batch, codec, per_level=3):
    """Boxes whose sizes fall in each level's range, centres in distinct cells of their level."""
    lows = [1.0, *codec.size_bounds]
    highs = [*codec.size_bounds, 1.5 * codec.size_bounds[-1]]      # the largest may reach past the input
    boxes, labels = [], []
    for _ in range(batch):
        bb, ll, used = [], [], set()
        for level, (lo, hi) in enumerate(zip(lows, highs)):
            c = codec.levels[level]
            mw, mh = c.heatmap_size
            while sum(1 for u in used if u[0] == level) < per_level:
                cell = (level, int(rng.integers(mw)), int(rng.integers(mh)))
                if cell in used:
                    continue
                used.add(cell)
                u, v = cell[1] + rng.uniform(-0.49, 0.49), cell[2] + rng.uniform(-0.49, 0.49)
                cx, cy = (u + 0.5) * c.stride - 0.5, (v + 0.5) * c.stride - 0.5
                side = rng.uniform(lo, hi - 1e-3)
                other = rng.uniform(1, side)
                bw, bh = (side, other) if rng.random() < 0.5 else (other, side)
                bb.append([cx - (bw - 1) / 2, cy - (bh - 1) / 2, cx + (bw - 1) / 2, cy + (bh - 1) / 2])
                ll.append(int(rng.integers(codec.num_classes)))
        boxes.append(bb)
        labels.append(ll)
    return torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels)


@pytest.mark.parametrize("strides", [STRIDES, [8, 16, 32, 64]])
def test_level_assignment_boxes_decode_back_exactly_on_every_level(strides, device):
    codec = MultiLevelCenterNetCodec((256, 192), 3, strides, topk=60)
    boxes, labels = _boxes_on_every_level(np.random.default_rng(0), 2, codec)
    boxes, labels = boxes.to(device), labels.to(device)
    mask = torch.ones_like(labels, dtype=torch.bool)
    assert sorted(set(codec.assign(boxes).flatten().tolist())) == [0, 1, 2, 3]
    targets = codec.encode(boxes, labels, mask)
    assert [int(t.mask.sum()) for t in targets] == [2 * 3] * 4
    dense = [c.dense_maps(t) for c, t in zip(codec.levels, targets)]
    out_boxes, scores, out_labels = codec.decode([t.heatmap for t in targets], [d[0] for d in dense],
                                                 [d[1] for d in dense])
    for b in range(2):
        found = scores[b] > 0.99
        assert int(found.sum()) == boxes.shape[1]
        got = out_boxes[b][found]
        order = torch.cdist(got[:, :2], boxes[b, :, :2]).argmin(1)
        assert sorted(order.tolist()) == list(range(boxes.shape[1]))
        torch.testing.assert_close(got, boxes[b, order], atol=1e-3, rtol=0)
        assert out_labels[b][found].tolist() == labels[b, order].tolist()


def test_level_assignment_batched_targets_equal_a_per_sample_reference():
    # Reference: per image, per object, pick the level by max(w, h) against the bounds in Python, then draw
    # it with CenterNet's per-object numpy loop on that level's map only.
    codec = MultiLevelCenterNetCodec((256, 192), 3, STRIDES, size_bounds=[24, 60, 120])
    rng = np.random.default_rng(3)
    b, n = 4, 14
    wh = np.exp(rng.uniform(np.log(2), np.log(180), (b, n, 2)))          # every level gets objects
    xy = rng.uniform(0, 1, (b, n, 2)) * ([256, 192] - np.minimum(wh, 150))
    boxes = np.concatenate([xy, xy + wh - 1], -1).astype(np.float32)
    labels = rng.integers(0, 3, (b, n))
    mask = rng.random((b, n)) < 0.85
    targets = codec.encode(torch.from_numpy(boxes), torch.from_numpy(labels), torch.from_numpy(mask))
    for level, (c, t) in enumerate(zip(codec.levels, targets)):
        level_mask = np.zeros_like(mask)
        for i in range(b):
            for j in range(n):
                side = max(boxes[i, j, 2] - boxes[i, j, 0] + 1, boxes[i, j, 3] - boxes[i, j, 1] + 1)
                lvl = sum(side >= bound for bound in codec.size_bounds)
                level_mask[i, j] = mask[i, j] and lvl == level
        hm, ind, size, off, m = centernet_style_targets(boxes, labels, level_mask, 3, *c.heatmap_size, c.stride)
        assert m.sum() > 0
        np.testing.assert_allclose(t.heatmap.numpy(), hm, atol=1e-6, rtol=0)
        np.testing.assert_array_equal(t.mask.numpy(), m)
        np.testing.assert_array_equal(t.index.numpy()[m > 0], ind[m > 0])
        np.testing.assert_allclose(t.size.numpy(), size, atol=1e-5)
        np.testing.assert_allclose(t.offset.numpy(), off, atol=1e-5)
    # The same targets when the windows are sized on the host (as the task does, before the boxes move to the
    # device); each level's window fits its own objects, not the largest object of the batch.
    radii = codec.window_radii(torch.from_numpy(boxes), torch.from_numpy(mask))
    single = codec.levels[0].window_radius(torch.from_numpy(boxes), torch.from_numpy(mask))   # all on stride 4
    assert len(radii) == 4 and max(radii) <= 2 < single
    hosted = codec.encode(torch.from_numpy(boxes), torch.from_numpy(labels), torch.from_numpy(mask), radii)
    for t, u in zip(targets, hosted):
        torch.testing.assert_close(t.heatmap, u.heatmap)
        torch.testing.assert_close(t.mask, u.mask)
    with pytest.raises(ValueError, match="window_radii has 2 values for 4 levels"):
        codec.encode(torch.from_numpy(boxes), torch.from_numpy(labels), torch.from_numpy(mask), [1, 2])


# ---------------------------------------------------------------------------------------------- model
def test_multi_level_detector_outputs_one_map_per_stride_with_extra_levels():
    torch.manual_seed(0)
    model = build_detector(3, out_indices=(2, 3, 4), fpn_channels=16, head_channels=16, strides=[8, 16, 32, 64])
    assert isinstance(model, MultiLevelCenterNetDetector) and model.neck.strides == [8, 16, 32]
    assert len(model.extra_levels) == 1 and model.max_stride == 64 and model.num_classes == 3
    out = model(torch.zeros(2, 3, 128, 192, dtype=torch.uint8))
    assert [tuple(h.shape) for h in out["heatmap"]] == [(2, 3, 128 // s, 192 // s) for s in (8, 16, 32, 64)]
    assert [tuple(s.shape) for s in out["size"]] == [(2, 2, 128 // s, 192 // s) for s in (8, 16, 32, 64)]
    # One head shared by every level: the prior holds on each.
    for h in out["heatmap"]:
        torch.testing.assert_close(torch.sigmoid(h).mean(), torch.tensor(0.1), atol=0.02, rtol=0)
    with pytest.raises(ValueError, match="finest head stride"):
        build_detector(3, out_indices=(1, 2, 3), strides=[8, 16, 32, 64])
    # One head per level instead: the same outputs, four heads' parameters.
    own = build_detector(3, out_indices=(2, 3, 4), fpn_channels=16, head_channels=16, strides=[8, 16, 32, 64],
                         shared_head=False)
    assert isinstance(own.head, nn.ModuleList) and len(own.head) == 4 and own.num_classes == 3
    shared_params = sum(p.numel() for p in model.head.parameters())
    assert sum(p.numel() for p in own.head.parameters()) == 4 * shared_params
    out = own(torch.zeros(1, 3, 128, 192, dtype=torch.uint8))
    assert [tuple(h.shape) for h in out["offset"]] == [(1, 2, 128 // s, 192 // s) for s in (8, 16, 32, 64)]


def _cfg(*overrides):
    return load_config("configs/centernet-fpn_resnet18_synthetic-det_128x128.yaml", list(overrides))


def test_multi_level_config_builds_the_head_and_codec_and_names_bad_keys():
    cfg = _cfg("model.head=multi_level", "model.out_indices=[1,2,3,4]", "model.fpn_channels=16",
               "model.head_channels=16", "model.head_strides=[4,8,16,32]", "model.level_size_bounds=[16,32,64]")
    codec = det_task.build_codec(cfg, 4)
    assert isinstance(codec, MultiLevelCenterNetCodec) and codec.size_bounds == [16.0, 32.0, 64.0]
    assert isinstance(det_task.build_model(cfg, 4, pretrained=False), MultiLevelCenterNetDetector)
    per_level = det_task.build_model(_cfg("model.head=multi_level", "model.shared_head=false"), 4, pretrained=False)
    assert isinstance(per_level.head, nn.ModuleList) and len(per_level.head) == 4
    with pytest.raises(ConfigError, match="model.head='pyramid'"):
        det_task.build_codec(_cfg("model.head=pyramid"), 4)
    with pytest.raises(ConfigError, match="model.head_strides"):
        det_task.build_codec(_cfg("model.head=multi_level", "model.head_strides=[4,16]"), 4)
    with pytest.raises(ConfigError, match="multiple of the head's coarsest stride 32"):
        det_task.build_model(_cfg("model.head=multi_level", "data.input_size=[144,144]"), 4)
    with pytest.raises(ConfigError, match="model.out_indices=.*finest head stride"):
        det_task.build_model(_cfg("model.head=multi_level", "model.head_strides=[8,16,32,64]"), 4)
    with pytest.raises(ConfigError, match="model.level_size_bounds"):
        det_task.build_codec(_cfg("model.head=multi_level", "model.level_size_bounds=[8]"), 4)


# ---------------------------------------------------------------------------------------------- task
class OracleDetector(nn.Module):
    """Returns the perfect per-level maps of the boxes of each batch it is shown, in loader order."""

    def __init__(self, outputs):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.outputs = outputs

    def forward(self, images):
        return self.outputs.pop(0)


def test_multi_level_oracle_scores_ap_one_on_synthetic(tiny_synthetic_detection):
    t = tiny_synthetic_detection
    data = load_coco_detection(t["val"], t["images"])
    loader = torch.utils.data.DataLoader(DetectionTransformDataset(data.images, (128, 128)), batch_size=4,
                                         collate_fn=collate_detection)
    # Small bounds so that the synthetic shapes (6-60 px) spread over every level.
    codec = MultiLevelCenterNetCodec((128, 128), data.num_classes, STRIDES, size_bounds=[12, 24, 40])
    outputs, used = [], set()
    for batch in loader:
        targets = codec.encode(batch["boxes"], batch["labels"], batch["mask"])
        used |= {i for i, tg in enumerate(targets) if tg.mask.sum() > 0}
        dense = [c.dense_maps(tg) for c, tg in zip(codec.levels, targets)]
        outputs.append({"heatmap": [logit(tg.heatmap) for tg in targets], "size": [d[0] for d in dense],
                        "offset": [d[1] for d in dense]})
    assert used == {0, 1, 2, 3}
    gt = coco_detection_subset(t["val"], data.image_ids, data.category_ids)
    task = DetectionTask(codec, DetectionMeta(data.class_names, data.category_ids), gt, progress=False)
    metrics, evaluator = evaluate_model(task, OracleDetector(outputs), loader)
    results = evaluator.results
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP75"] == pytest.approx(1.0)
    assert len(results) == data.num_objects


def test_multi_level_a_few_steps_lower_the_loss(tiny_synthetic_detection):
    torch.manual_seed(0)
    t = tiny_synthetic_detection
    data = load_coco_detection(t["train"], t["images"])
    dataset = DetectionTransformDataset(data.images[:8], (64, 64))
    batch = collate_detection([dataset[i] for i in range(8)])
    codec = MultiLevelCenterNetCodec((64, 64), 4, [4, 8, 16], size_bounds=[12, 24])
    meta = DetectionMeta([f"c{i}" for i in range(4)], [1, 2, 3, 4])
    task = DetectionTask(codec, meta, giou_weight=1.0, progress=False)
    model = build_detector(4, out_indices=(1, 2, 3), fpn_channels=16, head_channels=16, strides=[4, 8, 16])
    assert sum(int(tg.mask.sum() > 0) for tg in codec.encode(batch["boxes"], batch["labels"], batch["mask"])) >= 2
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        out = task.training_step(model, batch)
        assert set(out) >= {"loss", "loss_heatmap", "loss_size", "loss_offset", "loss_giou"}
        assert out["num_objects"] == batch["mask"].sum()
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0], losses
    model.eval()
    det = task.predict_batch(model, {"image": batch["image"][:2], "input_to_image":
                                     torch.eye(2, 3).expand(2, 2, 3), "image_size": torch.tensor([[64, 64]] * 2)})
    assert len(det) == 2 and all(d["boxes"].shape[1] == 4 for d in det)


def test_level_assignment_of_the_tiger_config_on_its_real_boxes(shared_data):
    # The tiger config's claim: at 320 x 192 every val tiger (one per frame) is on the stride-32 level.
    import os

    cfg = load_config("configs/centernet-fpn_resnet18_tiger-box_320x192.yaml")
    root = os.path.join(shared_data, "tiger_pose")
    data = load_coco_detection(os.path.join(root, "val.json"), os.path.join(root, "images"))
    assert len(data.images) == 53 and data.num_objects == 53 and data.num_classes == 1
    codec = det_task.build_codec(cfg, data.num_classes)
    assert codec.strides == [8, 16, 32, 64] and codec.size_bounds == [64.0, 128.0, 256.0]
    batch = collate_detection([DetectionTransformDataset(data.images, cfg.data.input_size)[i] for i in range(53)])
    assert codec.assign(batch["boxes"])[batch["mask"]].unique().tolist() == [2]
    targets = codec.encode(batch["boxes"], batch["labels"], batch["mask"])
    assert [int(t.mask.sum()) for t in targets] == [0, 0, 53, 0]
    model = det_task.build_model(cfg, 1, pretrained=False)
    assert isinstance(model, MultiLevelCenterNetDetector) and model.neck.strides == [8, 16, 32]
