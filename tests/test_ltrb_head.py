"""The ltrb head (``model.head: ltrb``): distances to the box edges as distributions (DFL), centre sampling and the
task-aligned assigner, the quality-aware class target (QFL / VFL), decoding, the task, training and ONNX.

Every reference is worked by hand (the numbers are in the comments) or is a plain per-object loop; a wrong
cell-centre convention, a wrong ``+1`` or a batched gather that mixes objects fails them.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from datasets.coco_detection import coco_detection_subset, load_coco_detection
from datasets.detection_transforms import DetectionTransformDataset, collate_detection
from engine.evaluation.evaluator import evaluate_model
from engine.tasks import detection as det_task
from engine.tasks.detection import DetectionMeta, DetectionTask
from engine.tasks.registry import load_config
from models.assigners import centre_sampling_assign, task_aligned_assign
from models.bbox import box_iou
from models.detector import LtrbDetector, MultiLevelCenterNetDetector, build_detector
from models.errors import ConfigError
from models.losses import distribution_focal_loss, quality_focal_loss, varifocal_loss
from models.ltrb import LtrbCodec, LtrbLoss


def _one_hot_logits(bins: list[int], reg_max: int) -> torch.Tensor:
    """Side logits [4, R + 1] whose softmax is exactly one-hot at ``bins`` (exp(-1e4) is 0 in float32)."""
    logits = torch.full((4, reg_max + 1), -1e4)
    logits[torch.arange(4), torch.tensor(bins)] = 0.0
    return logits


# ---------------------------------------------------------------------------------------------- DFL
def test_dfl_loss_on_a_hand_computed_two_bin_target():
    # R = 4, logits [0, 1, 2, 0, 0], target 1.25: bins 1 and 2 with weights 0.75 and 0.25, so the loss is
    # 0.75 (lse - 1) + 0.25 (lse - 2) with lse = log(1 + e + e^2 + 1 + 1) = 2.57317...
    logits = torch.tensor([0.0, 1.0, 2.0, 0.0, 0.0])
    lse = math.log(3 + math.e + math.e ** 2)
    expected = 0.75 * (lse - 1) + 0.25 * (lse - 2)
    assert expected == pytest.approx(1.32317, abs=1e-5)
    assert float(distribution_focal_loss(logits, torch.tensor(1.25))) == pytest.approx(expected, abs=1e-6)
    # An integer target uses one bin: 3.0 -> lse - logit_3 = lse.
    assert float(distribution_focal_loss(logits, torch.tensor(3.0))) == pytest.approx(lse, abs=1e-6)
    # Smallest at the two-bin distribution itself: the loss is its entropy, the gradient zero, the mean 1.25.
    at_target = torch.log(torch.tensor([1e-12, 0.75, 0.25, 1e-12, 1e-12])).requires_grad_()
    loss = distribution_focal_loss(at_target, torch.tensor(1.25))
    loss.backward()
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert float(loss.detach()) == pytest.approx(entropy, abs=1e-6)
    assert at_target.grad.abs().max() < 1e-6
    codec = LtrbCodec((32, 32), 1, [8], reg_max=4)
    assert float(codec.expected_distances(at_target.detach().expand(4, 5))[0]) == pytest.approx(1.25, abs=1e-6)


def test_dfl_decode_of_a_one_hot_distribution_gives_the_exact_distance():
    codec = LtrbCodec((32, 32), 1, [8], reg_max=16)
    for bins in ([0, 1, 2, 3], [16, 15, 7, 0]):
        dist = codec.expected_distances(_one_hot_logits(bins, 16))
        assert torch.equal(dist, torch.tensor(bins, dtype=torch.float32))


def test_ltrb_box_convention_on_a_hand_made_box():
    # Stride 8, cell (u, v) = (2, 1): centre ((2 + 0.5) 8 - 0.5, (1 + 0.5) 8 - 0.5) = (19.5, 11.5).
    # Distances (l, t, r, b) = (1, 2, 3, 0) strides = (8, 16, 24, 0) px reach the pixel edges:
    # x1 = 19.5 - 8 + 0.5 = 12, y1 = 11.5 - 16 + 0.5 = -4, x2 = 19.5 + 24 - 0.5 = 43, y2 = 11.5 + 0 - 0.5 = 11;
    # +1 width 43 - 12 + 1 = 32 = (1 + 3) x 8 and height 11 + 4 + 1 = 16 = (2 + 0) x 8.
    codec = LtrbCodec((48, 32), 1, [8], reg_max=16)
    centres, strides, levels = codec.points()
    point = 1 * 6 + 2
    assert centres[point].tolist() == [19.5, 11.5] and strides[point] == 8 and levels[point] == 0
    cls = torch.full((1, 1, 4, 6), -10.0)
    cls[0, 0, 1, 2] = 10.0
    reg = torch.full((1, 4, 17, 4, 6), -1e4)
    reg[0, :, :, 1, 2] = _one_hot_logits([1, 2, 3, 0], 16)
    boxes, scores, labels = codec.decode([cls], [reg.reshape(1, 68, 4, 6)], topk=1)
    assert boxes[0, 0].tolist() == [12.0, -4.0, 43.0, 11.0] and labels[0, 0] == 0
    back = codec.boxes_to_distances(torch.tensor([12.0, -4.0, 43.0, 11.0]), centres[point])
    assert back.tolist() == [8.0, 16.0, 24.0, 0.0]


@pytest.mark.parametrize("reg_max", [16, 0], ids=["distribution", "direct"])
def test_ltrb_box_round_trip_encode_decode_to_1e4_px(reg_max, device):
    # Boxes of every level's size range: the distances of each positive cell (centre sampling) turned into
    # logits (two-bin distributions, or the softplus inverse) decode back to the same inclusive box.
    codec = LtrbCodec((256, 192), 3, [4, 8, 16, 32], reg_max=reg_max)
    rng = np.random.default_rng(0)
    boxes = []
    for level, s in enumerate(codec.strides):
        lo = 2.0 * s if level == 0 else codec.size_bounds[level - 1]
        hi = codec.size_bounds[level] if level < 3 else 160.0
        for _ in range(3):
            side = rng.uniform(lo, hi - 1e-3)           # the larger side picks the level
            other = rng.uniform(2 * s, side)             # >= 2 strides: the own cell lies inside the box
            w, h = (side, other) if rng.random() < 0.5 else (other, side)
            x, y = rng.uniform(0, 256 - w), rng.uniform(0, 192 - h)
            boxes.append([x, y, x + w - 1, y + h - 1])
    boxes = torch.tensor([boxes], dtype=torch.float32, device=device)
    labels = torch.from_numpy(rng.integers(0, 3, (1, boxes.shape[1]))).to(device)
    mask = torch.ones(1, boxes.shape[1], dtype=torch.bool, device=device)
    loss = LtrbLoss(codec, assigner="centre", centre_radius=2.5)
    assignment, valid = loss.assign(None, None, boxes, labels, mask)
    assert valid.all() and set(codec.object_cells(boxes, mask)[1][0].tolist()) == {0, 1, 2, 3}
    assert assignment.positive.device == boxes.device
    out = codec.perfect_outputs(assignment, boxes, labels)
    _, flat_reg = codec.flatten(out["cls"], out["reg"])
    decoded = codec.predicted_boxes(flat_reg)[0]
    pos = assignment.positive[0]
    assert int(pos.sum()) > boxes.shape[1]                 # several cells per object
    expected = boxes[0, assignment.object_index[0]]
    torch.testing.assert_close(decoded[pos], expected[pos], atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------- assigners
def _centre_assign(codec, boxes, radius, mask=None):
    boxes = torch.tensor([boxes], dtype=torch.float32)
    mask = torch.ones(boxes.shape[:2], dtype=torch.bool) if mask is None else torch.tensor([mask])
    valid, level, point = codec.object_cells(boxes, mask)
    centres, strides, levels = codec.points()
    a = centre_sampling_assign(centres, strides, levels, boxes, valid, level, point, radius)
    return {int(p): int(a.object_index[0, p]) for p in torch.nonzero(a.positive[0]).flatten()}


def test_centre_sampling_positives_of_a_hand_placed_box():
    # Stride 8 on 48 x 48: a 6 x 6 map with cell centres 3.5, 11.5, ..., 43.5. The box [8, 8, 31, 23] has
    # pixel edges 7.5..31.5 x 7.5..23.5 and centre (19.5, 15.5); its own cell is u = 20/8 - 0.5 = 2,
    # v = round(16/8 - 0.5 = 1.5) = 2 (half up), point 2 * 6 + 2 = 14.
    codec = LtrbCodec((48, 48), 1, [8])
    box = [[8, 8, 31, 23]]
    # r = 1: |cx - 19.5| < 8 -> u = 2; |cy - 15.5| < 8 -> v = 1, 2: points 8 and 14.
    assert _centre_assign(codec, box, 1.0) == {8: 0, 14: 0}
    # r = 1.5: u = 1, 2, 3 (|dx| = 8, 0, 8 < 12); v = 1, 2 (3.5 and 27.5 are 12 away, not < 12).
    six = {7: 0, 8: 0, 9: 0, 13: 0, 14: 0, 15: 0}
    assert _centre_assign(codec, box, 1.5) == six
    # r = 2.5 reaches u = 0, 4 and v = 0, 3, but their centres (3.5, 35.5; 3.5, 27.5) lie outside the box.
    assert _centre_assign(codec, box, 2.5) == six
    # Radius 0 (the 'cell' assigner): the object's own cell only, CenterNet's one positive.
    assert _centre_assign(codec, box, 0.0) == {14: 0}
    # A 2-pixel box [0, 0, 1, 1] holds no cell centre (edges -0.5..1.5; the first centre is 3.5) but keeps its
    # own cell (u = round(1/8 - 0.5) = 0); padding and a NaN row get nothing.
    assert _centre_assign(codec, [[0, 0, 1, 1], [20, 20, 30, 30], [float("nan")] * 4], 2.5,
                          [True, False, True]) == {0: 0}


def test_centre_sampling_ties_go_to_the_smaller_box_then_the_lower_index():
    codec = LtrbCodec((48, 48), 1, [8])
    # [8, 8, 23, 23] (16 x 16, centre 15.5): u, v in {1, 2} -> points 7, 8, 13, 14, all shared with the larger
    # [8, 8, 31, 23] (24 x 16), which keeps only 9 and 15.
    assert _centre_assign(codec, [[8, 8, 31, 23], [8, 8, 23, 23]], 1.5) == {
        7: 1, 8: 1, 13: 1, 14: 1, 9: 0, 15: 0}
    # Equal areas: [16, 8, 39, 23] (centre 27.5: u = 2, 3, 4) shares 8, 9, 14, 15 with the first box, which
    # comes first in the batch and takes them (even the second box's own cell 15).
    assert _centre_assign(codec, [[8, 8, 31, 23], [16, 8, 39, 23]], 1.5) == {
        7: 0, 8: 0, 9: 0, 13: 0, 14: 0, 15: 0, 10: 1, 16: 1}


def test_centre_sampling_stays_on_the_objects_size_level():
    # Strides 8 and 16 with the boundary 64: a 70-pixel box is sampled on the stride-16 level only.
    codec = LtrbCodec((128, 128), 1, [8, 16])
    positives = _centre_assign(codec, [[20, 20, 89, 59]], 2.5)
    assert positives and min(positives) >= codec.level_starts[1]


# The task-aligned case, stride 8 on 32 x 32 (a 4 x 4 map, centres 3.5, 11.5, 19.5, 27.5): A = [0, 0, 23, 23]
# holds the cells u, v <= 2, B = [8, 8, 31, 31] the cells u, v >= 1; both are 24 x 24 = 576 pixels, and
# IoU(A, B) = 16^2 / (2 x 576 - 256) = 256 / 896.
A, B = [0.0, 0.0, 23.0, 23.0], [8.0, 8.0, 31.0, 31.0]


def _tal(scores, preds, boxes, topk=2):
    codec = LtrbCodec((32, 32), 1, [8])
    boxes = torch.tensor([boxes])
    labels, mask = torch.zeros(1, len(boxes[0]), dtype=torch.long), torch.ones(1, len(boxes[0]), dtype=torch.bool)
    valid, _, point = codec.object_cells(boxes, mask)
    a = task_aligned_assign(codec.points()[0], torch.tensor(scores)[None, :, None], torch.tensor([preds]), boxes,
                            labels, valid, point, topk=topk, alpha=1.0, beta=1.0)
    won = {int(p): int(a.object_index[0, p]) for p in torch.nonzero(a.positive[0]).flatten()}
    return won, a.aligned[0]


def _grid(fn):
    return [fn(p % 4, p // 4) for p in range(16)]


def test_task_aligned_positives_of_hand_placed_boxes():
    # Scores 0.3 except 1.0 at cell 5 = (1, 1), whose predicted box is C = [3, 3, 26, 26]; the other cells
    # predict A (u, v <= 2) or B. Metric t = score x IoU:
    #   IoU(C, A) = 21^2 / (1152 - 441) = 441 / 711, IoU(C, B) = 19^2 / (1152 - 361) = 361 / 791.
    #   A's candidates: cell 5 -> 0.6203, every other -> 0.3 x 1: top 2 = {5, 0} (ties in point order).
    #   B's candidates: cell 5 -> 0.4564, cells 6, 9, 10 (predicting A) -> 0.3 x 256/896, cells 7, 11, 13, 14,
    #   15 -> 0.3: top 2 = {5, 7}.
    # Cell 5 is in both: its predicted box overlaps A more (0.62 > 0.46), so A takes it; B keeps 7 only.
    iou_ca, iou_cb = 441 / 711, 361 / 791
    C = [3.0, 3.0, 26.0, 26.0]
    scores = [1.0 if p == 5 else 0.3 for p in range(16)]
    preds = _grid(lambda u, v: C if (u, v) == (1, 1) else (A if u <= 2 and v <= 2 else B))
    won, aligned = _tal(scores, preds, [A, B])
    assert won == {0: 0, 5: 0, 7: 1}
    # TOOD's normalised targets: t x (largest IoU of the object's positives) / (largest t of them).
    # A: cell 0 -> 0.3 x 1 / 0.6203, cell 5 -> 1; B: cell 7 -> 0.3 x 1 / 0.3 = 1; every other cell 0.
    expected = torch.zeros(16)
    expected[0], expected[5], expected[7] = 0.3 / iou_ca, 1.0, 1.0
    torch.testing.assert_close(aligned, expected, atol=1e-5, rtol=0)
    assert iou_ca > iou_cb
    # A cell outside the box never counts, however high its score: cell 15 at 0.99 predicting A is B's only.
    scores = [0.5] * 15 + [0.99]
    won, _ = _tal(scores, [A] * 16, [A, B])
    # A: every candidate at 0.5 x 1: the first two in point order, 0 and 1. B: cell 15 (0.99 x 256/896) then
    # the first of the ties at 0.5 x 256/896, cell 5.
    assert won == {0: 0, 1: 0, 15: 1, 5: 1}


def test_task_aligned_equal_ious_go_to_the_lower_object_index():
    # C' = [4, 4, 27, 27] overlaps A and B equally (20^2 / (1152 - 400) = 400 / 752 each), in both top 2.
    C = [4.0, 4.0, 27.0, 27.0]
    scores = [1.0 if p == 5 else 0.3 for p in range(16)]
    preds = _grid(lambda u, v: C if (u, v) == (1, 1) else (A if u <= 2 and v <= 2 else B))
    won, _ = _tal(scores, preds, [A, B])
    assert won[5] == 0
    won, _ = _tal(scores, preds, [B, A])           # the same objects in the other order: B (now 0) takes it
    assert won[5] == 0 and won[0] == 1 and won[7] == 0


def _tal_loop_reference(centres, scores, preds, boxes, labels, valid, own, topk, alpha, beta):
    """Per image, per object: candidates, metric, stable top k; then each cell to its highest-IoU object."""
    def iou(a, b):
        iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
        ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
        inter = max(iw, 0) * max(ih, 0)
        union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
        return inter / union if union > 0 else 0.0

    bsz, n = labels.shape
    p = len(centres)
    positive = np.zeros((bsz, p), bool)
    index = np.zeros((bsz, p), np.int64)
    aligned = np.zeros((bsz, p))
    for i in range(bsz):
        tops, metrics, ious = {}, {}, {}
        for j in range(n):
            if not valid[i, j]:
                continue
            x1, y1, x2, y2 = boxes[i, j]
            cand = [q for q in range(p) if (x1 - 0.5 < centres[q, 0] < x2 + 0.5 and y1 - 0.5 < centres[q, 1] < y2 + 0.5)
                    or q == own[i, j]]
            for q in cand:
                ious[j, q] = max(iou(preds[i, q], boxes[i, j]), 0.0)
                metrics[j, q] = scores[i, q, labels[i, j]] ** alpha * ious[j, q] ** beta
            order = sorted(cand, key=lambda q: (-metrics[j, q], q))
            tops[j] = order[:topk]
        winners = {}
        for q in range(p):
            claims = [j for j in sorted(tops) if q in tops[j]]
            if claims:
                winners[q] = max(claims, key=lambda j: (ious[j, q], -j))
                positive[i, q], index[i, q] = True, winners[q]
        for j in tops:
            mine = [q for q, w in winners.items() if w == j]
            if mine:
                t_max = max(metrics[j, q] for q in mine)
                u_max = max(ious[j, q] for q in mine)
                for q in mine:
                    aligned[i, q] = metrics[j, q] * u_max / (t_max + 1e-9)
    return positive, index, aligned


def test_task_aligned_batched_equals_a_per_object_loop(device):
    codec = LtrbCodec((64, 48), 3, [8, 16])
    rng = np.random.default_rng(7)
    bsz, n, p = 3, 6, codec.num_points
    xy = rng.uniform(0, 40, (bsz, n, 2))
    wh = rng.uniform(4, 40, (bsz, n, 2))
    boxes = torch.tensor(np.concatenate([xy, xy + wh - 1], -1), dtype=torch.float32)
    labels = torch.from_numpy(rng.integers(0, 3, (bsz, n)))
    mask = torch.from_numpy(rng.random((bsz, n)) < 0.8)
    centres = codec.points()[0]
    pc = centres[None].numpy() + rng.uniform(-4, 4, (bsz, p, 2))
    half = rng.uniform(3, 25, (bsz, p, 2))
    preds = torch.tensor(np.concatenate([pc - half, pc + half], -1), dtype=torch.float32)
    scores = torch.from_numpy(rng.uniform(0.01, 1, (bsz, p, 3))).float()
    valid, _, own = codec.object_cells(boxes, mask)
    on = [t.to(device) for t in (codec.points(device)[0], scores, preds, boxes, labels, valid, own)]
    a = task_aligned_assign(*on, topk=5, alpha=0.5, beta=6.0)
    a = type(a)(*(t.cpu() for t in (a.positive, a.object_index, a.aligned)))
    ref = _tal_loop_reference(centres.numpy().astype(np.float64), scores.numpy().astype(np.float64),
                              preds.numpy().astype(np.float64), boxes.numpy().astype(np.float64), labels.numpy(),
                              valid.numpy(), own.numpy(), 5, 0.5, 6.0)
    assert ref[0].sum() > 2 * n
    np.testing.assert_array_equal(a.positive.numpy(), ref[0])
    np.testing.assert_array_equal(a.object_index.numpy()[ref[0]], ref[1][ref[0]])
    np.testing.assert_allclose(a.aligned.numpy(), ref[2], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- QFL / VFL
def test_quality_focal_loss_hand_values_and_zero_at_the_perfect_prediction():
    # x = 0 (p = 0.5), IoU target 0.8: BCE = -(0.8 log 0.5 + 0.2 log 0.5) = log 2, times |0.8 - 0.5|^2.
    assert float(quality_focal_loss(torch.tensor(0.0), torch.tensor(0.8))) == pytest.approx(
        math.log(2) * 0.3 ** 2, abs=1e-7)
    # A background cell (target 0) at x = 1: log(1 + e) x sigmoid(1)^2.
    sig = 1 / (1 + math.exp(-1))
    assert float(quality_focal_loss(torch.tensor(1.0), torch.tensor(0.0))) == pytest.approx(
        math.log(1 + math.e) * sig ** 2, abs=1e-6)
    # Zero loss and zero gradient where sigmoid(x) equals the IoU.
    y = torch.tensor([0.37, 0.9, 0.0])
    x = torch.tensor([math.log(0.37 / 0.63), math.log(0.9 / 0.1), -30.0], requires_grad=True)
    loss = quality_focal_loss(x, y)
    loss.sum().backward()
    assert loss.abs().max() < 1e-10 and x.grad.abs().max() < 1e-6


def test_varifocal_loss_hand_values_and_minimum_at_the_quality():
    # Positive q = 0.8 at x = 0: q x BCE = 0.8 log 2. Negative at x = 1: 0.75 sigmoid(1)^2 log(1 + e).
    assert float(varifocal_loss(torch.tensor(0.0), torch.tensor(0.8))) == pytest.approx(0.8 * math.log(2), abs=1e-7)
    sig = 1 / (1 + math.exp(-1))
    assert float(varifocal_loss(torch.tensor(1.0), torch.tensor(0.0))) == pytest.approx(
        0.75 * sig ** 2 * math.log(1 + math.e), abs=1e-6)
    # Zero at the perfect prediction of a full positive (q = 1) and of the background; zero gradient at p = q.
    assert float(varifocal_loss(torch.tensor([30.0, -30.0]), torch.tensor([1.0, 0.0])).max()) < 1e-10
    x = torch.tensor([math.log(0.6 / 0.4)], requires_grad=True)
    varifocal_loss(x, torch.tensor([0.6])).sum().backward()
    assert abs(float(x.grad)) < 1e-6


def test_ltrb_quality_target_is_the_predicted_boxes_iou():
    # One object [8, 8, 31, 23] (24 x 16) on a 6 x 6 stride-8 map, its own cell only ('cell'), at point 14
    # (centre (19.5, 19.5)). The cell predicts l = t = r = b = 1 stride: the box [12, 12, 27, 27] (16 x 16),
    # whose overlap with the object is [12..27] x [12..23] = 16 x 12 = 192; union 384 + 256 - 192 = 448.
    codec = LtrbCodec((48, 48), 2, [8], reg_max=4)
    reg = torch.full((1, 36, 4, 5), -1e4)
    reg[0, :, :, 1] = 0.0
    pred = codec.predicted_boxes(reg)
    assert pred[0, 14].tolist() == [12.0, 12.0, 27.0, 27.0]
    boxes, labels = torch.tensor([[[8.0, 8.0, 31.0, 23.0]]]), torch.tensor([[1]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    cls = torch.zeros(1, 36, 2)
    t = LtrbLoss(codec, assigner="cell").targets(cls, pred, boxes, labels, mask)
    expected = torch.zeros(1, 36, 2)
    expected[0, 14, 1] = 192 / 448
    torch.testing.assert_close(t["cls"], expected)
    none = LtrbLoss(codec, assigner="cell", quality="none").targets(cls, pred, boxes, labels, mask)
    assert none["cls"].sum() == 1 and none["cls"][0, 14, 1] == 1


# ---------------------------------------------------------------------------------------------- the task
class OracleDetector(nn.Module):
    """Returns the perfect outputs of the boxes of each batch it is shown, in loader order."""

    def __init__(self, outputs):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.outputs = outputs

    def forward(self, images):
        return self.outputs.pop(0)


@pytest.mark.parametrize("assigner", ["centre", "cell"])
def test_ltrb_oracle_scores_ap_one_on_synthetic(tiny_synthetic_detection, assigner):
    # Perfect outputs of the targets, through decoding, the letterbox's inverse (box edges), clipping, NMS (the
    # several positive cells of an object decode to the same box) and pycocotools: AP 1 at every IoU.
    t = tiny_synthetic_detection
    data = load_coco_detection(t["val"], t["images"])
    loader = torch.utils.data.DataLoader(DetectionTransformDataset(data.images, (128, 128)), batch_size=4,
                                         collate_fn=collate_detection)
    codec = LtrbCodec((128, 128), data.num_classes, [4, 8, 16, 32], size_bounds=[12, 24, 40])
    loss = LtrbLoss(codec, assigner=assigner)
    outputs, levels, positives = [], set(), 0
    for batch in loader:
        assignment, valid = loss.assign(None, None, batch["boxes"], batch["labels"], batch["mask"])
        levels |= set(codec.object_cells(batch["boxes"], batch["mask"])[1][valid].tolist())
        positives += int(assignment.positive.sum())
        outputs.append(codec.perfect_outputs(assignment, batch["boxes"], batch["labels"]))
    assert levels == {0, 1, 2, 3}
    assert (positives > 2 * data.num_objects) == (assigner == "centre")
    gt = coco_detection_subset(t["val"], data.image_ids, data.category_ids)
    task = DetectionTask(codec, DetectionMeta(data.class_names, data.category_ids), gt, progress=False,
                         max_detections=100)
    metrics, evaluator = evaluate_model(task, OracleDetector(outputs), loader)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP75"] == pytest.approx(1.0)
    assert len(evaluator.results) == data.num_objects
    # Every box is back at its image position (inclusive xyxy, +1 widths) with its category.
    by_image = {im.image_id: im for im in data.images}
    for r in evaluator.results:
        im = by_image[r["image_id"]]
        x, y, w, h = r["bbox"]
        box = np.array([[x, y, x + w - 1, y + h - 1]])
        best = int(box_iou(box, im.boxes).argmax())
        np.testing.assert_allclose(box[0], im.boxes[best], atol=0.02)
        assert data.category_ids[im.labels[best]] == r["category_id"]


def _tiny_batch(tiny_synthetic_detection, n=8):
    t = tiny_synthetic_detection
    data = load_coco_detection(t["train"], t["images"])
    dataset = DetectionTransformDataset(data.images[:n], (64, 64))
    return collate_detection([dataset[i] for i in range(n)])


@pytest.mark.parametrize("switches", [{}, {"reg_max": 0, "assigner": "cell", "quality": "none", "cls_loss": "vfl"}],
                         ids=["all_on", "all_off"])
def test_ltrb_a_few_steps_lower_the_loss(tiny_synthetic_detection, switches):
    torch.manual_seed(0)
    batch = _tiny_batch(tiny_synthetic_detection)
    reg_max = switches.get("reg_max", 16)
    codec = LtrbCodec((64, 64), 4, [4, 8, 16], reg_max=reg_max, size_bounds=[12, 24])
    loss = LtrbLoss(codec, **{k: v for k, v in switches.items() if k != "reg_max"})
    task = DetectionTask(codec, DetectionMeta([f"c{i}" for i in range(4)], [1, 2, 3, 4]), ltrb_loss=loss,
                         progress=False, max_detections=20)
    model = build_detector(4, out_indices=(1, 2, 3), fpn_channels=16, head_channels=16, strides=[4, 8, 16],
                           head="ltrb", reg_max=reg_max)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses, ious = [], []
    for _ in range(12):
        out = task.training_step(model, batch)
        assert set(out) >= {"loss", "loss_cls", "loss_giou", "num_objects", "num_positives", "positive_iou"}
        assert ("loss_dfl" in out) == (reg_max > 0)
        assert out["num_objects"] == batch["mask"].sum()
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
        ious.append(float(out["positive_iou"]))
    # All on: 2.61 -> 2.05 and the positives' IoU 0.05 -> 0.31 on this machine; all off: 6.5 -> 3.5.
    assert np.isfinite(losses).all() and losses[-1] < 0.85 * losses[0], losses
    assert ious[-1] > 2 * ious[0], ious
    model.eval()
    det = task.predict_batch(model, {"image": batch["image"][:2], "input_to_image": torch.eye(2, 3).expand(2, 2, 3),
                                     "image_size": torch.tensor([[64, 64]] * 2)})
    assert len(det) == 2 and all(d["boxes"].shape[1] == 4 and len(d["boxes"]) <= 20 for d in det)


def test_ltrb_images_without_objects_train():
    torch.manual_seed(0)
    codec = LtrbCodec((64, 64), 2, [4, 8, 16])
    task = DetectionTask(codec, DetectionMeta(["a", "b"], [1, 2]), progress=False)
    model = build_detector(2, out_indices=(1, 2, 3), fpn_channels=16, head_channels=16, strides=[4, 8, 16],
                           head="ltrb")
    for n in (1, 0):
        batch = {"image": torch.zeros(2, 3, 64, 64, dtype=torch.uint8), "boxes": torch.full((2, n, 4), float("nan")),
                 "labels": torch.zeros(2, n, dtype=torch.long), "mask": torch.zeros(2, n, dtype=torch.bool)}
        out = task.training_step(model, batch)
        assert torch.isfinite(out["loss"]) and out["num_positives"] == 0 and out["loss_giou"] == 0
        out["loss"].backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _cfg(*overrides):
    return load_config("configs/centernet-fpn_resnet18_synthetic-det_128x128.yaml",
                       ["model.fpn_channels=16", "model.head_channels=16", *overrides])


def test_ltrb_config_builds_the_head_codec_and_loss_and_names_bad_keys():
    cfg = _cfg("model.head=ltrb", "model.head_strides=[4,8,16,32]", "model.reg_max=8", "model.shared_head=false",
               "loss.assigner=centre", "loss.centre_radius=1.5", "loss.cls_loss=vfl", "eval.pre_nms_topk=300")
    model = det_task.build_model(cfg, 4, pretrained=False)
    assert isinstance(model, LtrbDetector) and model.reg_max == 8 and len(model.head) == 4
    out = model(torch.zeros(1, 3, 128, 128, dtype=torch.uint8))
    assert [tuple(r.shape) for r in out["reg"]] == [(1, 36, 128 // s, 128 // s) for s in (4, 8, 16, 32)]
    # The class prior 0.01 holds on every level at the start.
    for c in out["cls"]:
        torch.testing.assert_close(torch.sigmoid(c).mean(), torch.tensor(0.01), atol=0.005, rtol=0)
    task = det_task.build_task(cfg, DetectionMeta(["a", "b", "c", "d"], [1, 2, 3, 4]), progress=False)
    assert isinstance(task.codec, LtrbCodec) and task.codec.topk == 300 and task.max_detections == 100
    assert (task.ltrb_loss.assigner, task.ltrb_loss.centre_radius, task.ltrb_loss.cls_loss) == ("centre", 1.5, "vfl")
    defaults = det_task.build_task(_cfg("model.head=ltrb"), DetectionMeta(["a"], [1]), progress=False).ltrb_loss
    assert (defaults.assigner, defaults.quality, defaults.cls_loss, defaults.weights) == (
        "task_aligned", "iou", "qfl", {"cls": 1.0, "giou": 2.0, "dfl": 0.25})
    # The CenterNet heads ignore the new keys and build as before.
    assert isinstance(det_task.build_model(_cfg("model.head=multi_level", "model.reg_max=4"), 4, pretrained=False),
                      MultiLevelCenterNetDetector)
    assert det_task.build_task(_cfg(), DetectionMeta(["a"], [1]), progress=False).ltrb_loss is None
    for bad, key in [("loss.assigner=nearest", "loss.assigner"), ("loss.quality=aligned", "loss.quality"),
                     ("loss.cls_loss=bce", "loss.cls_loss"), ("loss.centre_radius=0", "loss.centre_radius"),
                     ("model.reg_max=-1", "model.reg_max"), ("loss.tal_topk=0", "loss.tal_topk"),
                     ("eval.pre_nms_topk=0", "eval.pre_nms_topk")]:
        with pytest.raises(ConfigError, match=key):
            _cfg("model.head=ltrb", "loss.assigner=centre" if "quality" in bad else "loss.tal_beta=6", bad)
    with pytest.raises(ConfigError, match="loss.ltrb_giou_weight.*nothing would train"):
        _cfg("model.head=ltrb", "loss.ltrb_giou_weight=0", "loss.dfl_weight=0")
    with pytest.raises(ConfigError, match="loss.dfl_weight.*model.reg_max"):
        _cfg("model.head=ltrb", "model.reg_max=0")
    _cfg("model.head=ltrb", "model.reg_max=0", "loss.dfl_weight=0")


# ---------------------------------------------------------------------------------------------- ONNX
def test_ltrb_detector_onnx_export_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import cv2

    from datasets.synthetic_video import render_moving_figures
    from engine.checkpoint import save_checkpoint
    from engine.config.loading import config_to_dict
    from engine.inference.loading import load_for_inference
    from engine.inference.predictors import DetectionPredictor
    from engine.tasks.registry import config_from_dict
    from tools import export, infer

    torch.manual_seed(0)
    split = {"ann_file": "x", "image_root": "x"}
    cfg = config_from_dict({"task": "detection", "model": {"out_indices": [1, 2, 3], "fpn_channels": 16,
                                                           "head_channels": 16, "head": "ltrb", "reg_max": 8,
                                                           "head_strides": [4, 8, 16, 32]},
                            "data": {"input_size": [64, 64], "train": split, "val": split},
                            "eval": {"topk": 5, "pre_nms_topk": 50}})
    meta = DetectionMeta(["square", "disc"], [1, 2])
    model = det_task.build_model(cfg, 2, pretrained=False)
    save_checkpoint({"model": model.state_dict(), "config": config_to_dict(cfg), "meta": meta.to_dict()},
                    str(tmp_path / "det.pt"))
    out = export.main(["--checkpoint", str(tmp_path / "det.pt"), "--output", str(tmp_path / "det.onnx")])
    assert out["kind"] == "detection" and out["max_abs_diff"] < 1e-4
    assert out["outputs"] == [f"{k}_s{s}" for k in ("cls", "reg") for s in (4, 8, 16, 32)]
    images = [np.asarray(f) for f in render_moving_figures(num_frames=3, size=(90, 70), num_figures=1,
                                                           figure_height=50)[0]]
    preds = []
    for path in ("det.pt", "det.onnx"):
        dcfg, m, state = load_for_inference(str(tmp_path / path), torch.device("cpu"))
        task = det_task.build_task(dcfg, DetectionMeta.from_dict(state["meta"]), progress=False)
        assert isinstance(task.codec, LtrbCodec)
        preds.append(DetectionPredictor(m, task, dcfg.data.input_size).predict_many(images))
    for a, b in zip(*preds):
        assert 0 < len(a["boxes"]) == len(b["boxes"]) <= 5
        np.testing.assert_allclose(b["boxes"], a["boxes"], rtol=0, atol=0.01)
        np.testing.assert_allclose(b["scores"], a["scores"], rtol=0, atol=1e-5)
        assert (a["labels"] == b["labels"]).all()
    os.makedirs(tmp_path / "images")
    for i, im in enumerate(images):
        cv2.imwrite(str(tmp_path / "images" / f"{i}.png"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    out = infer.main(["--backend", "onnxruntime", "--model", str(tmp_path / "det.onnx"), "--input",
                      str(tmp_path / "images"), "--output-dir", str(tmp_path / "o"), "--det-score-threshold", "0",
                      "--no-progress"])
    assert out["images"] == 3 and os.path.isfile(out["detection_results"])


@pytest.mark.gpu
def test_ltrb_targets_and_losses_read_nothing_back_from_the_gpu(tiny_synthetic_detection):
    """Targets are built on the device in batch: after a first step (which caches the points and level tables
    there), a loss step raises on any synchronising CUDA call (``.item()``, ``nonzero``, a blocking copy)."""
    device = torch.device("cuda")
    batch = _tiny_batch(tiny_synthetic_detection)
    codec = LtrbCodec((64, 64), 4, [4, 8, 16], size_bounds=[12, 24])
    model = build_detector(4, out_indices=(1, 2, 3), fpn_channels=16, head_channels=16, strides=[4, 8, 16],
                           head="ltrb").to(device)
    images, boxes, labels, mask = (batch[k].to(device) for k in ("image", "boxes", "labels", "mask"))
    for assigner in ("task_aligned", "centre"):
        task = DetectionTask(codec, DetectionMeta([f"c{i}" for i in range(4)], [1, 2, 3, 4]), progress=False,
                             ltrb_loss=LtrbLoss(codec, assigner=assigner))
        task.losses(model(images), boxes, labels, mask)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = task.losses(model(images), boxes, labels, mask)
            out["loss"].backward()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert torch.isfinite(out["loss"]).item() and out["num_positives"].item() > 0
