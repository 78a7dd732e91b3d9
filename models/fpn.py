"""Feature Pyramid Network (Lin et al., 2017): lateral 1x1, top-down nearest 2x upsampling, 3x3 output.

Why it looks like this: coarse levels carry strong semantics at low resolution, fine levels carry
precise positions with weak semantics. The top-down path upsamples each coarser map 2x with nearest
neighbour (cheap, and it copies the semantic vector to the four cells it covers without inventing
values) and adds the fine level's 1x1 lateral projection, so every output level has both. The 3x3
output conv smooths the blocky upsampling. Small objects and precise keypoints live on the finest
level (stride 4), which is why the heatmap head reads that one.

The upsampling goes to the lateral's exact size rather than a fixed factor of 2, so odd input sizes
work (a 15-cell level under an 8-cell one). With identical weights the outputs equal
``torchvision.ops.FeaturePyramidNetwork`` (tests/test_fpn.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class FPN(nn.Module):
    """Args:
        in_channels: channels of each input level, finest first (``Backbone.channels``).
        strides: stride of each input level (``Backbone.strides``); must double level to level.
        out_channels: channels of every output level.
        output_levels: indices of the levels to return (and build 3x3 output convs for); all when None.
            A keypoint head needs only level 0; building only what is used keeps every parameter in the
            graph (DistributedDataParallel requires that).
    """

    def __init__(self, in_channels: Sequence[int], strides: Sequence[int], out_channels: int = 128,
                 output_levels: Sequence[int] | None = None):
        super().__init__()
        if len(in_channels) != len(strides) or not in_channels:
            raise ValueError(f"in_channels {list(in_channels)} and strides {list(strides)} must be non-empty and "
                             f"of equal length")
        for i in range(1, len(strides)):
            if strides[i] != 2 * strides[i - 1]:
                raise ValueError(f"FPN input strides {list(strides)} must double level to level "
                                 f"(level {i} has stride {strides[i]}, expected {2 * strides[i - 1]})")
        levels = list(range(len(in_channels))) if output_levels is None else sorted(set(output_levels))
        if not levels or levels[0] < 0 or levels[-1] >= len(in_channels):
            raise ValueError(f"output_levels {output_levels} must index the {len(in_channels)} input levels")
        self.in_channels = list(in_channels)
        self.in_strides = list(strides)
        self.out_channels = out_channels
        self.output_levels = levels
        self.strides = [strides[i] for i in levels]
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output_convs = nn.ModuleDict({str(i): nn.Conv2d(out_channels, out_channels, 3, padding=1)
                                           for i in levels})
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """feats: one [B, C_i, H_i, W_i] map per input level, finest first.

        Returns [B, out_channels, H_i, W_i] for each of ``output_levels``, finest first.
        """
        if len(feats) != len(self.lateral_convs):
            raise ValueError(f"FPN built for {len(self.lateral_convs)} levels got {len(feats)} feature maps")
        merged: list[torch.Tensor | None] = [None] * len(feats)
        top = self.lateral_convs[-1](feats[-1])
        merged[-1] = top
        for i in range(len(feats) - 2, -1, -1):
            lateral = self.lateral_convs[i](feats[i])
            top = lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")
            merged[i] = top
        return [self.output_convs[str(i)](merged[i]) for i in self.output_levels]
