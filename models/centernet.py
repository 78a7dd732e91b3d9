"""CenterNet head (Zhou et al., "Objects as Points", 2019): class heatmaps, box size and centre offset.

Three small branches on one feature map (the FPN's stride-4 level): 3x3 conv, ReLU, 1x1 conv. The heatmap
branch's bias starts at ``-log((1 - p) / p)`` with ``p = 0.1`` (CenterNet's and RetinaNet's prior): with a
zero bias every cell would start at probability 0.5 and the focal loss of the many background cells would
swamp the first steps.
"""

from __future__ import annotations

import math

import torch
from torch import nn

HEATMAP_PRIOR = 0.1


def _branch(in_channels: int, channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(channels, out_channels, 1))


class CenterNetHead(nn.Module):
    """Args:
        in_channels: channels of the input feature map.
        num_classes: heatmap channels (one per object class).
        channels: hidden channels of each branch.

    forward(x [B, in_channels, h, w]) -> {"heatmap": [B, C, h, w] logits, "size": [B, 2, h, w] box (w, h)
    in cells, "offset": [B, 2, h, w] sub-cell centre offsets}.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 64):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.heatmap = _branch(in_channels, channels, num_classes)
        self.size = _branch(in_channels, channels, 2)
        self.offset = _branch(in_channels, channels, 2)
        for branch in (self.heatmap, self.size, self.offset):
            for m in branch.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(m.bias)
        # Small last-layer weights: the first predictions are near the prior rather than random peaks.
        nn.init.normal_(self.heatmap[-1].weight, std=0.001)
        nn.init.constant_(self.heatmap[-1].bias, -math.log((1 - HEATMAP_PRIOR) / HEATMAP_PRIOR))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"heatmap": self.heatmap(x), "size": self.size(x), "offset": self.offset(x)}
