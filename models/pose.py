"""Top-down keypoint model: input normalisation -> timm backbone -> FPN -> stacked hourglass heatmaps."""

from __future__ import annotations

from collections.abc import Sequence

from models.hourglass import HourglassHead
from models.trunk import FPNHeadModel, build_trunk
from models.trunk import make_normalizer as make_normalizer  # re-exported: models.pose.make_normalizer

HEATMAP_STRIDE = 4                 # the default; 2 with one more FPN level (``heatmap_stride=2``)
HEATMAP_STRIDES = (2, 4)


class TopDownPoseModel(FPNHeadModel):
    """Predicts K heatmaps at stride ``s`` (4, or 2 when the FPN's finest level is the backbone's stride-2
    level) for each crop.

    forward(images [B, 3, H, W] uint8 or float in [0, 255]) -> list of ``num_stacks`` [B, K, H/s, W/s];
    the last is the final prediction. H and W should be multiples of the backbone's coarsest stride so that
    the heatmaps stay aligned with the input (docs/conventions.md).
    """

    head_name = "heatmap head"

    def __init__(self, backbone, neck, head, normalizer, stride: int = HEATMAP_STRIDE):
        self.stride = stride
        super().__init__(backbone, neck, head, normalizer)


def build_pose_model(num_keypoints: int, backbone: str = "resnet18", out_indices: Sequence[int] = (1, 2, 3, 4),
                     pretrained_path: str | None = None, fpn_channels: int = 128, num_stacks: int = 2,
                     depth: int = 3, head_channels: int = 128, num_blocks: int = 1,
                     normalization: str = "backbone", pretrained: bool = False,
                     heatmap_stride: int = HEATMAP_STRIDE, drop_path_rate: float = 0.0) -> TopDownPoseModel:
    """Compose the parts from plain arguments (the keypoint task maps its config onto these names).

    heatmap_stride: 4, or 2 for heatmaps at twice the resolution: ``out_indices`` must then start at the
    backbone's stride-2 level (0 for timm's ResNets), so the FPN's top-down path adds one more 2x step and the
    hourglasses run at stride 2 (about 4x their stride-4 cost).

    normalization: ``"backbone"`` (the backbone's mean/std) or ``"unit"`` (plain [0, 1] scaling).
    pretrained: timm's pretrained backbone weights (downloaded and cached by timm).
    drop_path_rate: stochastic depth in the backbone (``build_trunk``); a regulariser for small training sets.
    """
    if heatmap_stride not in HEATMAP_STRIDES:
        raise ValueError(f"heatmap_stride={heatmap_stride}: use one of {HEATMAP_STRIDES}")
    bb, neck, normalizer = build_trunk(backbone, out_indices, pretrained_path, fpn_channels, normalization,
                                       heatmap_stride, pretrained=pretrained, drop_path_rate=drop_path_rate)
    head = HourglassHead(fpn_channels, num_keypoints, num_stacks=num_stacks, depth=depth,
                         channels=head_channels, num_blocks=num_blocks)
    return TopDownPoseModel(bb, neck, head, normalizer, stride=heatmap_stride)
