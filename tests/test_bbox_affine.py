"""affine_boxes moves pixel edges: agrees with scale_boxes / flip_boxes_horizontal and with warped pixels."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from datasets.affine import crop_matrix
from models import bbox


@settings(max_examples=50, deadline=None)
@given(st.floats(0.2, 5), st.floats(0.2, 5), st.integers(0, 50), st.integers(0, 50), st.integers(1, 40),
       st.integers(1, 40))
def test_affine_scale_equals_scale_boxes_and_width_scales_exactly(fx, fy, x, y, w, h):
    box = np.array([x, y, x + w - 1, y + h - 1], float)
    # The resize matrix in pixel-index coordinates: x -> (x + 0.5) * f - 0.5.
    m = np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5]])
    moved = bbox.affine_boxes(box, m)
    np.testing.assert_allclose(moved, bbox.scale_boxes(box, fx, fy), atol=1e-9)
    bw, bh = bbox.box_width_height(moved)
    np.testing.assert_allclose([bw, bh], [w * fx, h * fy], atol=1e-9)


def test_affine_flip_equals_flip_boxes():
    boxes = np.array([[0, 0, 0, 0], [3, 4, 10, 20], [90, 1, 99, 2]], float)
    m = np.array([[-1.0, 0, 99], [0, 1, 0]])
    np.testing.assert_allclose(bbox.affine_boxes(boxes, m), bbox.flip_boxes_horizontal(boxes, 100))


def test_affine_batched_torch_matches_per_image_numpy():
    boxes = torch.tensor([[[1.0, 2, 10, 12], [5, 5, 5, 5]], [[0, 0, 31, 31], [7, 3, 9, 30]]])
    mats = torch.tensor([[[2.0, 0, 3], [0, 0.5, -1]], [[-1.0, 0, 63], [0, 1, 0]]])
    out = bbox.affine_boxes(boxes, mats)
    for i in range(2):
        np.testing.assert_allclose(out[i].numpy(), bbox.affine_boxes(boxes[i].numpy(), mats[i].numpy()), atol=1e-5)


def test_box_moves_with_the_warped_pixels():
    # A filled rectangle warped by a crop matrix (zoom 1.5, shift, flip) covers the moved box: its first and
    # last at-least-half-covered pixels are within half a pixel of the moved box's (fractional) corners.
    image = np.zeros((60, 80), np.uint8)
    box = np.array([30, 20, 49, 39], float)                      # 20 x 20 pixels
    image[20:40, 30:50] = 255
    m = crop_matrix((40, 30), (80 / 1.5, 60 / 1.5), (80, 60), flip=True)
    warped = cv2.warpAffine(image, m, (80, 60), flags=cv2.INTER_LINEAR)
    ys, xs = np.nonzero(warped >= 128)
    moved = bbox.affine_boxes(box, m)
    np.testing.assert_allclose(moved, [xs.min(), ys.min(), xs.max(), ys.max()], atol=0.51)
    np.testing.assert_allclose(bbox.box_width_height(moved), [30, 30], atol=1e-9)
