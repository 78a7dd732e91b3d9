"""The crop matrix: hand-computed edges and centres, inverse round trip, numpy == torch, and the pixel test
that one matrix moves the pixels (cv2.warpAffine) and the keypoints (apply_affine) alike."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from datasets.affine import apply_affine, crop_matrix, invert_affine


def _pt(m, x, y) -> np.ndarray:
    return apply_affine(np.array([[x, y]], dtype=np.float64), m)[0]


@pytest.mark.parametrize("out", [(32, 32), (48, 64), (33, 17)])
def test_centre_and_edges_hand_values(out):
    w_out, h_out = out
    cx, cy, w, h = 40.0, 25.5, 30.0, 50.0
    m = crop_matrix((cx, cy), (w, h), out)
    assert m.shape == (2, 3) and m.dtype == np.float64
    np.testing.assert_allclose(_pt(m, cx, cy), [(w_out - 1) / 2, (h_out - 1) / 2], atol=1e-12)
    # Edge to edge: the crop's left/right edges go to the output's pixel edges -0.5 and w_out - 0.5.
    np.testing.assert_allclose(_pt(m, cx - w / 2, cy), [-0.5, (h_out - 1) / 2], atol=1e-12)
    np.testing.assert_allclose(_pt(m, cx + w / 2, cy), [w_out - 0.5, (h_out - 1) / 2], atol=1e-12)
    np.testing.assert_allclose(_pt(m, cx, cy - h / 2), [(w_out - 1) / 2, -0.5], atol=1e-12)
    np.testing.assert_allclose(_pt(m, cx, cy + h / 2), [(w_out - 1) / 2, h_out - 0.5], atol=1e-12)


def test_identity_crop_is_identity():
    # A 10x6 image cropped whole to 10x6: centre (4.5, 2.5), edge to edge 10 x 6 pixels.
    m = crop_matrix((4.5, 2.5), (10, 6), (10, 6))
    np.testing.assert_allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-12)


def test_flip_mirrors_output_columns():
    args = ((40.0, 25.0), (30.0, 50.0), (32, 48))
    m, mf = crop_matrix(*args), crop_matrix(*args, flip=True)
    pts = np.array([[30.0, 10.0], [41.3, 27.7], [55.0, 49.0], [40.0, 25.0]])
    plain, flipped = apply_affine(pts, m), apply_affine(pts, mf)
    np.testing.assert_allclose(flipped[:, 0], 32 - 1 - plain[:, 0], atol=1e-12)
    np.testing.assert_allclose(flipped[:, 1], plain[:, 1], atol=1e-12)


def test_rotation_90_moves_right_of_centre_to_above():
    # Counter-clockwise on screen (y down): a point right of the centre ends up above it.
    m = crop_matrix((50.0, 50.0), (40.0, 40.0), (40, 40), rotation_deg=90.0)
    np.testing.assert_allclose(_pt(m, 60.0, 50.0), [19.5, 9.5], atol=1e-9)
    # ... and a point below the centre ends up to its right.
    np.testing.assert_allclose(_pt(m, 50.0, 60.0), [29.5, 19.5], atol=1e-9)


def test_rotation_keeps_centre_and_distances():
    m = crop_matrix((12.0, 30.0), (20.0, 20.0), (40, 40), rotation_deg=33.0)
    np.testing.assert_allclose(_pt(m, 12.0, 30.0), [19.5, 19.5], atol=1e-12)
    a, b = _pt(m, 12.0, 30.0), _pt(m, 15.0, 34.0)
    assert np.linalg.norm(b - a) == pytest.approx(5.0 * 2.0)


def test_nonpositive_size_is_rejected():
    with pytest.raises(ValueError, match="positive"):
        crop_matrix((0, 0), (0, 10), (8, 8))


@pytest.mark.parametrize("rot,flip", [(0.0, False), (25.0, True), (-70.0, False), (180.0, True)])
def test_invert_affine_round_trip(rot, flip):
    m = crop_matrix((33.3, 21.7), (41.0, 19.0), (64, 48), rotation_deg=rot, flip=flip)
    inv = invert_affine(m)
    pts = np.random.default_rng(0).uniform(-20, 80, (10, 2))
    np.testing.assert_allclose(apply_affine(apply_affine(pts, m), inv), pts, atol=1e-10)
    # Composition is the identity matrix.
    full = np.vstack([m, [0, 0, 1]]) @ np.vstack([inv, [0, 0, 1]])
    np.testing.assert_allclose(full, np.eye(3), atol=1e-12)
    # The inverse is what cv2 computes too.
    np.testing.assert_allclose(inv, cv2.invertAffineTransform(m), atol=1e-12)


def test_apply_affine_numpy_torch_batched_agree():
    rng = np.random.default_rng(1)
    mats = np.stack([crop_matrix(rng.uniform(0, 50, 2), rng.uniform(10, 40, 2), (32, 24),
                                 rotation_deg=float(rng.uniform(-45, 45)), flip=bool(i % 2)) for i in range(3)])
    pts = rng.uniform(-5, 60, (3, 7, 2))
    ours_np = apply_affine(pts, mats)
    ours_t = apply_affine(torch.from_numpy(pts), torch.from_numpy(mats))
    assert isinstance(ours_t, torch.Tensor) and ours_t.shape == (3, 7, 2)
    torch.testing.assert_close(ours_t, torch.from_numpy(ours_np))
    # Against a per-point hand computation.
    expect = np.einsum("bij,bnj->bni", mats[:, :, :2], pts) + mats[:, None, :, 2]
    np.testing.assert_allclose(ours_np, expect, atol=1e-12)
    # A numpy matrix with float32 torch points: the result stays float32.
    t32 = apply_affine(torch.from_numpy(pts[0]).float(), mats[0])
    assert t32.dtype == torch.float32
    torch.testing.assert_close(t32, torch.from_numpy(ours_np[0]).float())


def _centroid(img: np.ndarray) -> np.ndarray:
    ys, xs = np.mgrid[: img.shape[0], : img.shape[1]]
    total = img.sum()
    return np.array([(img * xs).sum() / total, (img * ys).sum() / total])


@pytest.mark.parametrize("size,out,rot,flip", [
    ((40.0, 40.0), (40, 40), 0.0, False),     # pure translation
    ((30.0, 30.0), (60, 60), 0.0, False),     # zoom in x2
    ((50.0, 36.0), (32, 40), 0.0, False),     # anisotropic, zoom out on x
    ((40.0, 40.0), (48, 48), 37.0, False),    # rotation
    ((44.0, 30.0), (40, 36), -65.0, True),    # rotation + flip
    ((40.0, 40.0), (40, 40), 0.0, True),      # flip only
])
def test_warp_moves_pixels_like_keypoints(size, out, rot, flip):
    """A bright blob at an integer pixel, warped by cv2, lands where apply_affine sends its centre.

    A half-pixel slip (an output centre at w_out / 2, a flip to w_out - x) would move the centroid by 0.5.
    """
    h_img, w_img = 64, 80
    px, py = 37, 29
    ys, xs = np.mgrid[:h_img, :w_img]
    blob = np.exp(-((xs - px) ** 2 + (ys - py) ** 2) / (2 * 2.5 ** 2)).astype(np.float32)
    blob[blob < 1e-6] = 0
    # The crop centre is off the blob so the test does not only check the centre mapping.
    m = crop_matrix((px + 3.3, py - 2.1), size, out, rotation_deg=rot, flip=flip)
    crop = cv2.warpAffine(blob, m, out, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    expect = _pt(m, px, py)
    # The blob lies well inside the crop: nothing of it is cut off.
    assert 8 < expect[0] < out[0] - 9 and 8 < expect[1] < out[1] - 9
    np.testing.assert_allclose(_centroid(crop), expect, atol=0.05)


def test_warp_single_pixel_under_translation():
    """Scale 1 and a sub-pixel shift: bilinear weights split one bright pixel exactly around the mapped point."""
    img = np.zeros((20, 20), np.float32)
    img[7, 11] = 1.0
    m = crop_matrix((9.5 + 0.25, 9.5 - 0.375), (20, 20), (20, 20))
    crop = cv2.warpAffine(img, m, (20, 20), flags=cv2.INTER_LINEAR)
    np.testing.assert_allclose(_centroid(crop), _pt(m, 11, 7), atol=0.05)
    np.testing.assert_allclose(_pt(m, 11, 7), [10.75, 7.375], atol=1e-12)
