"""Heatmap distillation: a trained keypoint model (the teacher) supervises a smaller one (the student) with its
own heatmaps, beside the labels' Gaussians (``loss.distill_teacher``, ``loss.distill_weight``).

The teacher sees the student's training crop, resized to the teacher's own input size (a model trained at
192 x 192 loses much of its accuracy on a 128 x 128 crop, and gives it back on the same crop upsampled), and
its final-stack heatmaps are resized to the student's heatmap grid. Both grids cover the same crop, so
``align_corners=False`` keeps cell centres where they belong: cell ``i`` of an ``n``-cell grid over a crop of
``W`` pixels has its centre at input pixel ``(i + 0.5) * W / n - 0.5`` on either grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from engine.checkpoint import check_checkpoint_task, checkpoint_weights, load_checkpoint, load_model_state
from engine.config.loading import config_from_containers
from engine.config.sections import check_common_ranges
from engine.tasks.keypoints.schema import KeypointConfig, check_ranges
from engine.tasks.keypoints.task import KeypointMeta
from models.errors import CheckpointError


class HeatmapTeacher(nn.Module):
    """A frozen keypoint model that answers a batch of student crops with heatmaps on the student's grid.

    model: the teacher (its forward returns one [B, K, h, w] heatmap tensor per stack; the last is used).
    input_size: the teacher's (width, height); the crops are resized to it (bilinear) when they differ.
    """

    def __init__(self, model: nn.Module, input_size: tuple[int, int]):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.input_size = (int(input_size[0]), int(input_size[1]))

    def train(self, mode: bool = True) -> HeatmapTeacher:
        # The teacher stays in eval mode (its batch-norm statistics are fixed) whatever the trainer sets.
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, heatmap_size: tuple[int, int]) -> torch.Tensor:
        """images: [B, 3, H, W], uint8 or float in [0, 255] (the student's crops). heatmap_size: the student's
        (h, w). Returns the teacher's final heatmaps [B, K, h, w] in float32, clamped to [0, 1] (the range of
        the labels' Gaussians, which the heatmap losses expect)."""
        w, h = self.input_size
        x = images
        if tuple(images.shape[-2:]) != (h, w):
            x = F.interpolate(images.float(), size=(h, w), mode="bilinear", align_corners=False)
        heatmaps = self.model(x)[-1].float()
        if tuple(heatmaps.shape[-2:]) != tuple(heatmap_size):
            # antialias: shrinking a grid averages over the cells that fall into one, instead of sampling two.
            heatmaps = F.interpolate(heatmaps, size=tuple(heatmap_size), mode="bilinear", align_corners=False,
                                     antialias=heatmaps.shape[-1] > heatmap_size[-1])
        return heatmaps.clamp_(0.0, 1.0)


def load_heatmap_teacher(path: str, meta: KeypointMeta, build_model, weights: str = "model") -> HeatmapTeacher:
    """The teacher in ``path`` (a keypoints checkpoint of ``tools.train``), checked against the student's
    keypoints. ``build_model(cfg, num_keypoints)`` builds an untrained model of a config (the task's own
    builder, passed in so that this module does not import the one that imports it). ``weights``: ``model``
    or ``ema``."""
    source = "loss.distill_teacher"
    state = load_checkpoint(path)
    check_checkpoint_task(state, path, "keypoints", source)
    if "config" not in state or "meta" not in state:
        raise CheckpointError(f"{source}={path} carries no config or keypoint meta; give a last.pt or best.pt "
                              f"written by tools.train for the keypoints task")
    saved = list(state["meta"].get("keypoint_names", []))
    if saved != list(meta.keypoint_names):
        raise CheckpointError(f"{source}={path} predicts other keypoints than the training data names "
                              f"({len(saved)} vs {len(meta.keypoint_names)}; its first: {saved[:4]}); a teacher "
                              f"must be trained on the same keypoints, in the same order")
    cfg = config_from_containers(KeypointConfig, [(f"{path} (its config)", OmegaConf.create(state["config"]))],
                                 lambda c: check_common_ranges(c) + check_ranges(c))
    model = build_model(cfg, len(saved), pretrained=False)
    load_model_state(model, checkpoint_weights(state, path, weights), source=path)
    return HeatmapTeacher(model, tuple(cfg.data.input_size))
