"""Heatmap losses as pure tensor functions.

They run on whatever device their inputs are on, compute in float32 (so bf16/fp16 predictions do not
lose the small target values), and never synchronise with the host (no ``.item()``, no boolean indexing
with data-dependent shapes), so a training step stays asynchronous on a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


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


def stacked_heatmap_loss(preds: Sequence[torch.Tensor], target: torch.Tensor, weights: torch.Tensor,
                         ohkm_topk: int | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Intermediate supervision: the same target for every hourglass stack, losses summed.

    preds: one [B, K, h, w] tensor per stack. ``ohkm_topk`` switches the per-stack loss to OHKM.
    Returns ``(total, per_stack)`` as 0-dim tensors on the predictions' device.
    """
    if len(preds) == 0:
        raise ValueError("preds is empty: the head returned no heatmaps")
    if ohkm_topk:
        per_stack = [ohkm_mse_loss(p, target, weights, ohkm_topk) for p in preds]
    else:
        per_stack = [keypoint_mse_loss(p, target, weights) for p in preds]
    return torch.stack(per_stack).sum(), per_stack
