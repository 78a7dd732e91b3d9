"""CenterNetCodec: hand-computed targets, CenterNet's radius, and decode(encode(boxes)) in the +1 convention."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.box_codec import CenterNetCodec, expected_peak_count, gaussian_radius


def _one(box, label=0, input_size=(128, 96), num_classes=3, device="cpu"):
    codec = CenterNetCodec(input_size, num_classes)
    boxes = torch.tensor([[box]], dtype=torch.float32, device=device)
    t = codec.encode(boxes, torch.tensor([[label]], device=device), torch.ones(1, 1, dtype=torch.bool, device=device))
    return codec, t


def test_gaussian_radius_hand_values():
    # CenterNet's three roots for a 10 x 5 cell box at min_overlap 0.7 (worked by hand):
    # r1 = (15 + sqrt(225 - 4 * 8.8235)) / 2 = 14.387, r2 = (30 + sqrt(900 - 16 * 15)) / 2 = 27.845,
    # r3 = (-21 + sqrt(441 + 4 * 2.8 * 15)) / 2 = 1.839  -> the smallest, 1.839.
    r = gaussian_radius(torch.tensor([10.0, 10.0]), torch.tensor([5.0, 10.0]), 0.7)
    # 10 x 10: r3 = (-28 + sqrt(784 + 336)) / 2 = 2.733.
    torch.testing.assert_close(r, torch.tensor([1.8389, 2.7332]), atol=1e-4, rtol=0)


def test_encode_hand_values(device):
    # Box pixels 10..29 x 20..59: w 20, h 40, centre (19.5, 39.5). Map coordinates u = (19.5 + 0.5) / 4 - 0.5
    # = 4.5, v = 9.5; nearest cell (5, 10) (round half up), offset (-0.5, -0.5); size (5, 10) cells.
    codec, t = _one([10, 20, 29, 59], label=1, device=device)
    assert codec.heatmap_size == (32, 24)
    assert t.index.tolist() == [[10 * 32 + 5]]
    torch.testing.assert_close(t.size.cpu(), torch.tensor([[[5.0, 10.0]]]))
    torch.testing.assert_close(t.offset.cpu(), torch.tensor([[[-0.5, -0.5]]]))
    assert t.mask.tolist() == [[1.0]]
    hm = t.heatmap[0].cpu()
    # Radius floor(1.839) = 1, sigma = (2 r + 1) / 6 = 0.5; only class 1 has a Gaussian.
    assert hm[0].abs().sum() == 0 and hm[2].abs().sum() == 0
    assert hm[1, 10, 5] == 1.0
    torch.testing.assert_close(hm[1, 10, 6], torch.tensor(math.exp(-1 / (2 * 0.25))))
    torch.testing.assert_close(hm[1, 11, 6], torch.tensor(math.exp(-2 / (2 * 0.25))))
    assert hm[1, 10, 7] == 0 and hm[1, 12, 5] == 0          # beyond the radius
    assert (hm[1] > 0).sum() == 9


def test_encode_masks_padding_empty_and_off_map_boxes_and_takes_the_max_per_class():
    codec = CenterNetCodec((64, 64), 2)
    boxes = torch.tensor([[[8, 8, 23, 23], [12, 8, 27, 23], [5, 5, 4, 9], [100, 100, 120, 120], [0, 0, 9, 9]]],
                         dtype=torch.float32)
    labels = torch.tensor([[0, 0, 0, 1, 1]])
    mask = torch.tensor([[True, True, True, True, False]])
    t = codec.encode(boxes, labels, mask)
    assert t.mask.tolist() == [[1.0, 1.0, 0.0, 0.0, 0.0]]    # empty box, centre off the map, padding
    assert t.heatmap[0, 1].abs().sum() == 0                   # class 1 had only masked boxes
    # Two class-0 boxes one cell apart: each peak stays exactly 1 (maximum, not sum).
    assert t.heatmap[0, 0, 4, 4] == 1.0 and t.heatmap[0, 0, 4, 5] == 1.0
    assert t.heatmap.max() == 1.0
    assert expected_peak_count(t).tolist() == [2]
    assert (t.size[0, 2:] == 0).all() and (t.offset[0, 2:] == 0).all()


def test_encode_zero_objects_gives_empty_targets():
    codec = CenterNetCodec((64, 64), 3)
    t = codec.encode(torch.zeros(2, 1, 4), torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 1, dtype=torch.bool))
    assert t.heatmap.shape == (2, 3, 16, 16) and t.heatmap.abs().sum() == 0 and t.mask.sum() == 0


def _random_boxes(rng, batch, n, codec):
    """Boxes whose centres fall in distinct cells (one object per cell, as decoding requires)."""
    w, h = codec.heatmap_size
    s = codec.stride
    boxes, labels = np.zeros((batch, n, 4)), np.zeros((batch, n), np.int64)
    for b in range(batch):
        cells = rng.choice(w * h, size=n, replace=False)
        for i, c in enumerate(cells):
            u, v = c % w + rng.uniform(-0.49, 0.49), c // w + rng.uniform(-0.49, 0.49)
            cx, cy = (u + 0.5) * s - 0.5, (v + 0.5) * s - 0.5
            bw, bh = rng.uniform(1, 60, 2)
            boxes[b, i] = [cx - (bw - 1) / 2, cy - (bh - 1) / 2, cx + (bw - 1) / 2, cy + (bh - 1) / 2]
            labels[b, i] = rng.integers(codec.num_classes)
    return torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels)


def test_decode_of_encode_recovers_boxes_in_the_plus_one_convention(device):
    codec = CenterNetCodec((128, 96), 3, topk=20)
    boxes, labels = _random_boxes(np.random.default_rng(0), 3, 7, codec)
    boxes, labels = boxes.to(device), labels.to(device)
    mask = torch.ones_like(labels, dtype=torch.bool)
    mask[2, 5:] = False                                        # padding in the last image
    t = codec.encode(boxes, labels, mask)
    size, offset = codec.dense_maps(t)
    out_boxes, scores, out_labels = codec.decode(t.heatmap, size, offset)
    for b in range(3):
        n = int(mask[b].sum())
        found = scores[b] > 0.99
        assert int(found.sum()) == n
        got = out_boxes[b][found]
        order = torch.cdist(got[:, :2], boxes[b, :n, :2]).argmin(1)
        torch.testing.assert_close(got, boxes[b, order], atol=1e-3, rtol=0)
        assert out_labels[b][found].tolist() == labels[b, order].tolist()
        # +1 widths: the decoded width is x2 - x1 + 1 = the encoded w.
        torch.testing.assert_close(got[:, 2] - got[:, 0] + 1, boxes[b, order, 2] - boxes[b, order, 0] + 1,
                                   atol=1e-3, rtol=0)


def test_decode_hand_built_maps_gives_the_plus_one_box():
    # One peak at cell (u=5, v=10) with offset (0.25, -0.25) and size (2.5, 5) cells: centre
    # x = (5.25 + 0.5) * 4 - 0.5 = 22.5, y = (9.75 + 0.5) * 4 - 0.5 = 40.5; size 10 x 20 pixels, so
    # x1 = 22.5 - 4.5 = 18, x2 = 27, y1 = 40.5 - 9.5 = 31, y2 = 50.
    codec = CenterNetCodec((128, 96), 2, topk=3)
    heat = torch.zeros(1, 2, 24, 32)
    heat[0, 1, 10, 5] = 0.8
    heat[0, 1, 10, 6] = 0.7                                   # a lower neighbour: not a peak
    size, offset = torch.zeros(1, 2, 24, 32), torch.zeros(1, 2, 24, 32)
    size[0, :, 10, 5] = torch.tensor([2.5, 5.0])
    offset[0, :, 10, 5] = torch.tensor([0.25, -0.25])
    boxes, scores, labels = codec.decode(heat, size, offset)
    torch.testing.assert_close(boxes[0, 0], torch.tensor([18.0, 31.0, 27.0, 50.0]))
    assert scores[0, 0] == pytest.approx(0.8) and labels[0, 0] == 1
    assert scores[0, 1] == 0                                   # the neighbour was suppressed by the 3x3 max-pool


def test_codec_rejects_bad_arguments():
    with pytest.raises(ValueError, match="multiple of the stride"):
        CenterNetCodec((130, 96), 3)
    codec = CenterNetCodec((64, 64), 3)
    with pytest.raises(ValueError, match=r"\[B, N, 4\]"):
        codec.encode(torch.zeros(2, 4), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="heatmap must be"):
        codec.decode(torch.zeros(1, 2, 16, 16), torch.zeros(1, 2, 16, 16), torch.zeros(1, 2, 16, 16))


@pytest.mark.parametrize("input_size", [(128, 96), (512, 512)])
def test_windowed_encode_equals_centernets_per_sample_loop(input_size):
    # The per-object numpy loop of CenterNet's data loader (bench/bench_detection.py, draw_umich_gaussian) on
    # boxes of 4-90% of the input, many at the border (windows cut by the map edge), some overlapping in one
    # class, with padding: the batched windowed Gaussians must give the same maps and entries.
    from bench.bench_detection import centernet_style_targets, make_boxes

    w, h = input_size
    boxes, labels, mask = make_boxes(6, 12, w, h, 3, seed=1)
    rng = np.random.default_rng(2)
    big = rng.uniform(0.5, 0.9, (6, 2)) * [w, h]
    boxes[:, 0, :2], boxes[:, 0, 2:] = 0, big - 1                        # a large box in each top-left corner
    boxes[:, 1, :2], boxes[:, 1, 2:] = [w, h] - big, [w - 1, h - 1]      # and one in the bottom-right corner
    mask[:, :2] = True
    codec = CenterNetCodec(input_size, 3)
    t = codec.encode(torch.from_numpy(boxes), torch.from_numpy(labels), torch.from_numpy(mask))
    hm, ind, wh, reg, m = centernet_style_targets(boxes, labels, mask, 3, *codec.heatmap_size, codec.stride)
    assert m.sum() > 20 and hm.max() == 1.0
    np.testing.assert_allclose(t.heatmap.numpy(), hm, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(t.mask.numpy(), m)
    np.testing.assert_array_equal(t.index.numpy()[m > 0], ind[m > 0])
    np.testing.assert_allclose(t.size.numpy(), wh, atol=1e-5)
    np.testing.assert_allclose(t.offset.numpy(), reg, atol=1e-5)


def test_window_radius_from_the_host_gives_the_same_targets():
    # The task sizes the drawing window from the loader's CPU boxes and hands it to encode; the targets must
    # be those encode computes by itself, and the radius is the largest of the valid boxes only.
    from bench.bench_detection import make_boxes

    boxes, labels, mask = (torch.from_numpy(a) for a in make_boxes(4, 10, 256, 192, 3, seed=3))
    codec = CenterNetCodec((256, 192), 3)
    radius = codec.window_radius(boxes, mask)
    size = boxes[..., 2:] - boxes[..., :2] + 1
    expected = gaussian_radius(torch.ceil(size[..., 1] / 4), torch.ceil(size[..., 0] / 4)).floor()[mask.bool()]
    assert radius == int(expected.max()) > 0
    a = codec.encode(boxes, labels, mask)
    b = codec.encode(boxes, labels, mask, window_radius=radius)
    for key in ("heatmap", "index", "size", "offset", "mask"):
        torch.testing.assert_close(getattr(a, key), getattr(b, key))
    # A huge padding box (mask 0) must not widen the window.
    padded = boxes.clone()
    padded[~mask.bool()] = torch.tensor([0.0, 0.0, 255.0, 191.0])
    assert codec.window_radius(padded, mask) == radius
