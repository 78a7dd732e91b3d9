"""CenterNet head and detector, and the detection losses (focal, masked L1, GIoU) against references."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from models import bbox
from models.centernet import HEATMAP_PRIOR, CenterNetHead
from models.detector import build_detector
from models.losses import centernet_focal_loss, giou_loss, masked_l1_loss


def test_head_shapes_and_prior():
    head = CenterNetHead(16, num_classes=3, channels=8)
    out = head(torch.randn(2, 16, 8, 12))
    assert out["heatmap"].shape == (2, 3, 8, 12) and out["size"].shape == (2, 2, 8, 12)
    assert out["offset"].shape == (2, 2, 8, 12)
    # The heatmap starts near the prior everywhere (small last-layer weights, prior bias).
    assert torch.sigmoid(out["heatmap"]).sub(HEATMAP_PRIOR).abs().max() < 0.02


def test_detector_outputs_at_stride_4():
    model = build_detector(2, out_indices=(1, 2, 3), fpn_channels=16, head_channels=8)
    out = model(torch.randint(0, 255, (2, 3, 64, 96), dtype=torch.uint8))
    assert out["heatmap"].shape == (2, 2, 16, 24) and model.max_stride == 16
    with pytest.raises(ValueError, match="stride 4"):
        build_detector(2, out_indices=(2, 3))


# ---------------------------------------------------------------------------------------------- focal loss
def _reference_focal(pred_prob: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """CenterNet's _neg_loss (src/lib/models/losses.py), on clamped probabilities, written out plainly."""
    pos = gt.eq(1).float()
    neg = gt.lt(1).float()
    pos_loss = (torch.log(pred_prob) * (1 - pred_prob) ** 2 * pos).sum()
    neg_loss = (torch.log(1 - pred_prob) * pred_prob ** 2 * (1 - gt) ** 4 * neg).sum()
    num_pos = pos.sum()
    return -neg_loss if num_pos == 0 else -(pos_loss + neg_loss) / num_pos


def test_focal_loss_equals_centernets(device):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=g) * 3
    gt = torch.rand(2, 3, 8, 8, generator=g) * 0.9
    gt[0, 1, 3, 4] = 1.0
    gt[1, 2, 0, 0] = 1.0
    prob = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    ours = centernet_focal_loss(logits.to(device), gt.to(device))
    torch.testing.assert_close(ours.cpu(), _reference_focal(prob.double(), gt.double()).float(), rtol=1e-4, atol=1e-5)


def test_focal_loss_hand_value_one_positive_one_negative():
    # Positive cell at p = 0.5: (1 - 0.5)^2 * log 0.5; negative cell with y = 0.5 at p = 0.5:
    # (1 - 0.5)^4 * 0.5^2 * log 0.5. Divided by one positive.
    logits = torch.zeros(1, 1, 1, 2)
    gt = torch.tensor([[[[1.0, 0.5]]]])
    expected = -(0.25 * math.log(0.5) + 0.0625 * 0.25 * math.log(0.5))
    assert centernet_focal_loss(logits, gt).item() == pytest.approx(expected, rel=1e-6)


def test_focal_loss_without_objects_is_finite_and_positive():
    logits = torch.full((2, 3, 8, 8), 1.0, requires_grad=True)
    loss = centernet_focal_loss(logits, torch.zeros(2, 3, 8, 8))
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad > 0).all()     # pushes the background down


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_focal_loss_is_stable_in_half_precision(dtype):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 16, 16, generator=g) * 4
    gt = torch.rand(2, 3, 16, 16, generator=g) ** 4
    gt[0, 0, 5, 5] = 1.0
    full = centernet_focal_loss(logits, gt)
    # Predictions in half precision (autocast); targets stay float32 as the codec builds them (bf16 would
    # round 0.998 to a false peak of 1).
    half = centernet_focal_loss(logits.to(dtype), gt)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, rtol=0.05, atol=0.05)
    # Overflowed logits (inf in fp16) stay finite thanks to the clamp.
    extreme = torch.tensor([[[[float("inf"), -float("inf"), 70000.0]]]]).to(dtype)
    assert torch.isfinite(centernet_focal_loss(extreme, torch.tensor([[[[0.0, 1.0, 0.2]]]])))


# ---------------------------------------------------------------------------------------------- L1, GIoU
def test_masked_l1_hand_value_and_zero_objects():
    pred = torch.tensor([[[1.0, 2.0], [5.0, 5.0]], [[0.0, 0.0], [9.0, 9.0]]])
    target = torch.tensor([[[2.0, 4.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # |1-2| + |2-4| + |0-1| + |0-1| = 5 over 2 objects x 2 values.
    assert masked_l1_loss(pred, target, mask).item() == pytest.approx(5 / 4)
    assert masked_l1_loss(pred, target, torch.zeros(2, 2)).item() == 0.0


def test_giou_equals_torchvision_on_shifted_boxes(device):
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(2, 10, 2, generator=g) * 40
    a = torch.cat([xy, xy + torch.rand(2, 10, 2, generator=g) * 30], -1)
    xy = torch.rand(2, 10, 2, generator=g) * 40
    b = torch.cat([xy, xy + torch.rand(2, 10, 2, generator=g) * 30], -1)
    ours = bbox.aligned_box_giou(a.to(device), b.to(device)).cpu()
    ta, tb = bbox.to_torchvision_boxes(a), bbox.to_torchvision_boxes(b)
    ref = torch.stack([torchvision.ops.generalized_box_iou(ta[i], tb[i]).diagonal() for i in range(2)])
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    mask = torch.tensor([[1.0] * 10, [1.0] * 5 + [0.0] * 5])
    expected = ((1 - ref) * mask).sum() / mask.sum()
    torch.testing.assert_close(giou_loss(a, b, mask), expected)
    assert giou_loss(a, a, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert giou_loss(a, b, torch.zeros(2, 10)).item() == 0.0
