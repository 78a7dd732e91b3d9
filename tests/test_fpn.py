"""models/fpn.py: equal to torchvision.ops.FeaturePyramidNetwork with the same weights, on even and odd sizes."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torchvision.ops import FeaturePyramidNetwork

from models.fpn import FPN

IN_CHANNELS = [8, 16, 24, 32]
STRIDES = [4, 8, 16, 32]
OUT = 12


def _torchvision_twin(ours: FPN) -> FeaturePyramidNetwork:
    """torchvision's FPN carrying our weights: lateral_convs[i] -> inner_blocks[i][0], output_convs -> layer_blocks."""
    tv = FeaturePyramidNetwork(ours.in_channels, ours.out_channels)
    with torch.no_grad():
        for i, lateral in enumerate(ours.lateral_convs):
            tv.inner_blocks[i][0].weight.copy_(lateral.weight)
            tv.inner_blocks[i][0].bias.copy_(lateral.bias)
        for i, conv in ours.output_convs.items():
            tv.layer_blocks[int(i)][0].weight.copy_(conv.weight)
            tv.layer_blocks[int(i)][0].bias.copy_(conv.bias)
    return tv


def _feats(sizes, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, h, w, generator=g) for c, (h, w) in zip(IN_CHANNELS, sizes)]


@pytest.mark.parametrize("sizes", [
    [(16, 12), (8, 6), (4, 3), (2, 2)],        # even (a 64x48 input)
    [(15, 13), (8, 7), (4, 4), (2, 2)],        # odd: each level is ceil(previous / 2)
    [(9, 5), (5, 3), (3, 2), (2, 1)],
])
def test_equals_torchvision_fpn_with_same_weights(sizes):
    torch.manual_seed(0)
    ours = FPN(IN_CHANNELS, STRIDES, out_channels=OUT)
    # Non-zero biases, so that a dropped or misplaced bias shows.
    with torch.no_grad():
        for p in ours.parameters():
            if p.ndim == 1:
                p.normal_()
    tv = _torchvision_twin(ours)
    feats = _feats(sizes)
    out = ours(feats)
    ref = tv(OrderedDict((str(i), f) for i, f in enumerate(feats)))
    assert len(out) == len(ref) == 4
    for o, r, (h, w) in zip(out, ref.values(), sizes):
        assert o.shape == (2, OUT, h, w)
        torch.testing.assert_close(o, r)


def test_output_levels_builds_and_returns_only_those():
    torch.manual_seed(1)
    full = FPN(IN_CHANNELS, STRIDES, out_channels=OUT)
    for levels in ([0], [0, 2]):
        part = FPN(IN_CHANNELS, STRIDES, out_channels=OUT, output_levels=levels)
        assert sorted(part.output_convs.keys()) == [str(i) for i in levels]
        assert part.strides == [STRIDES[i] for i in levels]
        # Its parameters are a subset of the full FPN's: copy them over and compare outputs.
        missing, unexpected = part.load_state_dict(full.state_dict(), strict=False)
        assert missing == []
        assert all(k.startswith("output_convs.") for k in unexpected)
        feats = _feats([(15, 13), (8, 7), (4, 4), (2, 2)], seed=3)
        full_out = full(feats)
        part_out = part(feats)
        assert len(part_out) == len(levels)
        for o, i in zip(part_out, levels):
            torch.testing.assert_close(o, full_out[i])
        # Every parameter is used (DistributedDataParallel requires it).
        part.zero_grad()
        sum(o.sum() for o in part(feats)).backward()
        assert all(p.grad is not None for p in part.parameters())


def test_non_doubling_strides_raise_with_strides():
    with pytest.raises(ValueError, match=r"\[4, 8, 32\].*level 2 has stride 32, expected 16"):
        FPN([8, 16, 32], [4, 8, 32])
    with pytest.raises(ValueError, match="equal length"):
        FPN([8, 16], [4, 8, 16])
    with pytest.raises(ValueError, match="output_levels"):
        FPN([8, 16], [4, 8], output_levels=[2])


def test_wrong_number_of_inputs_raises():
    fpn = FPN(IN_CHANNELS, STRIDES, out_channels=OUT)
    with pytest.raises(ValueError, match="built for 4 levels got 3 feature maps"):
        fpn(_feats([(16, 12), (8, 6), (4, 3)]))
