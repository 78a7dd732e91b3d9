"""What the pose model and the detector share: input normalisation -> timm backbone -> FPN, whose finest
level feeds a task head. Only the head (and what its output means) differs between them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.backbone import Backbone
from models.fpn import FPN
from models.normalize import InputNormalizer


class FPNHeadModel(nn.Module):
    """``head(neck(backbone(normalizer(images)))[0])``: a head on the FPN's finest level.

    Subclasses set ``stride`` (the stride the head's output must have) and ``head_name`` (for the error
    when the neck's finest level has another stride). The submodules' names (``normalizer``, ``backbone``,
    ``neck``, ``head``) are the checkpoints' state-dict prefixes.
    """

    stride: int
    head_name: str

    def __init__(self, backbone: Backbone, neck: FPN, head: nn.Module, normalizer: InputNormalizer):
        super().__init__()
        if neck.strides[0] != self.stride:
            raise ValueError(f"the {self.head_name} reads the FPN's finest level, which must have stride "
                             f"{self.stride}; got strides {neck.strides}")
        self.normalizer = normalizer
        self.backbone = backbone
        self.neck = neck
        self.head = head

    @property
    def max_stride(self) -> int:
        return max(self.backbone.strides)

    def forward(self, images: torch.Tensor):
        feats = self.neck(self.backbone(self.normalizer(images)))
        return self.head(feats[0])


def build_trunk(backbone: str, out_indices: Sequence[int], pretrained_path: str | None, fpn_channels: int,
                normalization: str, stride: int, pretrained: bool = False,
                drop_path_rate: float = 0.0) -> tuple[Backbone, FPN, InputNormalizer]:
    """The backbone (its finest level at ``stride``), an FPN that outputs only that level, and the input
    normaliser, from plain arguments.

    drop_path_rate: timm's stochastic depth in the backbone (residual branches dropped per sample in
    training, the rate rising linearly with depth to this value); 0 leaves timm's default, so that
    backbones without the argument still build.
    """
    timm_kwargs = {"drop_path_rate": float(drop_path_rate)} if drop_path_rate > 0 else {}
    bb = Backbone(backbone, out_indices=out_indices, pretrained_path=pretrained_path, required_stride=stride,
                  pretrained=pretrained, **timm_kwargs)
    neck = FPN(bb.channels, bb.strides, out_channels=fpn_channels, output_levels=[0])
    return bb, neck, make_normalizer(normalization, bb)


def make_normalizer(normalization: str, backbone: Backbone) -> InputNormalizer:
    """``"backbone"``: the backbone's mean/std; ``"unit"``: plain [0, 1] scaling."""
    if normalization == "backbone":
        return InputNormalizer(backbone.mean, backbone.std)
    if normalization == "unit":
        return InputNormalizer((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    raise ValueError(f"model.normalization={normalization!r}: use 'backbone' (mean/std from timm's "
                     f"pretrained_cfg) or 'unit' ([0, 1] scaling)")
