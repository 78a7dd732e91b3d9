"""The +1 box convention: hand-computed values, round trips (hypothesis), agreement with torchvision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from models import bbox


def test_coco_to_xyxy_hand_values():
    # A 10x5 box at (2, 3) covers pixels 2..11 and 3..7.
    b = torch.tensor([[2.0, 3.0, 10.0, 5.0]])
    torch.testing.assert_close(bbox.coco_xywh_to_xyxy(b), torch.tensor([[2.0, 3.0, 11.0, 7.0]]))
    torch.testing.assert_close(bbox.xyxy_to_coco_xywh(torch.tensor([[2.0, 3.0, 11.0, 7.0]])), b)


def test_one_pixel_box_has_area_one_and_empty_boxes_zero():
    boxes = np.array([[0, 0, 0, 0], [0, 0, 9, 9], [5, 5, 4, 9], [3, 3, 3, 2]])
    np.testing.assert_array_equal(bbox.box_area(boxes), [1, 100, 0, 0])
    np.testing.assert_array_equal(bbox.box_is_empty(boxes), [False, False, True, True])


def test_iou_hand_values_and_shared_edge_pixel():
    a = torch.tensor([[0.0, 0.0, 9.0, 9.0]])
    b = torch.tensor([[5.0, 0.0, 14.0, 9.0], [9.0, 9.0, 18.0, 18.0], [10.0, 10.0, 12.0, 12.0]])
    # 50 shared pixels of 150; one shared pixel of 199; disjoint.
    torch.testing.assert_close(bbox.box_iou(a, b), torch.tensor([[50 / 150, 1 / 199, 0.0]]))


def test_iou_equals_torchvision_on_shifted_boxes():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(20, 2, generator=g) * 50
    wh = torch.rand(20, 2, generator=g) * 30 + 1
    boxes = torch.cat([xy, xy + wh - 1], dim=1)
    ours = bbox.box_iou(boxes, boxes)
    theirs = torchvision.ops.box_iou(bbox.to_torchvision_boxes(boxes), bbox.to_torchvision_boxes(boxes))
    torch.testing.assert_close(ours, theirs)


def test_numpy_and_torch_agree():
    b = np.array([[1.5, 2.0, 7.25, 9.0], [0.0, 0.0, 3.0, 3.0]])
    for fn in (bbox.coco_xywh_to_xyxy, bbox.xyxy_to_coco_xywh, bbox.box_area, bbox.box_center):
        np.testing.assert_allclose(fn(b), fn(torch.from_numpy(b)).numpy())
    np.testing.assert_allclose(bbox.box_iou(b, b), bbox.box_iou(torch.from_numpy(b), torch.from_numpy(b)).numpy())


int_xywh = st.tuples(st.integers(-1000, 1000), st.integers(-1000, 1000), st.integers(1, 1000), st.integers(1, 1000))
float_xywh = st.tuples(st.floats(-1e4, 1e4), st.floats(-1e4, 1e4), st.floats(0.01, 1e4), st.floats(0.01, 1e4))


@given(int_xywh)
def test_round_trip_exact_on_integers(xywh):
    b = np.array([xywh], dtype=np.int64)
    out = bbox.xyxy_to_coco_xywh(bbox.coco_xywh_to_xyxy(b))
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, b)
    assert bbox.box_area(bbox.coco_xywh_to_xyxy(b))[0] == xywh[2] * xywh[3]


@given(float_xywh)
def test_round_trip_float_tolerance(xywh):
    b = torch.tensor([xywh], dtype=torch.float64)
    torch.testing.assert_close(bbox.xyxy_to_coco_xywh(bbox.coco_xywh_to_xyxy(b)), b, rtol=1e-12, atol=1e-9)


@given(int_xywh, st.floats(0.1, 8.0), st.floats(0.1, 8.0))
def test_scale_moves_edges_so_width_scales_exactly(xywh, fx, fy):
    xyxy = bbox.coco_xywh_to_xyxy(np.array(xywh, dtype=np.float64))
    w, h = bbox.box_width_height(bbox.scale_boxes(xyxy, fx, fy))
    assert w == pytest.approx(xywh[2] * fx, rel=1e-9)
    assert h == pytest.approx(xywh[3] * fy, rel=1e-9)
    # Edges obey the pixel-coordinate map x -> (x + 0.5) * f - 0.5.
    scaled = bbox.scale_boxes(xyxy, fx, fy)
    assert scaled[0] - 0.5 == pytest.approx((xyxy[0] - 0.5 + 0.5) * fx - 0.5, abs=1e-6)


@given(int_xywh, st.integers(1, 3000))
def test_flip_twice_is_identity_and_keeps_width(xywh, width):
    xyxy = bbox.coco_xywh_to_xyxy(np.array(xywh))
    flipped = bbox.flip_boxes_horizontal(xyxy, width)
    np.testing.assert_array_equal(bbox.flip_boxes_horizontal(flipped, width), xyxy)
    assert bbox.box_width_height(flipped)[0] == xywh[2]


def test_flip_hand_value():
    # In a 10-pixel-wide image, pixels 0..2 become pixels 7..9.
    np.testing.assert_array_equal(bbox.flip_boxes_horizontal(np.array([0, 4, 2, 6]), 10), [7, 4, 9, 6])


def test_clip_and_fully_outside_becomes_empty():
    boxes = torch.tensor([[-5.0, -5.0, 5.0, 5.0], [90.0, 10.0, 120.0, 20.0], [150.0, 0.0, 160.0, 5.0]])
    clipped = bbox.clip_boxes(boxes, width=100, height=50)
    torch.testing.assert_close(clipped[:2], torch.tensor([[0.0, 0.0, 5.0, 5.0], [90.0, 10.0, 99.0, 20.0]]))
    assert bbox.box_is_empty(clipped).tolist() == [False, False, True]


def test_center_size_round_trip():
    c, s = np.array([10.0, 20.0]), np.array([7.0, 4.0])
    xyxy = bbox.center_size_to_xyxy(c, s)
    np.testing.assert_allclose(xyxy, [7.0, 18.5, 13.0, 21.5])
    np.testing.assert_allclose(bbox.box_center(xyxy), c)
    np.testing.assert_allclose(bbox.box_width_height(xyxy), s)


def test_box_to_center_size_pads_to_aspect():
    # A 40 x 100 box (w x h) for a 3:4 model input: width grows to 75, then x1.25.
    center, size = bbox.box_to_center_size(np.array([10, 20, 49, 119]), aspect_ratio=0.75, padding=1.25)
    np.testing.assert_allclose(center, [29.5, 69.5])
    np.testing.assert_allclose(size, [75 * 1.25, 100 * 1.25])
    with pytest.raises(ValueError, match="empty box"):
        bbox.box_to_center_size(np.array([5, 5, 4, 10]), 0.75)


def _brute_force_nms(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> list[int]:
    order = scores.argsort(descending=True).tolist()
    keep = []
    for i in order:
        if all(bbox.box_iou(boxes[i:i + 1], boxes[j:j + 1])[0, 0] <= thr for j in keep):
            keep.append(i)
    return keep


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.1, 0.9))
def test_nms_equals_brute_force_plus_one_iou(seed, thr):
    g = torch.Generator().manual_seed(seed)
    n = 30
    xy = (torch.rand(n, 2, generator=g) * 20).round()
    wh = (torch.rand(n, 2, generator=g) * 10).round() + 1     # small integer boxes: the +1 matters
    boxes = torch.cat([xy, xy + wh - 1], dim=1)
    scores = torch.rand(n, generator=g)
    # An IoU exactly at the threshold is decided by float rounding, not by the convention: avoid ties.
    assume(float((bbox.box_iou(boxes.double(), boxes.double()) - thr).abs().min()) > 1e-6)
    assert bbox.nms(boxes, scores, thr).tolist() == _brute_force_nms(boxes, scores, thr)


def test_plus_one_changes_nms_against_plain_torchvision():
    # Two 2x2 boxes overlapping in one column: +1 IoU = 2/6 = 0.333; torchvision on raw corners sees 0.
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 2.0, 1.0]])
    scores = torch.tensor([0.9, 0.8])
    assert bbox.nms(boxes, scores, 0.3).tolist() == [0]
    assert torchvision.ops.nms(boxes, scores, 0.3).tolist() == [0, 1]


def test_batched_nms_keeps_other_classes():
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 9.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    classes = torch.tensor([0, 0, 1])
    assert bbox.batched_nms(boxes, scores, classes, 0.5).tolist() == [0, 2]


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        bbox.coco_xywh_to_xyxy(np.zeros((3, 5)))
