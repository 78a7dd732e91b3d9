"""models/hourglass.py: shapes on even and odd maps, intermediate supervision reaches the first stack only."""

from __future__ import annotations

import pytest
import torch

from models.hourglass import Hourglass, HourglassHead


@pytest.mark.parametrize("hw", [(16, 12), (15, 13), (9, 11)])
@pytest.mark.parametrize("num_stacks", [1, 3])
def test_head_returns_one_heatmap_per_stack(hw, num_stacks):
    head = HourglassHead(in_channels=24, num_keypoints=5, num_stacks=num_stacks, depth=3, channels=16)
    out = head(torch.randn(2, 24, *hw))
    assert isinstance(out, list) and len(out) == num_stacks
    assert all(o.shape == (2, 5, *hw) for o in out)


@pytest.mark.parametrize("hw", [(8, 8), (9, 15), (11, 9)])
def test_hourglass_preserves_shape(hw):
    hg = Hourglass(depth=3, channels=8)
    x = torch.randn(2, 8, *hw)
    assert hg(x).shape == x.shape


def test_loss_on_first_stack_reaches_first_hourglass_not_last_heatmap_conv():
    head = HourglassHead(in_channels=16, num_keypoints=3, num_stacks=3, depth=2, channels=16)
    out = head(torch.randn(2, 16, 8, 8))
    (out[0] ** 2).mean().backward()

    def grads(module):
        return [p.grad for p in module.parameters()]

    assert all(g is not None and g.abs().sum() > 0 for g in grads(head.heatmaps[0]))
    first_hg = [g for g in grads(head.hourglasses[0]) if g is not None]
    assert first_hg and sum(g.abs().sum() for g in first_hg) > 0
    # Nothing after stack 0's heatmaps is in stack 0's graph.
    for later in (head.hourglasses[-1], head.features[-1], head.heatmaps[-1], head.hourglasses[1],
                  head.merge_features[0], head.merge_heatmaps[0]):
        assert all(g is None for g in grads(later))


def test_last_stack_loss_reaches_every_stack():
    head = HourglassHead(in_channels=16, num_keypoints=3, num_stacks=2, depth=2, channels=16)
    (head(torch.randn(2, 16, 8, 8))[-1] ** 2).mean().backward()
    # Stack 0 feeds stack 1 through the merge convs, so the final loss trains it too.
    for module in (head.hourglasses[0], head.heatmaps[0], head.merge_features[0], head.merge_heatmaps[0]):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_depth_too_large_raises_with_message():
    head = HourglassHead(in_channels=16, num_keypoints=3, num_stacks=1, depth=3, channels=16)
    with pytest.raises(ValueError, match=r"feature map 7x16 is too small for hourglass depth 3 \(needs >= 8"):
        head(torch.randn(1, 16, 7, 16))
    head(torch.randn(1, 16, 8, 16))   # 8 = 2 ** 3 is enough


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="depth must be >= 1"):
        Hourglass(depth=0, channels=8)
    with pytest.raises(ValueError, match="num_stacks must be >= 1"):
        HourglassHead(in_channels=8, num_keypoints=2, num_stacks=0)


def test_heatmap_convs_start_near_zero():
    torch.manual_seed(0)
    head = HourglassHead(in_channels=32, num_keypoints=17, num_stacks=2, depth=2, channels=128)
    for conv in head.heatmaps:
        w = conv.weight
        assert w.shape == (17, 128, 1, 1)
        # std 0.001 over 2176 samples: the estimate is within a few percent.
        assert 0.0009 < w.std().item() < 0.0011
        assert abs(w.mean().item()) < 1e-4
        assert (conv.bias == 0).all()
    with torch.no_grad():
        out = head.eval()(torch.randn(2, 32, 8, 8))
    assert all(o.abs().max() < 0.1 for o in out)
