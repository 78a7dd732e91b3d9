"""Input normalisation as part of the model, so a checkpoint always carries the statistics it was trained with."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class InputNormalizer(nn.Module):
    """Maps RGB images with values in [0, 255] (uint8 or float) to ``(x / 255 - mean) / std``.

    Images travel from the data loader to the device as uint8 (4x fewer bytes than float32) and are
    normalised there. ``mean``/``std`` are per channel for values in [0, 1]; by default the backbone's own
    (timm ``pretrained_cfg``). Subtracting the mean centres the first layer's inputs around zero, so its
    weight gradients do not all share one sign and the optimiser does not zig-zag; dividing by the std
    puts the channels on one scale. ``mean=(0, 0, 0), std=(1, 1, 1)`` gives plain [0, 1] scaling.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean {tuple(mean)} and std {tuple(std)} must have equal length and std > 0")
        # Folded into one multiply-add: x * scale + shift, with scale = 1 / (255 std), shift = -mean / std.
        self.register_buffer("scale", torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, -1, 1, 1))
        self.register_buffer("shift", torch.tensor([-m / s for m, s in zip(mean, std)]).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: [B, C, H, W] uint8 or float in [0, 255]. Returns float32 [B, C, H, W]."""
        return images.float() * self.scale + self.shift
