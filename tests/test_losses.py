"""models/losses.py: hand-computed weighted MSE, OHKM and Adaptive Wing, stacking, precision, gradients,
shape errors."""

from __future__ import annotations

import math

import pytest
import torch

from models.losses import (
    adaptive_wing_loss,
    adaptive_wing_map,
    keypoint_mse_loss,
    ohkm_mse_loss,
    per_keypoint_mse,
    stacked_heatmap_loss,
)


def _constant_maps(values, h: int = 2, w: int = 2, device="cpu") -> torch.Tensor:
    """[B, K] per-map constants -> [B, K, h, w] maps filled with them."""
    v = torch.tensor(values, dtype=torch.float32, device=device)
    return v[..., None, None].expand(*v.shape, h, w).contiguous()


def test_mse_hand_value(device):
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]],
                          [[0.0, 0.0], [0.0, 1.0]]]], device=device)
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]],
                            [[0.0, 0.0], [0.0, 3.0]]]], device=device)
    weights = torch.tensor([[1.0, 0.5]], device=device)
    # kpt 0: (0 + 4 + 9 + 16) / 4 = 7.25, weight 1; kpt 1: (2^2) / 4 = 1, weight 0.5 -> 0.5.
    # Mean over B * K = 2 keypoints: (7.25 + 0.5) / 2 = 3.875.
    loss = keypoint_mse_loss(pred, target, weights)
    assert loss.shape == () and loss.device.type == device.type
    torch.testing.assert_close(loss.cpu(), torch.tensor(3.875))
    torch.testing.assert_close(per_keypoint_mse(pred, target, weights).cpu(), torch.tensor([[7.25, 0.5]]))


def test_zero_weight_keypoints_do_not_contribute(device):
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(2, 3, 4, 5, generator=g).to(device)
    target = torch.rand(2, 3, 4, 5, generator=g).to(device)
    weights = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], device=device)
    changed = pred.clone()
    changed[0, 1] += 100.0
    changed[1, 0] = -7.0
    torch.testing.assert_close(keypoint_mse_loss(changed, target, weights), keypoint_mse_loss(pred, target, weights))
    # ...but the mean still counts them: dividing by all B * K = 6 keypoints, not by the 4 labelled ones.
    full = ((pred - target) ** 2).mean(dim=(-2, -1))
    torch.testing.assert_close(keypoint_mse_loss(pred, target, weights), (full * weights).sum() / 6)


def test_ohkm_picks_each_samples_topk(device):
    target = torch.zeros(2, 4, 2, 2, device=device)
    # A constant map c against a zero target has per-keypoint loss c^2.
    pred = _constant_maps([[1.0, 3.0, 2.0, 0.0],     # losses 1, 9, 4, 0      -> top 2: 9, 4
                           [4.0, 5.0, 6.0, 7.0]],    # losses 16, 25, 36, 49  -> top 2: 49, 36
                          device=device)
    ones = torch.ones(2, 4, device=device)
    # Per sample, not batch-wide (the batch-wide top 4 would be 49, 36, 25, 16 -> 31.5).
    torch.testing.assert_close(ohkm_mse_loss(pred, target, ones, topk=2).cpu(), torch.tensor((9 + 4 + 49 + 36) / 4))
    torch.testing.assert_close(ohkm_mse_loss(pred, target, ones, topk=3).cpu(),
                               torch.tensor((9 + 4 + 1 + 49 + 36 + 25) / 6))
    # Zero weight removes sample 0's hardest keypoint: its top 2 become 4, 1.
    weights = torch.tensor([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]], device=device)
    torch.testing.assert_close(ohkm_mse_loss(pred, target, weights, topk=2).cpu(),
                               torch.tensor((4 + 1 + 49 + 36) / 4))
    # topk >= K is plain MSE over the keypoints.
    torch.testing.assert_close(ohkm_mse_loss(pred, target, ones, topk=10), keypoint_mse_loss(pred, target, ones))
    with pytest.raises(ValueError, match="topk"):
        ohkm_mse_loss(pred, target, ones, topk=0)


def test_stacked_loss_sums_stacks_and_returns_each(device):
    target = torch.zeros(1, 2, 2, 2, device=device)
    weights = torch.ones(1, 2, device=device)
    preds = [_constant_maps([[1.0, 2.0]], device=device),   # (1 + 4) / 2 = 2.5
             _constant_maps([[0.0, 1.0]], device=device)]   # (0 + 1) / 2 = 0.5
    total, per_stack = stacked_heatmap_loss(preds, target, weights)
    assert len(per_stack) == 2 and total.device.type == device.type
    torch.testing.assert_close(torch.stack(per_stack).cpu(), torch.tensor([2.5, 0.5]))
    torch.testing.assert_close(total.cpu(), torch.tensor(3.0))
    # With OHKM top-1: the worst keypoint per stack: 4 and 1.
    total, per_stack = stacked_heatmap_loss(preds, target, weights, ohkm_topk=1)
    torch.testing.assert_close(torch.stack(per_stack).cpu(), torch.tensor([4.0, 1.0]))
    torch.testing.assert_close(total.cpu(), torch.tensor(5.0))
    with pytest.raises(ValueError, match="empty"):
        stacked_heatmap_loss([], target, weights)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_predictions_give_float32_loss(device, dtype):
    g = torch.Generator().manual_seed(1)
    target = torch.rand(2, 3, 8, 8, generator=g).to(device) * 1e-2     # small target values
    pred = (torch.rand(2, 3, 8, 8, generator=g) * 1e-2).to(device=device, dtype=dtype)
    weights = torch.ones(2, 3, device=device)
    for loss in (keypoint_mse_loss(pred, target, weights), ohkm_mse_loss(pred, target, weights, 2),
                 stacked_heatmap_loss([pred, pred], target, weights)[0]):
        assert loss.dtype == torch.float32
    # The loss is the float32 loss of the (rounded) predictions: no precision lost in the difference.
    expected = ((pred.float() - target) ** 2).mean()
    torch.testing.assert_close(keypoint_mse_loss(pred, target, weights), expected)


def test_gradient_equals_closed_form(device):
    g = torch.Generator().manual_seed(2)
    pred = torch.rand(2, 3, 4, 4, generator=g).to(device).requires_grad_(True)
    target = torch.rand(2, 3, 4, 4, generator=g).to(device)
    weights = torch.tensor([[1.0, 0.0, 0.5], [2.0, 1.0, 0.0]], device=device)
    keypoint_mse_loss(pred, target, weights).backward()
    # d/dpred of mean_{b,k,y,x} w_bk (pred - target)^2 = 2 w_bk (pred - target) / (B K h w)
    expected = 2 * weights[..., None, None] * (pred.detach() - target) / pred.numel()
    torch.testing.assert_close(pred.grad, expected)
    assert (pred.grad[0, 1] == 0).all() and (pred.grad[1, 2] == 0).all()


def test_gradient_flows_through_ohkm_to_selected_keypoints_only(device):
    target = torch.zeros(1, 3, 2, 2, device=device)
    pred = _constant_maps([[1.0, 3.0, 2.0]], device=device).requires_grad_(True)
    ohkm_mse_loss(pred, target, torch.ones(1, 3, device=device), topk=2).backward()
    nonzero = pred.grad.abs().sum(dim=(-2, -1))[0] > 0
    assert nonzero.tolist() == [False, True, True]


def test_shape_errors_raise_with_clear_messages(device):
    pred = torch.zeros(2, 3, 4, 4, device=device)
    with pytest.raises(ValueError, match=r"pred \(2, 3, 4, 4\) and target \(2, 3, 4, 5\) differ in shape"):
        keypoint_mse_loss(pred, torch.zeros(2, 3, 4, 5, device=device), torch.ones(2, 3, device=device))
    with pytest.raises(ValueError, match=r"weights must be \[B, K\] = \(2, 3\), got \(2, 3, 1\)"):
        keypoint_mse_loss(pred, pred, torch.ones(2, 3, 1, device=device))
    with pytest.raises(ValueError, match=r"weights must be \[B, K\] = \(2, 3\), got \(3,\)"):
        ohkm_mse_loss(pred, pred, torch.ones(3, device=device))


# ---------------------------------------------------------------------------------------------- Adaptive Wing
def test_adaptive_wing_hand_values():
    # omega 14, theta 0.5, epsilon 1, alpha 2.1 (the paper's).
    pred = torch.tensor([0.3, 0.0, 1.0, 0.0])
    target = torch.tensor([0.0, 1.0, 0.5, 0.0])
    # 0.3 on background: 14 * log(1 + 0.3 ** 2.1) = 1.07475
    # 1.0 missed on a peak (d = 1 >= theta, p = 1.1): A = 14 * 1.1 * 0.5**0.1 / (1 + 0.5**1.1) = 9.7993,
    #   C = 0.5 * A - 14 * log(1 + 0.5**1.1) = -0.4601, so A - C = 10.2594
    # 0.5 off a half-peak (d = theta exactly, p = 1.6): A * 0.5 - C = 14 * log(1 + 0.5**1.6) = 3.9912
    expected = torch.tensor([14 * math.log(1 + 0.3 ** 2.1), 10.2594, 14 * math.log(1 + 0.5 ** 1.6), 0.0])
    torch.testing.assert_close(adaptive_wing_map(pred, target), expected, atol=1e-4, rtol=0)


def test_adaptive_wing_is_continuous_and_smooth_at_theta():
    target = torch.tensor([0.0, 0.3, 1.0])
    for t in target:
        d = torch.tensor([0.5 - 1e-4, 0.5 + 1e-4], dtype=torch.float64)
        below, above = adaptive_wing_map(t + d[:1], t.expand(1)), adaptive_wing_map(t + d[1:], t.expand(1))
        assert abs(float(above - below)) < 1e-2
        x = (t + torch.tensor([0.5 - 1e-3, 0.5 + 1e-3])).requires_grad_()
        adaptive_wing_map(x, t.expand(2)).sum().backward()
        assert abs(float(x.grad[0] - x.grad[1])) < 0.05 * float(x.grad[1])


def test_adaptive_wing_loss_weights_the_peak_region_and_the_keypoints():
    target = torch.zeros(1, 2, 8, 8)
    target[0, :, 4, 4] = 1.0
    pred = torch.zeros(1, 2, 8, 8)
    pred[0, :, 0, 0] = 0.3                 # an error far from the peak: weight 1
    pred[0, :, 4, 5] = 0.3                 # the same error next to the peak: weight 11
    weights = torch.tensor([[1.0, 0.0]])
    # Keypoint 0: (1 + 11) x map(0.3 on 0) + the missed peak map(0 on 1) x 11; keypoint 1 has weight 0.
    cell = adaptive_wing_map(torch.tensor([0.3, 0.0]), torch.tensor([0.0, 1.0]))
    expected = (12 * cell[0] + 11 * cell[1]) / 64 / 2
    torch.testing.assert_close(adaptive_wing_loss(pred, target, weights), expected)
    assert float(adaptive_wing_loss(target, target, torch.ones(1, 2))) == 0.0


def test_stacked_loss_selects_the_heatmap_loss():
    g = torch.Generator().manual_seed(0)
    preds = [torch.rand(2, 3, 6, 6, generator=g) for _ in range(2)]
    target, weights = torch.rand(2, 3, 6, 6, generator=g), torch.ones(2, 3)
    total, per_stack = stacked_heatmap_loss(preds, target, weights, loss="awing")
    torch.testing.assert_close(per_stack[1], adaptive_wing_loss(preds[1], target, weights))
    torch.testing.assert_close(stacked_heatmap_loss(preds, target, weights, loss="ohkm")[1][0],
                               ohkm_mse_loss(preds[0], target, weights, 8))
    with pytest.raises(ValueError, match="'l1' is not one of"):
        stacked_heatmap_loss(preds, target, weights, loss="l1")
