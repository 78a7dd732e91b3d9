"""models/heatmap_codec.py: closed-form Gaussian targets, masking, DARK/quarter/none decode, flip, on every device."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.tasks.keypoints.task import flip_tested_heatmaps
from models.heatmap_codec import HeatmapCodec
from tests.inference_utils import OffsetModel

STRIDE = 4
W_HM, H_HM = 12, 16                      # heatmap (w, h): non-square so that x/y mix-ups show
W_IN, H_IN = STRIDE * W_HM, STRIDE * H_HM
FLIP_INDEX = [0, 2, 1, 4, 3]             # nose, left/right eye, left/right ear (an involution, as COCO's)


def _codec(sigma: float = 2.0, refine: str = "dark", w: int = W_HM, h: int = H_HM) -> HeatmapCodec:
    return HeatmapCodec((STRIDE * w, STRIDE * h), (w, h), sigma=sigma, refine=refine)


def _closed_form(x: float, y: float, sigma: float, w: int = W_HM, h: int = H_HM) -> np.ndarray:
    """The 2D Gaussian exp(-d^2 / 2 sigma^2) around u = (x + 0.5) / s - 0.5, on every cell, in float64."""
    u, v = (x + 0.5) / STRIDE - 0.5, (y + 0.5) / STRIDE - 0.5
    cols, rows = np.meshgrid(np.arange(w), np.arange(h))
    return np.exp(-((cols - u) ** 2 + (rows - v) ** 2) / (2 * sigma ** 2))


def _random_centres(codec: HeatmapCodec, b: int, k: int, margin: float, seed: int) -> torch.Tensor:
    """Float cell centres [b, k, 2] at least ``margin`` cells from every border."""
    w, h = codec.heatmap_size
    g = torch.Generator().manual_seed(seed)
    lo = torch.tensor([margin, margin])
    span = torch.tensor([w - 1 - 2 * margin, h - 1 - 2 * margin])
    return torch.rand(b, k, 2, generator=g, dtype=torch.float64) * span + lo


def _as_keypoints(codec: HeatmapCodec, uv: torch.Tensor, device) -> torch.Tensor:
    xy = (uv + 0.5) * codec.stride - 0.5          # cell -> input pixels, written out (not via the codec)
    vis = torch.full_like(xy[..., :1], 2.0)
    return torch.cat([xy, vis], dim=-1).float().to(device)


def _dark_margin(codec: HeatmapCodec) -> int:
    # "Away from the border": 3 cells, past the reach of the blur and of the Taylor step. The border is covered by
    # test_dark_round_trip_is_exact_up_to_the_border.
    return 3


# ---------------------------------------------------------------------------------------------- encode
@pytest.mark.parametrize("sigma", [1.5, 2.0, 3.0])
def test_encode_matches_closed_form_at_float_centre(device, sigma):
    codec = _codec(sigma)
    pts = [(17.3, 29.6), (3.0, 50.25), (40.9, 8.1)]
    kpts = torch.tensor([[[x, y, 2.0] for x, y in pts]], device=device)
    heat, weights = codec.encode(kpts)
    assert heat.shape == (1, 3, H_HM, W_HM) and weights.shape == (1, 3)
    assert heat.dtype == weights.dtype == torch.float32
    assert heat.device.type == weights.device.type == device.type
    expected = np.stack([_closed_form(x, y, sigma) for x, y in pts])[None]
    torch.testing.assert_close(heat.cpu(), torch.from_numpy(expected).float(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(weights.cpu(), torch.ones(1, 3))


def test_encode_hand_values_on_a_cell_centre(device):
    # x = (u + 0.5) * 4 - 0.5: u = 5 -> x = 21.5, v = 7 -> y = 29.5. Peak 1 there, exp(-1/8) one cell
    # away, exp(-2/8) diagonally, exp(-4/8) two cells away (sigma 2).
    heat, _ = _codec(2.0).encode(torch.tensor([[[21.5, 29.5, 1.0]]], device=device))
    hm = heat[0, 0].cpu()
    assert hm.argmax().item() == 7 * W_HM + 5
    torch.testing.assert_close(hm[7, 5], torch.tensor(1.0))
    for (r, c), d2 in {(7, 6): 1, (7, 4): 1, (6, 5): 1, (8, 6): 2, (6, 4): 2, (7, 3): 4, (9, 5): 4}.items():
        torch.testing.assert_close(hm[r, c], torch.tensor(math.exp(-d2 / 8)))


def test_encode_per_keypoint_sigmas_give_each_keypoint_its_own_gaussian(device):
    # data.target_sigmas: keypoint k gets the closed-form Gaussian of its own sigma, one cell away exp(-1/2s^2).
    pts, sigmas = [(17.3, 29.6), (21.5, 29.5), (40.9, 8.1)], [1.0, 2.0, 3.0]
    codec = HeatmapCodec((W_HM * STRIDE, H_HM * STRIDE), (W_HM, H_HM), sigma=sigmas)
    heat, weights = codec.encode(torch.tensor([[[x, y, 2.0] for x, y in pts]], device=device))
    expected = np.stack([_closed_form(x, y, s) for (x, y), s in zip(pts, sigmas)])[None]
    torch.testing.assert_close(heat.cpu(), torch.from_numpy(expected).float(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(heat[0, 1, 7, 6].cpu(), torch.tensor(math.exp(-1 / 8)))
    assert codec.sigma == sigmas and codec.blur_kernel_size == 7          # DARK's blur follows the widest (3)
    with pytest.raises(ValueError, match="3 sigmas .* but keypoints has 2 keypoints"):
        codec.encode(torch.zeros(1, 2, 3, device=device))
    with pytest.raises(ValueError, match="sigma must be > 0"):
        HeatmapCodec((64, 64), (16, 16), sigma=[1.0, 0.0])


def test_encode_peak_is_at_the_float_centre_not_a_rounded_cell(device):
    # u = 4.5 exactly between cells 4 and 5: both must be equal (a rounding encoder would favour one).
    x = (4.5 + 0.5) * STRIDE - 0.5
    heat, _ = _codec(2.0).encode(torch.tensor([[[x, 29.5, 2.0]]], device=device))
    row = heat[0, 0, 7].cpu()
    torch.testing.assert_close(row[4], row[5])
    torch.testing.assert_close(row[4], torch.tensor(math.exp(-0.25 / 8)))


def test_encode_has_no_subnormal_tails(device):
    # Far tails of exp(-d^2 / 2 sigma^2) underflow into float32 subnormals (below ~1.2e-38), which x86 CPUs
    # process many times slower (encode and DARK's blur were 3-6x slower). They must be exact zeros instead.
    codec = HeatmapCodec((192, 256), (48, 64), sigma=1.5)
    kpts = torch.tensor([[[0.0, 0.0, 2.0], [191.0, 255.0, 2.0], [95.0, 10.0, 1.0]]], device=device)
    heat, _ = codec.encode(kpts)
    tiny = torch.finfo(torch.float32).tiny
    assert not ((heat > 0) & (heat < tiny)).any()
    assert (heat == 0).any()                   # the far corners are zero...
    assert heat[0, 0, 0, 0] > 0.9              # ...and the peaks intact


def test_weights_zero_and_heatmaps_empty_for_unlabelled_outside_and_nan(device):
    nan, inf = float("nan"), float("inf")
    kpts = torch.tensor([[
        [20.0, 20.0, 2.0],          # 0 visible
        [20.0, 20.0, 1.0],          # 1 occluded but labelled
        [20.0, 20.0, 0.0],          # 2 unlabelled
        [-0.5, -0.5, 2.0],          # 3 on the outer edge of the first cell: u = v = -0.5, inside
        [W_IN - 0.5, H_IN - 0.5, 2.0],   # 4 outer edge of the last cell: u = w - 0.5, inside
        [-0.6, 20.0, 2.0],          # 5 just left of the heatmap
        [20.0, H_IN - 0.4, 2.0],    # 6 just below
        [W_IN + 30.0, 20.0, 2.0],   # 7 far right
        [nan, 20.0, 2.0],           # 8 NaN x
        [20.0, nan, 2.0],           # 9 NaN y
        [inf, 20.0, 2.0],           # 10 inf
    ]], device=device)
    heat, weights = _codec(2.0).encode(kpts)
    assert heat.device.type == device.type
    expected_w = torch.tensor([[1, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0]], dtype=torch.float32)
    torch.testing.assert_close(weights.cpu(), expected_w)
    assert torch.isfinite(heat).all()
    zero = expected_w[0] == 0
    assert (heat[0, zero.to(device)] == 0).all()
    assert (heat[0, ~zero.to(device)].amax(dim=(-2, -1)) > 0.5).all()


def test_keypoint_weights_scale_weights_not_heatmaps(device):
    codec = _codec(2.0)
    kpts = torch.tensor([[[10.0, 12.0, 2.0], [30.0, 40.0, 2.0], [5.0, 5.0, 0.0]],
                         [[20.0, 22.0, 1.0], [1.0, 60.0, 2.0], [44.0, 3.0, 2.0]]], device=device)
    kw = torch.tensor([0.5, 2.0, 0.0], device=device)
    heat_plain, w_plain = codec.encode(kpts)
    heat, weights = codec.encode(kpts, kw)
    torch.testing.assert_close(heat, heat_plain)
    torch.testing.assert_close(weights.cpu(), torch.tensor([[0.5, 2.0, 0.0], [0.5, 2.0, 0.0]]))
    assert weights.device.type == device.type
    # The zero keypoint weight leaves the third target of sample 1 as a Gaussian: only the loss ignores it.
    assert heat[1, 2].max() > 0.5


# ---------------------------------------------------------------------------------------------- decode
@pytest.mark.parametrize("sigma", [1.5, 2.0, 3.0])
def test_dark_round_trip_recovers_float_centres(device, sigma):
    codec = _codec(sigma, w=40, h=36)
    uv = _random_centres(codec, b=4, k=6, margin=_dark_margin(codec), seed=int(10 * sigma))
    heat, _ = codec.encode(_as_keypoints(codec, uv, device))
    xy, scores = codec.decode(heat)
    assert xy.shape == (4, 6, 2) and scores.shape == (4, 6)
    assert xy.device.type == scores.device.type == device.type
    uv_hat = (xy.double().cpu() + 0.5) / codec.stride - 0.5
    err = (uv_hat - uv).abs().max().item()
    print(f"DARK round trip, sigma {sigma}: max error {err:.5f} heatmap cells (margin {_dark_margin(codec)})")
    assert err < 0.05
    # The score is the peak value: the Gaussian sampled at the nearest cell, exp(-d^2 / 2 sigma^2) with
    # d <= sqrt(0.5) cells.
    assert scores.min().item() >= math.exp(-0.5 / (2 * sigma ** 2)) - 1e-6
    assert scores.max().item() <= 1.0 + 1e-6


@pytest.mark.parametrize("sigma", [1.5, 2.0, 3.0])
def test_dark_without_blur_is_exact_up_to_the_border(device, sigma):
    # blur_kernel_size=1: the log of a noiseless Gaussian is a quadratic, and a quadratic through three cells
    # is exact wherever its peak lies, so centres anywhere in [-0.5, w - 0.5] come back.
    codec = HeatmapCodec((STRIDE * 20, STRIDE * 16), (20, 16), sigma=sigma, blur_kernel_size=1)
    g = torch.Generator().manual_seed(5)
    uv = torch.rand(6, 8, 2, generator=g, dtype=torch.float64) * torch.tensor([20.0, 16.0]) - 0.5
    uv[0, :4] = torch.tensor([[-0.5, -0.5], [19.5, 15.5], [0.0, 7.3], [12.2, 15.0]], dtype=torch.float64)
    xy, _ = codec.decode(codec.encode(_as_keypoints(codec, uv, device))[0])
    err = ((xy.double().cpu() + 0.5) / codec.stride - 0.5 - uv).abs().max().item()
    assert err < 1e-3


@pytest.mark.parametrize("kernel", [11, 13, 17])
def test_dark_blur_equals_opencv_on_a_zero_border(kernel):
    # DARK blurs with cv2.GaussianBlur(ksize, sigma=0) on a zero-padded copy. (For ksize <= 9 OpenCV 4.12 uses a
    # fixed binomial-like table instead of its sigma formula, so only larger kernels are compared.)
    cv2 = pytest.importorskip("cv2")
    codec = HeatmapCodec((48, 64), (12, 16), blur_kernel_size=kernel)
    hm = torch.rand(2, 3, 16, 12, generator=torch.Generator().manual_seed(0))
    pad = kernel // 2
    expected = np.stack([cv2.GaussianBlur(np.pad(m, pad), (kernel, kernel), 0)[pad:-pad, pad:-pad]
                         for m in hm.reshape(-1, 16, 12).numpy()]).reshape(2, 3, 16, 12)
    torch.testing.assert_close(codec._blur(hm), torch.from_numpy(expected), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("sigma", [2.0, 3.0])
def test_dark_round_trip_is_exact_up_to_the_border(device, sigma):
    # DARK's full-map blur with zero padding (paper, MMPose) pulls peaks near the border up to half a cell
    # inwards (0.15-0.37 cells at 3 cells from it for sigma 3). Our blur truncates its kernel at the border
    # instead, so noiseless centres come back everywhere, including the outermost half cell.
    codec = _codec(sigma, w=20, h=16)
    g = torch.Generator().manual_seed(11)
    uv = torch.rand(4, 8, 2, generator=g, dtype=torch.float64) * torch.tensor([20.0, 16.0]) - 0.5
    uv[0, :4] = torch.tensor([[-0.5, -0.5], [19.5, 15.5], [0.4, 7.3], [2.0, 15.2]], dtype=torch.float64)
    xy, _ = codec.decode(codec.encode(_as_keypoints(codec, uv, device))[0])
    err = ((xy.double().cpu() + 0.5) / codec.stride - 0.5 - uv).abs().max().item()
    assert err < 0.01, err


def test_none_decode_returns_argmax_cell_centre(device):
    codec = _codec(2.0, refine="none")
    heat = torch.zeros(1, 2, H_HM, W_HM, device=device)
    heat[0, 0, 2, 3] = 0.9
    heat[0, 0, 2, 4] = 0.8            # a higher right neighbour does not move 'none'
    heat[0, 1, 15, 0] = 0.3
    xy, scores = codec.decode(heat)
    # x = (u + 0.5) * 4 - 0.5: cell (u=3, v=2) -> (13.5, 9.5); cell (u=0, v=15) -> (1.5, 61.5).
    torch.testing.assert_close(xy.cpu(), torch.tensor([[[13.5, 9.5], [1.5, 61.5]]]))
    torch.testing.assert_close(scores.cpu(), torch.tensor([[0.9, 0.3]]))
    assert xy.device.type == device.type


def test_quarter_decode_moves_a_quarter_cell_towards_the_higher_neighbour(device):
    codec = _codec(2.0, refine="quarter")
    heat = torch.zeros(1, 3, H_HM, W_HM, device=device)
    # kpt 0: right neighbour > left, upper neighbour > lower -> u = 3.25, v = 1.75
    heat[0, 0, 2, 3], heat[0, 0, 2, 4], heat[0, 0, 2, 2] = 1.0, 0.6, 0.2
    heat[0, 0, 1, 3], heat[0, 0, 3, 3] = 0.5, 0.1
    # kpt 1: left > right, lower > upper -> u = 6.75, v = 8.25
    heat[0, 1, 8, 7], heat[0, 1, 8, 6], heat[0, 1, 8, 8] = 1.0, 0.7, 0.3
    heat[0, 1, 9, 7], heat[0, 1, 7, 7] = 0.4, 0.2
    # kpt 2: symmetric neighbours -> no move: u = 5, v = 10
    heat[0, 2, 10, 5] = 1.0
    heat[0, 2, 10, 4] = heat[0, 2, 10, 6] = heat[0, 2, 9, 5] = heat[0, 2, 11, 5] = 0.5
    xy, _ = codec.decode(heat)
    uv = torch.tensor([[[3.25, 1.75], [6.75, 8.25], [5.0, 10.0]]])
    torch.testing.assert_close(xy.cpu(), (uv + 0.5) * STRIDE - 0.5)


def test_decode_accepts_half_precision(device):
    codec = _codec(2.0, w=24, h=24)
    uv = _random_centres(codec, 2, 3, margin=5, seed=3)
    heat, _ = codec.encode(_as_keypoints(codec, uv, device))
    xy32, _ = codec.decode(heat)
    xy16, scores16 = codec.decode(heat.to(torch.bfloat16))
    assert xy16.dtype == scores16.dtype == torch.float32
    # bf16 keeps ~3 significant digits of the heatmap: a hundredth of a cell.
    torch.testing.assert_close(xy16, xy32, atol=0.01 * STRIDE, rtol=0)


# ---------------------------------------------------------------------------------------------- flip
def test_target_of_flipped_input_is_flipped_target(device):
    g = torch.Generator().manual_seed(0)
    b, k = 3, len(FLIP_INDEX)
    xy = torch.rand(b, k, 2, generator=g) * torch.tensor([W_IN + 8.0, H_IN]) - 4.0   # some leave the crop
    vis = torch.randint(0, 3, (b, k, 1), generator=g).float()
    kpts = torch.cat([xy, vis], dim=-1).to(device)
    # Mirror by hand: x -> W - 1 - x, and keypoint i of the mirrored image is keypoint FLIP_INDEX[i].
    mirrored = kpts[:, FLIP_INDEX].clone()
    mirrored[..., 0] = W_IN - 1 - mirrored[..., 0]
    codec = _codec(2.0)
    heat, weights = codec.encode(kpts)
    heat_m, weights_m = codec.encode(mirrored)
    assert weights.sum() > 0 and (weights == 0).any()
    torch.testing.assert_close(heat_m, codec.flip_heatmaps(heat, FLIP_INDEX))
    torch.testing.assert_close(weights_m, weights[:, FLIP_INDEX])
    torch.testing.assert_close(codec.flip_keypoints(kpts, FLIP_INDEX, W_IN), mirrored)


@pytest.mark.parametrize("sigma", [2.0, 3.0])
def test_decode_of_flipped_heatmaps_is_flipped_keypoints(device, sigma):
    codec = _codec(sigma, w=40, h=36)
    uv = _random_centres(codec, 3, len(FLIP_INDEX), margin=_dark_margin(codec), seed=7)
    kpts = _as_keypoints(codec, uv, device)
    heat, _ = codec.encode(kpts)
    xy, _ = codec.decode(codec.flip_heatmaps(heat, torch.tensor(FLIP_INDEX)))
    expected = codec.flip_keypoints(kpts, FLIP_INDEX, codec.input_size[0])[..., :2]
    assert xy.device.type == device.type
    torch.testing.assert_close(xy, expected, atol=0.05 * codec.stride, rtol=0)


# ---------------------------------------------------------------------------------------------- misc
def test_coordinate_maps_hand_values():
    codec = _codec(2.0)
    torch.testing.assert_close(codec.to_heatmap_coords(torch.tensor([1.5, -0.5, 47.5])),
                               torch.tensor([0.0, -0.5, 11.5]))
    torch.testing.assert_close(codec.to_input_coords(torch.tensor([0.0, 11.0])), torch.tensor([1.5, 45.5]))


def test_invalid_construction_raises():
    with pytest.raises(ValueError, match="different strides"):
        HeatmapCodec((48, 64), (12, 8))
    with pytest.raises(ValueError, match="refine='argmax'"):
        HeatmapCodec((48, 64), (12, 16), refine="argmax")
    with pytest.raises(ValueError, match="must be odd"):
        HeatmapCodec((48, 64), (12, 16), blur_kernel_size=4)
    with pytest.raises(ValueError, match="sigma"):
        HeatmapCodec((48, 64), (12, 16), sigma=0.0)


def test_bad_shapes_raise():
    codec = _codec(2.0)
    with pytest.raises(ValueError, match=r"\[B, K, 3\]"):
        codec.encode(torch.zeros(2, 5, 2))
    with pytest.raises(ValueError, match=r"\[B, K, h, w\]"):
        codec.decode(torch.zeros(5, H_HM, W_HM))


@pytest.mark.parametrize("kernel", [1, 5, 11])
def test_blurred_window_equals_the_full_blur_at_the_peak(kernel):
    """Decoding blurs only the 3x3 cells it reads; away from the border they equal the whole-map blur."""
    g = torch.Generator().manual_seed(0)
    codec = HeatmapCodec((64, 96), (16, 24), sigma=2.0, blur_kernel_size=kernel)
    hm = torch.rand(3, 5, 24, 16, generator=g)
    # Centres whose blur window (kernel radius + 1 cell) stays inside the map; nearer the border the kernel is
    # truncated on purpose (see test_dark_round_trip_is_exact_up_to_the_border).
    r = kernel // 2 + 1
    cu = torch.randint(r, 16 - r, (3, 5), generator=g)
    cv = torch.randint(r, 24 - r, (3, 5), generator=g)
    window = codec._blurred_neighbourhood(hm, torch.stack([cu, cv], dim=-1))
    full = codec._blur(hm) if kernel > 1 else hm
    for b in range(3):
        for k in range(5):
            expected = full[b, k, cv[b, k] - 1:cv[b, k] + 2, cu[b, k] - 1:cu[b, k] + 2]
            torch.testing.assert_close(window[b, k], expected, atol=1e-6, rtol=1e-5)


def test_shift_heatmaps_x_by_hand():
    h = torch.zeros(1, 1, 1, 8)
    h[..., 3] = 1.0
    out = HeatmapCodec.shift_heatmaps_x(h, 1.25)[0, 0, 0]
    assert torch.allclose(out, torch.tensor([0, 0, 0, 0, 0.75, 0.25, 0, 0.0]))
    assert torch.equal(HeatmapCodec.shift_heatmaps_x(h, -2)[0, 0, 0], torch.tensor([0, 1.0, 0, 0, 0, 0, 0, 0]))
    assert HeatmapCodec.shift_heatmaps_x(h, 0.0) is h
    assert HeatmapCodec.shift_heatmaps_x(h, 9.0).abs().sum() == 0          # moved out entirely, zeros came in


def test_flip_test_shift_keeps_a_learnt_label_offset():
    codec = HeatmapCodec((64, 64), (16, 16), sigma=1.5)
    images = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    images[..., 25] = 255                         # the feature: column 25 (input pixels)
    model = OffsetModel(b_cells=0.75)            # the labels sit 0.75 cells = 3 px right of the bright column
    direct, _ = codec.decode(model(images)[-1])
    plain, _ = codec.decode(flip_tested_heatmaps(model, images, codec, [0], True))
    shifted, _ = codec.decode(flip_tested_heatmaps(model, images, codec, [0], True, shift=6.0))
    # The plain average lands between the two passes (the symmetric position); shifting the mirrored pass by
    # twice the offset (6 px) lands where the direct pass does.
    assert abs(float(shifted[0, 0, 0] - direct[0, 0, 0])) < 0.05
    assert abs(float(plain[0, 0, 0] - direct[0, 0, 0])) > 2.5
