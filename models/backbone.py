"""Any timm model as a multi-level feature extractor (``features_only``), checked before use.

The adapter reads what timm declares (channels, strides, output layout), checks it, and exposes it so
the neck can be built from it: ``FPN(in_channels=bb.channels, strides=bb.strides, ...)``. Weights come from a
local file the user names (``pretrained_path``: timm's ``.safetensors`` / ``.bin`` / ``.pth`` or a checkpoint
holding them), or from timm itself when asked (``pretrained=True``: timm downloads and caches them; offline it
fails with a message naming the cache and ``model.pretrained_path``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import timm
import torch
from torch import nn

from models.errors import CheckpointError, ConfigError
from models.pretrained import check_choice, is_download_error, offline_error
from models.utils import first_n
from models.weights_file import read_state_dict

log = logging.getLogger(__name__)

# Key prefixes that wrappers commonly add around a backbone's own names (DDP, Lightning, our own models,
# torchvision detection models). They are stripped before matching a weights file to the backbone.
_STRIP_PREFIXES = ("module.", "model.", "backbone.body.", "backbone.model.", "backbone.", "encoder.")


class Backbone(nn.Module):
    """A timm backbone that returns a list of NCHW feature maps, finest first.

    Args:
        name: any timm model name (``timm.list_models()``).
        out_indices: which feature levels to return (timm's ``out_indices``); strides must double from
            level to level.
        pretrained_path: optional local weights file (a timm or torchvision state dict as .safetensors, .bin or
            .pth, or a checkpoint holding one under ``state_dict``/``model``); missing and unexpected keys are
            logged.
        pretrained: load timm's pretrained weights through timm (downloaded once, then cached); exclusive
            with ``pretrained_path``.
        required_stride: the stride the finest returned level must have (4 for the heatmap head), or
            None for no requirement.
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``img_size`` for transformers).

    Attributes:
        channels: channels of each returned level.
        strides: stride of each returned level w.r.t. the input.
        mean, std: the normalisation the backbone was designed with (``pretrained_cfg``), RGB in [0, 1].
    """

    def __init__(self, name: str, out_indices: Sequence[int] = (1, 2, 3, 4), pretrained_path: str | None = None,
                 required_stride: int | None = 4, pretrained: bool = False, **timm_kwargs):
        super().__init__()
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices:
            raise ValueError("out_indices is empty: name at least one feature level")
        if list(out_indices) != sorted(set(out_indices)):
            raise ValueError(f"out_indices {out_indices} must be strictly increasing")
        self.name = name
        check_choice(pretrained, pretrained_path)
        self.body = _create_features_model(name, out_indices, pretrained=pretrained, **timm_kwargs)
        info = self.body.feature_info
        self.channels: list[int] = list(info.channels())
        self.strides: list[int] = list(info.reduction())
        _check_strides(name, out_indices, self.strides, required_stride)
        # Transformer-style models (swin, ...) return NHWC; the neck and head expect NCHW.
        self.channels_last_output = str(getattr(self.body, "output_fmt", "NCHW")).endswith("NHWC")
        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        self.mean = tuple(float(m) for m in cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(float(s) for s in cfg.get("std", (0.229, 0.224, 0.225)))
        if pretrained_path:
            self.load_weights(pretrained_path)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [B, 3, H, W] normalised image. Returns one [B, C_i, H / s_i, W / s_i] map per level."""
        feats = self.body(x)
        if self.channels_last_output:
            feats = [f.permute(0, 3, 1, 2).contiguous() for f in feats]
        return list(feats)

    def load_weights(self, path: str) -> tuple[list[str], list[str]]:
        """Load a local state dict into the backbone; returns ``(missing, unexpected)`` key lists.

        Raises when no tensor matches at all (a file for another model), or when a matching key has a
        different shape (it names the keys and both shapes).
        """
        state = read_state_dict(path, "backbone")
        own = self.body.state_dict()
        state = _strip_prefixes(state, own)
        mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                      for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
        if mismatched:
            raise CheckpointError(f"{path} does not fit backbone {self.name!r}; shapes differ for "
                             f"{len(mismatched)} tensors: " + "; ".join(mismatched[:10]))
        matched = [k for k in state if k in own]
        if not matched:
            raise CheckpointError(f"{path} shares no tensor names with backbone {self.name!r} "
                             f"(first file keys: {list(state)[:5]}; first model keys: {list(own)[:5]})")
        result = self.body.load_state_dict(state, strict=False)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
        log.info("loaded %d/%d backbone tensors from %s", len(matched), len(own), path)
        if missing:
            log.warning("backbone weights: %d missing keys (left at their initial values): %s",
                        len(missing), first_n(missing))
        if unexpected:
            # Classifier heads (fc.*, head.*) are expected here: features_only drops them.
            log.info("backbone weights: %d unexpected keys ignored: %s", len(unexpected), first_n(unexpected))
        return missing, unexpected


def _create_features_model(name: str, out_indices: tuple[int, ...], pretrained: bool = False,
                           **kwargs) -> nn.Module:
    if not timm.is_model(name):
        raise ConfigError(f"unknown timm model {name!r} (model.backbone); list valid names with "
                         f"timm.list_models('*{name.split('_')[0]}*')")
    try:
        # pretrained=True: timm fetches (or finds in its cache) and loads the weights; else load_weights does.
        return timm.create_model(name, pretrained=pretrained, features_only=True, out_indices=out_indices, **kwargs)
    except Exception as err:
        if pretrained and is_download_error(err):
            raise offline_error(name, err) from err
        if isinstance(err, TypeError) and "unexpected keyword" in str(err):
            raise ConfigError(f"timm model {name!r} does not take {sorted(kwargs)} ({err}); leave it out of the "
                              f"config (e.g. model.drop_path_rate: 0) or pick a backbone that has it") from err
        if not isinstance(err, (IndexError, AssertionError, ValueError)):
            raise
        full = timm.create_model(name, pretrained=False, features_only=True, **kwargs)
        levels = [f"{i}: stride {d['reduction']}, {d['num_chs']} ch" for i, d in enumerate(full.feature_info.info)]
        raise ConfigError(f"out_indices {out_indices} are not all available in {name!r}; its feature levels are "
                         f"[{'; '.join(levels)}] (model.out_indices)") from err


def _check_strides(name: str, out_indices: Sequence[int], strides: Sequence[int], required_stride: int | None):
    for i in range(1, len(strides)):
        if strides[i] != 2 * strides[i - 1]:
            raise ConfigError(f"backbone {name!r} with out_indices {tuple(out_indices)} has strides {list(strides)}; "
                             f"the FPN needs each level to halve the resolution (stride x2 per level)")
    if required_stride is not None and strides[0] != required_stride:
        raise ConfigError(f"backbone {name!r} with out_indices {tuple(out_indices)} has a finest stride of "
                         f"{strides[0]}, but the head needs stride {required_stride}; pick out_indices starting at "
                         f"the stride-{required_stride} level")


def _strip_prefixes(state: dict, own: dict) -> dict:
    """Remove wrapper prefixes when doing so makes more keys match the model."""
    best = state
    best_hits = sum(k in own for k in state)
    for prefix in _STRIP_PREFIXES:
        candidate = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
        hits = sum(k in own for k in candidate)
        if hits > best_hits:
            best, best_hits = candidate, hits
    return best
