"""Top-down keypoint model: input normalisation -> timm backbone -> FPN -> stacked hourglass heatmaps."""

from __future__ import annotations

from collections.abc import Sequence

from models.hourglass import HourglassHead
from models.trunk import FPNHeadModel, build_trunk
from models.trunk import make_normalizer as make_normalizer  # re-exported: models.pose.make_normalizer

HEATMAP_STRIDE = 4


class TopDownPoseModel(FPNHeadModel):
    """Predicts K heatmaps at stride 4 for each crop.

    forward(images [B, 3, H, W] uint8 or float in [0, 255]) -> list of ``num_stacks`` [B, K, H/4, W/4];
    the last is the final prediction. H and W should be multiples of the backbone's coarsest stride so that
    the heatmaps stay aligned with the input (docs/conventions.md).
    """

    stride = HEATMAP_STRIDE
    head_name = "heatmap head"


def build_pose_model(num_keypoints: int, backbone: str = "resnet18", out_indices: Sequence[int] = (1, 2, 3, 4),
                     pretrained_path: str | None = None, fpn_channels: int = 128, num_stacks: int = 2,
                     depth: int = 3, head_channels: int = 128, num_blocks: int = 1,
                     normalization: str = "backbone", pretrained: bool = False) -> TopDownPoseModel:
    """Compose the parts from plain arguments (the keypoint task maps its config onto these names).

    normalization: ``"backbone"`` (the backbone's mean/std) or ``"unit"`` (plain [0, 1] scaling).
    pretrained: timm's pretrained backbone weights (downloaded and cached by timm).
    """
    bb, neck, normalizer = build_trunk(backbone, out_indices, pretrained_path, fpn_channels, normalization,
                                       HEATMAP_STRIDE, pretrained=pretrained)
    head = HourglassHead(fpn_channels, num_keypoints, num_stacks=num_stacks, depth=depth,
                         channels=head_channels, num_blocks=num_blocks)
    return TopDownPoseModel(bb, neck, head, normalizer)
