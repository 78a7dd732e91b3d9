"""Stacked hourglass heatmap head (Newell et al., 2016) with intermediate supervision.

It runs on the finest FPN level (stride 4). Each hourglass pools down ``depth`` times and comes back up
with nearest upsampling and skip branches, so every output cell sees the whole crop (needed to tell a
left wrist from a right one) while keeping stride-4 detail. Each stack predicts heatmaps; all but the
last feed their features and heatmaps back (1x1 "merge" convs) so the next stack can refine them, and
every stack's heatmaps are supervised with the same target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Residual(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-1x1 (C/2) - BN-ReLU-3x3 (C/2) - BN-ReLU-1x1 (C), plus a skip."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = max(out_channels // 2, 1)
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True), nn.Conv2d(in_channels, mid, 1, bias=False),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True), nn.Conv2d(mid, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True), nn.Conv2d(mid, out_channels, 1),
        )
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x)


def _blocks(channels: int, n: int) -> nn.Sequential:
    return nn.Sequential(*(Residual(channels, channels) for _ in range(n)))


class Hourglass(nn.Module):
    """One hourglass of ``depth`` pooling levels; input and output [B, C, H, W] of the same size.

    Needs ``min(H, W) >= 2 ** depth``. Upsampling goes to the skip branch's exact size, so odd sizes work.
    """

    def __init__(self, depth: int, channels: int, num_blocks: int = 1):
        super().__init__()
        if depth < 1:
            raise ValueError(f"hourglass depth must be >= 1, got {depth}")
        self.depth = depth
        self.skip = _blocks(channels, num_blocks)
        self.down = _blocks(channels, num_blocks)
        self.inner = Hourglass(depth - 1, channels, num_blocks) if depth > 1 else _blocks(channels, num_blocks)
        self.up = _blocks(channels, num_blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.skip(x)
        low = self.up(self.inner(self.down(F.max_pool2d(x, 2))))
        return skip + F.interpolate(low, size=skip.shape[-2:], mode="nearest")


class HourglassHead(nn.Module):
    """``num_stacks`` hourglasses on a stride-4 feature map; returns every stack's heatmaps.

    Args:
        in_channels: channels of the input feature map (the FPN's ``out_channels``).
        num_keypoints: K, heatmap channels.
        num_stacks: number of hourglasses; each is supervised.
        depth: pooling levels per hourglass (the heatmap side must be >= 2 ** depth).
        channels: width inside the hourglasses.
        num_blocks: residual blocks per branch.
    """

    def __init__(self, in_channels: int, num_keypoints: int, num_stacks: int = 2, depth: int = 3,
                 channels: int = 128, num_blocks: int = 1):
        super().__init__()
        if num_stacks < 1:
            raise ValueError(f"num_stacks must be >= 1, got {num_stacks}")
        self.num_stacks = num_stacks
        self.depth = depth
        self.num_keypoints = num_keypoints
        self.stem = nn.Identity() if in_channels == channels else Residual(in_channels, channels)
        self.hourglasses = nn.ModuleList(Hourglass(depth, channels, num_blocks) for _ in range(num_stacks))
        self.features = nn.ModuleList(
            nn.Sequential(_blocks(channels, num_blocks), nn.Conv2d(channels, channels, 1, bias=False),
                          nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
            for _ in range(num_stacks))
        self.heatmaps = nn.ModuleList(nn.Conv2d(channels, num_keypoints, 1) for _ in range(num_stacks))
        self.merge_features = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(num_stacks - 1))
        self.merge_heatmaps = nn.ModuleList(nn.Conv2d(num_keypoints, channels, 1) for _ in range(num_stacks - 1))
        for conv in self.heatmaps:
            # Small initial outputs: the targets are mostly zero, and large random heatmaps slow the start.
            nn.init.normal_(conv.weight, std=0.001)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [B, in_channels, h, w] (stride 4). Returns ``num_stacks`` tensors [B, K, h, w], last is final."""
        h, w = x.shape[-2:]
        if min(h, w) < 2 ** self.depth:
            raise ValueError(f"feature map {h}x{w} is too small for hourglass depth {self.depth} "
                             f"(needs >= {2 ** self.depth} cells per side); lower model.depth or raise "
                             f"the input size")
        x = self.stem(x)
        outputs = []
        for i in range(self.num_stacks):
            feat = self.features[i](self.hourglasses[i](x))
            heat = self.heatmaps[i](feat)
            outputs.append(heat)
            if i < self.num_stacks - 1:
                x = x + self.merge_features[i](feat) + self.merge_heatmaps[i](heat)
        return outputs
