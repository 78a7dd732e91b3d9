"""CenterNet-style detector: input normalisation -> timm backbone -> FPN -> CenterNet head at stride 4."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.backbone import Backbone
from models.centernet import CenterNetHead
from models.fpn import FPN
from models.normalize import InputNormalizer
from models.pose import make_normalizer

DETECTION_STRIDE = 4


class CenterNetDetector(nn.Module):
    """Predicts class heatmaps, box sizes and centre offsets at stride 4 for whole images.

    forward(images [B, 3, H, W] uint8 or float in [0, 255]) -> {"heatmap": [B, C, H/4, W/4] logits,
    "size": [B, 2, H/4, W/4], "offset": [B, 2, H/4, W/4]}. H and W must be multiples of 4, and should be
    multiples of the backbone's coarsest stride so that every FPN level stays aligned.
    """

    def __init__(self, backbone: Backbone, neck: FPN, head: CenterNetHead, normalizer: InputNormalizer):
        super().__init__()
        if neck.strides[0] != DETECTION_STRIDE:
            raise ValueError(f"the CenterNet head reads the FPN's finest level, which must have stride "
                             f"{DETECTION_STRIDE}; got strides {neck.strides}")
        self.normalizer = normalizer
        self.backbone = backbone
        self.neck = neck
        self.head = head

    @property
    def max_stride(self) -> int:
        return max(self.backbone.strides)

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.neck(self.backbone(self.normalizer(images)))
        return self.head(feats[0])


def build_detector(num_classes: int, backbone: str = "resnet18", out_indices: Sequence[int] = (1, 2, 3, 4),
                   pretrained_path: str | None = None, fpn_channels: int = 128, head_channels: int = 64,
                   normalization: str = "backbone") -> CenterNetDetector:
    """Compose the parts from plain arguments (the detection task maps its config onto these names)."""
    bb = Backbone(backbone, out_indices=out_indices, pretrained_path=pretrained_path,
                  required_stride=DETECTION_STRIDE)
    neck = FPN(bb.channels, bb.strides, out_channels=fpn_channels, output_levels=[0])
    head = CenterNetHead(fpn_channels, num_classes, channels=head_channels)
    return CenterNetDetector(bb, neck, head, make_normalizer(normalization, bb))
