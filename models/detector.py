"""CenterNet-style detector: input normalisation -> timm backbone -> FPN -> CenterNet head at stride 4."""

from __future__ import annotations

from collections.abc import Sequence

from models.centernet import CenterNetHead
from models.trunk import FPNHeadModel, build_trunk

DETECTION_STRIDE = 4


class CenterNetDetector(FPNHeadModel):
    """Predicts class heatmaps, box sizes and centre offsets at stride 4 for whole images.

    forward(images [B, 3, H, W] uint8 or float in [0, 255]) -> {"heatmap": [B, C, H/4, W/4] logits,
    "size": [B, 2, H/4, W/4], "offset": [B, 2, H/4, W/4]}. H and W must be multiples of 4, and should be
    multiples of the backbone's coarsest stride so that every FPN level stays aligned.
    """

    stride = DETECTION_STRIDE
    head_name = "CenterNet head"

    @property
    def num_classes(self) -> int:
        return self.head.num_classes


def build_detector(num_classes: int, backbone: str = "resnet18", out_indices: Sequence[int] = (1, 2, 3, 4),
                   pretrained_path: str | None = None, fpn_channels: int = 128, head_channels: int = 64,
                   normalization: str = "backbone", pretrained: bool = False) -> CenterNetDetector:
    """Compose the parts from plain arguments (the detection task maps its config onto these names)."""
    bb, neck, normalizer = build_trunk(backbone, out_indices, pretrained_path, fpn_channels, normalization,
                                       DETECTION_STRIDE, pretrained=pretrained)
    head = CenterNetHead(fpn_channels, num_classes, channels=head_channels)
    return CenterNetDetector(bb, neck, head, normalizer)
