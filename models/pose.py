"""Top-down keypoint model: input normalisation -> timm backbone -> FPN -> stacked hourglass heatmaps."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.backbone import Backbone
from models.fpn import FPN
from models.hourglass import HourglassHead
from models.normalize import InputNormalizer

HEATMAP_STRIDE = 4


class TopDownPoseModel(nn.Module):
    """Predicts K heatmaps at stride 4 for each crop.

    forward(images [B, 3, H, W] uint8 or float in [0, 255]) -> list of ``num_stacks`` [B, K, H/4, W/4];
    the last is the final prediction. H and W should be multiples of the backbone's coarsest stride so that
    the heatmaps stay aligned with the input (docs/conventions.md).
    """

    def __init__(self, backbone: Backbone, neck: FPN, head: HourglassHead, normalizer: InputNormalizer):
        super().__init__()
        if neck.strides[0] != HEATMAP_STRIDE:
            raise ValueError(f"the heatmap head reads the FPN's finest level, which must have stride "
                             f"{HEATMAP_STRIDE}; got strides {neck.strides}")
        self.normalizer = normalizer
        self.backbone = backbone
        self.neck = neck
        self.head = head

    @property
    def max_stride(self) -> int:
        return max(self.backbone.strides)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        feats = self.neck(self.backbone(self.normalizer(images)))
        return self.head(feats[0])


def build_pose_model(num_keypoints: int, backbone: str = "resnet18", out_indices: Sequence[int] = (1, 2, 3, 4),
                     pretrained_path: str | None = None, fpn_channels: int = 128, num_stacks: int = 2,
                     depth: int = 3, head_channels: int = 128, num_blocks: int = 1,
                     normalization: str = "backbone") -> TopDownPoseModel:
    """Compose the parts from plain arguments (configs map onto these names in ``engine.builders``).

    normalization: ``"backbone"`` (the backbone's mean/std) or ``"unit"`` (plain [0, 1] scaling).
    """
    bb = Backbone(backbone, out_indices=out_indices, pretrained_path=pretrained_path, required_stride=HEATMAP_STRIDE)
    neck = FPN(bb.channels, bb.strides, out_channels=fpn_channels, output_levels=[0])
    head = HourglassHead(fpn_channels, num_keypoints, num_stacks=num_stacks, depth=depth,
                         channels=head_channels, num_blocks=num_blocks)
    return TopDownPoseModel(bb, neck, head, make_normalizer(normalization, bb))


def make_normalizer(normalization: str, backbone: Backbone) -> InputNormalizer:
    if normalization == "backbone":
        return InputNormalizer(backbone.mean, backbone.std)
    if normalization == "unit":
        return InputNormalizer((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    raise ValueError(f"model.normalization={normalization!r}: use 'backbone' (mean/std from timm's "
                     f"pretrained_cfg) or 'unit' ([0, 1] scaling)")
