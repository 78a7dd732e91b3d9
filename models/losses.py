"""Heatmap losses as pure tensor functions.

They run on whatever device their inputs are on, compute in float32 (so bf16/fp16 predictions do not
lose the small target values), and never synchronise with the host (no ``.item()``, no boolean indexing
with data-dependent shapes), so a training step stays asynchronous on a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from models.bbox import aligned_box_giou


def keypoint_mse_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Keypoint-weighted mean squared error between heatmaps.

    pred, target: [B, K, h, w]; weights: [B, K] (0 for unlabelled or out-of-crop keypoints).
    Returns a scalar: ``mean over B, K, h, w of w_bk * (pred - target)^2``. The mean runs over every
    keypoint, weighted or not, so the loss scale does not jump with the number of labelled keypoints in a
    batch (the convention of HRNet and MMPose).
    """
    return per_keypoint_mse(pred, target, weights).mean()


def per_keypoint_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted MSE per keypoint, averaged over the heatmap cells: [B, K, h, w] -> [B, K]."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if weights.shape != pred.shape[:2]:
        raise ValueError(f"weights must be [B, K] = {tuple(pred.shape[:2])}, got {tuple(weights.shape)}")
    diff = (pred.float() - target.float()) ** 2
    return diff.mean(dim=(-2, -1)) * weights.float()


def ohkm_mse_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, topk: int = 8) -> torch.Tensor:
    """Online hard keypoint mining (Chen et al., CPN): average of each sample's ``topk`` largest losses.

    pred, target: [B, K, h, w]; weights: [B, K]. Returns a scalar. Zero-weight keypoints have loss 0 and
    are therefore picked last.
    """
    per_kpt = per_keypoint_mse(pred, target, weights)
    k = min(topk, per_kpt.shape[1])
    if k < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    return per_kpt.topk(k, dim=1).values.mean()


def adaptive_wing_map(pred: torch.Tensor, target: torch.Tensor, omega: float = 14.0, theta: float = 0.5,
                      epsilon: float = 1.0, alpha: float = 2.1) -> torch.Tensor:
    """Adaptive Wing loss per heatmap cell (Wang et al., ICCV 2019), elementwise, float32.

    With ``d = |pred - target|`` and the target-dependent exponent ``p = alpha - target``::

        d <  theta:  omega * log(1 + (d / epsilon) ** p)
        d >= theta:  A * d - C,   A = omega * p * (theta/epsilon) ** (p - 1) / (epsilon * (1 + (theta/epsilon) ** p))
                                  C = theta * A - omega * log(1 + (theta/epsilon) ** p)

    so the two pieces meet with equal value and slope at ``theta``. Near a background cell (target 0, p =
    2.1) small errors cost like a square (little pull on the many near-zero cells); near a peak (target 1,
    p = 1.1) they cost almost like |d| (a strong pull on the few foreground cells), which is what makes
    the loss sharper than MSE at the peaks. pred, target: same shape. Returns that shape.
    """
    pred, target = pred.float(), target.float()
    d = (pred - target).abs()
    p = alpha - target
    ratio = theta / epsilon
    a = omega * p * ratio ** (p - 1) / (epsilon * (1 + ratio ** p))
    c = theta * a - omega * torch.log1p(ratio ** p)
    return torch.where(d < theta, omega * torch.log1p((d / epsilon) ** p), a * d - c)


def adaptive_wing_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor,
                       foreground_weight: float = 10.0, foreground_threshold: float = 0.2) -> torch.Tensor:
    """Keypoint-weighted Adaptive Wing loss with the paper's weighted loss map.

    pred, target: [B, K, h, w]; weights: [B, K]. Cells within a 3x3 grey dilation of the target that reach
    ``foreground_threshold`` get ``foreground_weight + 1`` (1 elsewhere), so the few cells around a peak are
    not outvoted by the background. Averaged over every cell and keypoint, like :func:`keypoint_mse_loss`.
    Returns a scalar.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if weights.shape != pred.shape[:2]:
        raise ValueError(f"weights must be [B, K] = {tuple(pred.shape[:2])}, got {tuple(weights.shape)}")
    target = target.float()
    dilated = F.max_pool2d(target, kernel_size=3, stride=1, padding=1)
    cell_weight = 1.0 + foreground_weight * (dilated >= foreground_threshold).float()
    per_cell = adaptive_wing_map(pred, target) * cell_weight
    return (per_cell.mean(dim=(-2, -1)) * weights.float()).mean()


HEATMAP_LOSSES = ("mse", "ohkm", "awing")


def stacked_heatmap_loss(preds: Sequence[torch.Tensor], target: torch.Tensor, weights: torch.Tensor,
                         ohkm_topk: int | None = None, loss: str = "mse") -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Intermediate supervision: the same target for every hourglass stack, losses summed.

    preds: one [B, K, h, w] tensor per stack. ``loss``: ``"mse"`` (keypoint-weighted MSE), ``"ohkm"``
    (OHKM over ``ohkm_topk`` keypoints, 8 when None) or ``"awing"`` (Adaptive Wing with its weighted loss
    map). A truthy ``ohkm_topk`` with ``"mse"`` also selects OHKM.
    Returns ``(total, per_stack)`` as 0-dim tensors on the predictions' device.
    """
    if len(preds) == 0:
        raise ValueError("preds is empty: the head returned no heatmaps")
    if loss not in HEATMAP_LOSSES:
        raise ValueError(f"heatmap loss {loss!r} is not one of {HEATMAP_LOSSES}")
    if loss == "ohkm" or (loss == "mse" and ohkm_topk):
        per_stack = [ohkm_mse_loss(p, target, weights, ohkm_topk or 8) for p in preds]
    elif loss == "awing":
        per_stack = [adaptive_wing_loss(p, target, weights) for p in preds]
    else:
        per_stack = [keypoint_mse_loss(p, target, weights) for p in preds]
    return torch.stack(per_stack).sum(), per_stack


# ---------------------------------------------------------------------------------------------- detection
# CenterNet clamps sigmoid outputs to [1e-4, 1 - 1e-4] before the log; clamping the logits to the matching
# range does the same in float32 and also catches inf logits from an fp16 overflow.
FOCAL_PROB_EPS = 1e-4
_FOCAL_LOGIT_CLAMP = math.log((1 - FOCAL_PROB_EPS) / FOCAL_PROB_EPS)
# Target cells at or above this are an object's peak (the codec's Gaussians peak at exactly 1).
FOCAL_POSITIVE_THRESHOLD = 1.0 - 1e-4


def centernet_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0,
                         beta: float = 4.0) -> torch.Tensor:
    """Penalty-reduced pixel-wise focal loss of CenterNet/CornerNet on heatmap logits.

    logits: [B, C, h, w] (any float dtype; computed in float32), target: [B, C, h, w] Gaussians in [0, 1]
    with 1 at object centres. Returns a scalar: ``-(sum over positives of (1 - p)^alpha log p + sum over the
    rest of (1 - y)^beta p^alpha log(1 - p)) / max(number of positives, 1)``. With no object in the batch
    only the negative term remains, divided by 1: finite, and it still pushes the background down.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    x = logits.float().clamp(-_FOCAL_LOGIT_CLAMP, _FOCAL_LOGIT_CLAMP)
    y = target.float()
    p = torch.sigmoid(x)
    log_p, log_1mp = F.logsigmoid(x), F.logsigmoid(-x)
    pos = (y >= FOCAL_POSITIVE_THRESHOLD).float()
    pos_loss = (1 - p) ** alpha * log_p * pos
    neg_loss = (1 - y) ** beta * p ** alpha * log_1mp * (1 - pos)
    num_pos = pos.sum().clamp(min=1.0)
    return -(pos_loss.sum() + neg_loss.sum()) / num_pos


def masked_l1_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L1 over the real objects of a padded batch.

    pred, target: [B, N, D]; mask: [B, N] (1 for real objects, 0 for padding). Returns a scalar: the sum of
    ``|pred - target|`` over masked entries divided by ``max(D * number of objects, 1)`` (CenterNet's
    RegL1Loss), so 0 for a batch without objects.
    """
    if pred.shape != target.shape or mask.shape != pred.shape[:2]:
        raise ValueError(f"pred {tuple(pred.shape)}, target {tuple(target.shape)} and mask {tuple(mask.shape)} "
                         f"must be [B, N, D], [B, N, D] and [B, N]")
    m = mask.float()[..., None]
    diff = (pred.float() - target.float()).abs() * m
    return diff.sum() / (m.sum() * pred.shape[-1]).clamp(min=1.0)


def giou_loss(pred_boxes: torch.Tensor, target_boxes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - GIoU`` over the real objects of a padded batch (inclusive xyxy, +1 widths).

    pred_boxes, target_boxes: [B, N, 4]; mask: [B, N]. Returns a scalar in [0, 2]; 0 without objects.
    """
    if pred_boxes.shape != target_boxes.shape or mask.shape != pred_boxes.shape[:2]:
        raise ValueError(f"pred_boxes {tuple(pred_boxes.shape)}, target_boxes {tuple(target_boxes.shape)} and "
                         f"mask {tuple(mask.shape)} must be [B, N, 4], [B, N, 4] and [B, N]")
    m = mask.float()
    giou = aligned_box_giou(pred_boxes.float(), target_boxes.float())
    return ((1 - giou) * m).sum() / m.sum().clamp(min=1.0)


# ---------------------------------------------------------------------------------------------- ltrb head
def distribution_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Distribution Focal Loss (Li et al., "Generalized Focal Loss", 2020), elementwise.

    logits: [..., R + 1] one side's distribution over the distances ``0, 1, ..., R`` (in strides); target:
    [...] the true distance, in ``[0, R)`` (the caller clamps it, e.g. to ``R - 0.01`` as GFL and YOLOv8 do).
    With ``i = floor(y)``: ``-((i + 1 - y) log p_i + (y - i) log p_{i+1})``, the cross-entropy with the two-bin
    distribution whose expectation is ``y``; it is smallest (the entropy of those two weights) exactly when
    the softmax is that distribution. Returns [...] in float32.
    """
    logp = F.log_softmax(logits.float(), -1)
    y = target.float()
    left = y.floor().long().clamp(0, logits.shape[-1] - 2)
    w_right = y - left.float()
    lp = logp.gather(-1, left[..., None])[..., 0]
    rp = logp.gather(-1, (left + 1)[..., None])[..., 0]
    return -((1 - w_right) * lp + w_right * rp)


def quality_focal_loss(logits: torch.Tensor, target: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Quality Focal Loss (GFL), elementwise: ``BCE(sigmoid(x), y) x |y - sigmoid(x)|^beta``.

    logits, target: same shape (e.g. [B, P, C]); the target is the quality (IoU) in [0, 1] at a positive
    cell's class and 0 elsewhere. Zero at the perfect prediction ``sigmoid(x) = y``; with ``y`` in {0, 1} it
    is the focal loss (without its alpha). Returns float32 of the input shape (callers sum and normalise by
    the number of positives).
    """
    x, y = logits.float(), target.float()
    return F.binary_cross_entropy_with_logits(x, y, reduction="none") * (y - torch.sigmoid(x)).abs().pow(beta)


def varifocal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.75,
                   gamma: float = 2.0) -> torch.Tensor:
    """Varifocal Loss (Zhang et al., "VarifocalNet", 2021), elementwise: ``BCE(sigmoid(x), q) x w`` with
    ``w = q`` where ``q > 0`` (positives, weighted by their quality) and ``w = alpha sigmoid(x)^gamma`` where
    ``q = 0`` (negatives, down-weighted like the focal loss).

    logits, target: same shape; target ``q`` in [0, 1]. Minimal (zero gradient) at ``sigmoid(x) = q``; zero
    there only for ``q`` in {0, 1}. Returns float32 of the input shape.
    """
    x, q = logits.float(), target.float()
    weight = torch.where(q > 0, q, alpha * torch.sigmoid(x).pow(gamma))
    return F.binary_cross_entropy_with_logits(x, q, reduction="none") * weight
