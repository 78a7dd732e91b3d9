"""CenterNet-style detectors: input normalisation -> timm backbone -> FPN -> CenterNet head.

Heads on the same trunk: :class:`CenterNetDetector` predicts on the FPN's stride-4 level only (the
original CenterNet layout); :class:`MultiLevelCenterNetDetector` runs one shared CenterNet head on several
FPN levels (e.g. strides 4-32, or 8-64 for large objects), and the codec puts each object on the level its
size says (``models.box_codec.MultiLevelCenterNetCodec``); :class:`LtrbDetector` runs the ltrb head
(``models/ltrb.py``: class scores and distributions of the distances to the box edges, GFL / YOLOv8) on
several levels. The two multi-level detectors share :class:`MultiLevelDetector` (the levels, extra levels
and per-level heads); only the head and its output keys differ.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.backbone import Backbone
from models.centernet import CenterNetHead
from models.fpn import FPN
from models.ltrb import LtrbHead
from models.normalize import InputNormalizer
from models.trunk import FPNHeadModel, build_trunk, make_normalizer

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


class MultiLevelDetector(nn.Module):
    """A head, shared by every level or one per level, on several FPN levels.

    Args:
        backbone, neck, normalizer: the trunk; ``neck`` outputs the backbone levels among ``strides``.
        head: a head module whose weights all levels share, or an ``nn.ModuleList`` of one head per level;
            each returns a dict with the subclass's ``output_keys``.
        strides: the head's levels, finest first, doubling. Levels coarser than the backbone's coarsest are
            built as in RetinaNet: a 3x3 stride-2 conv on the coarsest FPN output (``P6``), then on the
            ReLU of the previous extra level (``P7``, ...).

    forward(images [B, 3, H, W]) -> {key: [L tensors [B, D, H/s, W/s]] for key in output_keys}, one entry per
    stride, finest first. H and W must be multiples of the coarsest stride (the codec checks that too).
    """

    head_name = "multi-level head"
    output_keys: tuple[str, ...] = ()

    def __init__(self, backbone: Backbone, neck: FPN, head: nn.Module,
                 normalizer: InputNormalizer, strides: Sequence[int]):
        super().__init__()
        self.strides = [int(s) for s in strides]
        if list(neck.strides) != self.strides[:len(neck.strides)]:
            raise ValueError(f"the FPN's output strides {neck.strides} must be the first of the head's strides "
                             f"{self.strides}")
        if isinstance(head, nn.ModuleList) and len(head) != len(self.strides):
            raise ValueError(f"{len(head)} heads for {len(self.strides)} levels {self.strides}")
        self.normalizer = normalizer
        self.backbone = backbone
        self.neck = neck
        self.head = head
        c = neck.out_channels
        self.extra_levels = nn.ModuleList(nn.Conv2d(c, c, 3, stride=2, padding=1)
                                          for _ in self.strides[len(neck.strides):])
        for m in self.extra_levels:
            nn.init.kaiming_uniform_(m.weight, a=1)
            nn.init.zeros_(m.bias)

    @property
    def num_classes(self) -> int:
        return self.head[0].num_classes if isinstance(self.head, nn.ModuleList) else self.head.num_classes

    @property
    def max_stride(self) -> int:
        return max(self.strides)

    def forward(self, images: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        feats = list(self.neck(self.backbone(self.normalizer(images))))
        for i, conv in enumerate(self.extra_levels):
            feats.append(conv(feats[-1] if i == 0 else F.relu(feats[-1])))
        heads = self.head if isinstance(self.head, nn.ModuleList) else [self.head] * len(feats)
        outs = [head(f) for head, f in zip(heads, feats)]
        return {key: [o[key] for o in outs] for key in self.output_keys}


class MultiLevelCenterNetDetector(MultiLevelDetector):
    """One CenterNet head, shared by every level (sizes are in cells, so an object of 4-8 cells looks alike on
    every level), or one :class:`CenterNetHead` per level, on several FPN levels (:class:`MultiLevelDetector`).

    forward(images [B, 3, H, W]) -> {"heatmap": [L tensors [B, C, H/s, W/s]], "size": [L x [B, 2, H/s, W/s]],
    "offset": [L x [B, 2, H/s, W/s]]}, one entry per stride, finest first.
    """

    head_name = "multi-level CenterNet head"
    output_keys = ("heatmap", "size", "offset")


class LtrbDetector(MultiLevelDetector):
    """The ltrb head (:class:`models.ltrb.LtrbHead`), shared by every level (distances are in strides) or one per
    level, on several FPN levels (:class:`MultiLevelDetector`).

    forward(images [B, 3, H, W]) -> {"cls": [L tensors [B, C, H/s, W/s]] logits, "reg": [L x [B, 4 (R + 1),
    H/s, W/s]] logits of the distances l, t, r, b (``R = reg_max``; ``[B, 4, H/s, W/s]`` when R = 0)}, finest
    first. Decoded by :class:`models.ltrb.LtrbCodec`.
    """

    head_name = "ltrb head"
    output_keys = ("cls", "reg")

    @property
    def reg_max(self) -> int:
        return self.head[0].reg_max if isinstance(self.head, nn.ModuleList) else self.head.reg_max


def build_detector(num_classes: int, backbone: str = "resnet18", out_indices: Sequence[int] = (1, 2, 3, 4),
                   pretrained_path: str | None = None, fpn_channels: int = 128, head_channels: int = 64,
                   normalization: str = "backbone", strides: Sequence[int] | None = None,
                   shared_head: bool = True, pretrained: bool = False, head: str = "centernet",
                   reg_max: int = 16, head_convs: int = 2) -> CenterNetDetector | MultiLevelDetector:
    """Compose the parts from plain arguments (the detection task maps its config onto these names).

    ``strides`` None: the single-level head at stride 4. Otherwise a multi-level head on those strides,
    finest first and doubling; the first must be the backbone's finest level (``out_indices``), and strides
    coarser than the backbone's coarsest are built as extra levels; ``shared_head`` False gives every level
    its own head. ``head``: ``centernet`` (:class:`MultiLevelCenterNetDetector`) or ``ltrb``
    (:class:`LtrbDetector`, with ``reg_max`` and ``head_convs`` of :class:`models.ltrb.LtrbHead`; needs
    ``strides``).
    """
    if head not in ("centernet", "ltrb"):
        raise ValueError(f"head {head!r}: use 'centernet' or 'ltrb'")
    if head == "ltrb" and strides is None:
        raise ValueError("the ltrb head runs on several levels: give its strides")
    if strides is None:
        bb, neck, normalizer = build_trunk(backbone, out_indices, pretrained_path, fpn_channels, normalization,
                                           DETECTION_STRIDE, pretrained=pretrained)
        return CenterNetDetector(bb, neck, CenterNetHead(fpn_channels, num_classes, channels=head_channels),
                                 normalizer)
    strides = [int(s) for s in strides]
    if not strides or any(b != 2 * a for a, b in zip(strides, strides[1:])):
        raise ValueError(f"head strides {strides} must be non-empty and double level to level (e.g. [4, 8, 16, 32])")
    bb = Backbone(backbone, out_indices=out_indices, pretrained_path=pretrained_path, required_stride=None,
                  pretrained=pretrained)
    inside = [s for s in strides if s <= max(bb.strides)]
    # The finest backbone level must be the head's: a finer one would feed only the FPN's unused lateral conv
    # (parameters without gradients, which DistributedDataParallel refuses).
    if not inside or inside[0] != bb.strides[0] or any(s not in bb.strides for s in inside) or \
            (len(inside) < len(strides) and inside[-1] != max(bb.strides)):
        raise ValueError(f"head strides {strides} do not fit the backbone {backbone!r} with out_indices "
                         f"{list(out_indices)} (strides {bb.strides}): the finest head stride must be the "
                         f"backbone's finest level (choose out_indices starting there), and strides past its "
                         f"coarsest ({max(bb.strides)}) are built from it")
    neck = FPN(bb.channels, bb.strides, out_channels=fpn_channels,
               output_levels=[bb.strides.index(s) for s in inside])
    if head == "ltrb":
        def make_head():
            return LtrbHead(fpn_channels, num_classes, reg_max=reg_max, channels=head_channels, num_convs=head_convs)
        detector = LtrbDetector
    else:
        def make_head():
            return CenterNetHead(fpn_channels, num_classes, channels=head_channels)
        detector = MultiLevelCenterNetDetector
    heads = make_head() if shared_head else nn.ModuleList(make_head() for _ in strides)
    return detector(bb, neck, heads, make_normalizer(normalization, bb), strides)
