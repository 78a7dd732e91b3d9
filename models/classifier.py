"""Any timm model as an image classifier, with input normalisation inside and pooling that ignores padding.

    model = ImageClassifier("resnet18", num_classes=8)                # random init, never downloaded
    logits = model(images_uint8)                                       # [B, 8]
    logits = model(padded_uint8, valid_hw=sizes)                       # native sizes, padded batch

Fixed-size inputs are made by the data pipeline (datasets/input_policy.py: resize, crops, letterbox). With
the ``native`` policy each image keeps its own size; a batch is padded to its largest image and ``valid_hw``
says which part of each padded image is real: the classifier then averages the last feature map over that
region only (adaptive average pooling restricted to the image) before the head, so the zeros of the padding
do not dilute the features. Models that need a fixed input size (vision transformers with a fixed position
embedding) are created for ``img_size`` and cannot use ``native``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import timm
import torch
from torch import nn

from models.normalize import InputNormalizer
from models.pretrained import check_choice, is_download_error, offline_error
from models.weights_file import read_state_dict

log = logging.getLogger(__name__)

NORMALIZATIONS = ("backbone", "unit")


class ImageClassifier(nn.Module):
    """Args:
        backbone: any timm model name; its own classifier head is resized to ``num_classes``.
        num_classes: number of classes (from the data).
        pretrained_path: optional local weights file (a timm state dict, or a checkpoint holding one under
            ``state_dict``/``model``); tensors whose shape differs (another head) are skipped and reported.
        pretrained: timm's pretrained weights through timm (downloaded once, then cached); exclusive with
            ``pretrained_path``.
        normalization: ``"backbone"``: the mean/std of timm's ``pretrained_cfg``; ``"unit"``: plain [0, 1].
        drop_rate: dropout before the classifier.
        img_size: ``(height, width)`` for models that need a fixed input size (ignored otherwise).

    forward(images [B, 3, H, W] uint8 or float in [0, 255], valid_hw [B, 2] or None) -> logits [B, C].
    """

    def __init__(self, backbone: str, num_classes: int, pretrained_path: str | None = None,
                 normalization: str = "backbone", drop_rate: float = 0.0, img_size: Sequence[int] | None = None,
                 pretrained: bool = False):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        if not timm.is_model(backbone):
            raise ValueError(f"unknown timm model {backbone!r} (model.backbone); list valid names with "
                             f"timm.list_models('*{backbone.split('_')[0]}*')")
        kwargs = {}
        self.fixed_input_size = bool(timm.get_pretrained_cfg(backbone) and
                                     timm.get_pretrained_cfg(backbone).fixed_input_size)
        if self.fixed_input_size and img_size is not None:
            kwargs["img_size"] = tuple(int(v) for v in img_size)
        check_choice(pretrained, pretrained_path)
        try:
            # pretrained=True: timm fetches (or finds in its cache) the weights and refits the classifier head.
            self.net = timm.create_model(backbone, pretrained=pretrained, num_classes=num_classes,
                                         drop_rate=drop_rate, **kwargs)
        except Exception as err:
            if pretrained and is_download_error(err):
                raise offline_error(backbone, err) from err
            raise
        self.name = backbone
        self.num_classes = num_classes
        cfg = getattr(self.net, "pretrained_cfg", None) or {}
        self.mean = tuple(float(m) for m in cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(float(s) for s in cfg.get("std", (0.229, 0.224, 0.225)))
        if normalization == "backbone":
            self.normalizer = InputNormalizer(self.mean, self.std)
        elif normalization == "unit":
            self.normalizer = InputNormalizer((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        else:
            raise ValueError(f"model.normalization={normalization!r} is not one of {NORMALIZATIONS}")
        if pretrained_path:
            self.load_weights(pretrained_path)

    def forward(self, images: torch.Tensor, valid_hw: torch.Tensor | None = None) -> torch.Tensor:
        x = self.normalizer(images)
        if valid_hw is None:
            return self.net(x)
        feats = self.net.forward_features(x)
        if feats.ndim != 4:
            raise ValueError(f"{self.name} returns features of shape {tuple(feats.shape)}, not a [B, C, h, w] map: "
                             f"native-size inputs (masked pooling) need a convolutional model")
        pooled = masked_average_pool(feats, valid_hw, x.shape[-2:])
        # A 1x1 map through the model's own head: its global pooling is then the identity, and whatever
        # follows it (norm, conv head, dropout, classifier) is applied as the model defines it.
        return self.net.forward_head(pooled[:, :, None, None])

    def load_weights(self, path: str) -> dict:
        """Load a local state dict into ``net``; returns ``{"missing", "unexpected", "shape_mismatch"}``."""
        state = read_state_dict(path, "classifier")
        own = self.net.state_dict()
        for prefix in ("module.", "net."):
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
        mismatch = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
        usable = {k: v for k, v in state.items() if k in own and k not in mismatch}
        if not usable:
            raise ValueError(f"{path} shares no tensor with {self.name!r} (first file keys: {list(state)[:5]})")
        self.net.load_state_dict(usable, strict=False)
        report = {"missing": [k for k in own if k not in usable], "unexpected": [k for k in state if k not in own],
                  "shape_mismatch": mismatch}
        log.info("loaded %d/%d tensors from %s; left at init: %s; ignored: %s", len(usable), len(own), path,
                 report["missing"][:8], report["unexpected"][:8])
        return report


def masked_average_pool(feats: torch.Tensor, valid_hw: torch.Tensor, input_hw: Sequence[int]) -> torch.Tensor:
    """Mean of ``feats`` [B, C, h, w] over each sample's valid region; ``valid_hw`` [B, 2] in input pixels of an
    input of size ``input_hw`` (H, W). A feature cell counts when its stride-sized window starts inside the
    valid region (ceil(valid * h / H) cells). Returns [B, C]."""
    b, _, h, w = feats.shape
    H, W = int(input_hw[0]), int(input_hw[1])
    valid = valid_hw.to(feats.device, torch.float32)
    rows = torch.ceil(valid[:, 0] * h / H - 1e-6).clamp(1, h)
    cols = torch.ceil(valid[:, 1] * w / W - 1e-6).clamp(1, w)
    mask = ((torch.arange(h, device=feats.device)[None, :, None] < rows[:, None, None])
            & (torch.arange(w, device=feats.device)[None, None, :] < cols[:, None, None])).to(feats.dtype)
    total = (feats * mask[:, None]).sum((2, 3))
    return total / (rows * cols).to(feats.dtype)[:, None]


def backbone_mean(name: str) -> tuple[float, float, float]:
    """The RGB mean in [0, 1] timm declares for ``name`` (ImageNet's when it declares none)."""
    cfg = timm.get_pretrained_cfg(name) if timm.is_model(name) else None
    return tuple(float(m) for m in (cfg.mean if cfg is not None and cfg.mean else (0.485, 0.456, 0.406)))


def letterbox_fill(mean: Sequence[float]) -> tuple[int, int, int]:
    """The uint8 colour that normalises to 0 (the backbone's mean): letterbox padding then carries no signal."""
    return tuple(int(math.floor(m * 255 + 0.5)) for m in mean)
