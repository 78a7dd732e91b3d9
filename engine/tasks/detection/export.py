"""The detector in an ONNX file (``engine/export``): its raw maps out, decoded by the runner.

The graph takes ``images``: uint8 RGB ``[B, 3, H, W]`` (the letterboxed image, B dynamic) and outputs
``heatmap`` [B, C, h, w] logits, ``size`` and ``offset`` [B, 2, h, w]; the runner decodes them with the
task's codec, threshold and NMS, as PyTorch does. A multi-level detector (``model.head=multi_level``) has
one output per level and key, ``heatmap_s8``, ``size_s8``, ``offset_s8``, ... (all heatmaps finest first,
then all sizes, then all offsets); its metadata holds ``strides``, by which the runner regroups them into
the per-level lists that PyTorch's model returns.

An ltrb detector (``model.head=ltrb``) outputs ``cls_s8, ..., reg_s8, ...`` (every level's class logits,
finest first, then every level's distance logits ``[B, 4 (R + 1), h, w]``); its metadata's ``outputs`` is
``ltrb`` (``centernet`` for the others) and it holds ``strides`` and ``reg_max``, by which the runner regroups
them into ``{"cls": [...], "reg": [...]}`` and the task's codec decodes them.
"""

from __future__ import annotations

import torch
from torch import nn

from models.detector import LtrbDetector, MultiLevelDetector
from models.errors import CheckpointError, InputError

DETECTOR_KEYS = ("heatmap", "size", "offset")
LTRB_KEYS = ("cls", "reg")


def output_keys(model: nn.Module) -> tuple[str, ...]:
    """The keys of a detector's output dict: the ltrb head's or the CenterNet heads'."""
    return LTRB_KEYS if isinstance(model, LtrbDetector) else DETECTOR_KEYS


def _doc_keys(doc: dict) -> tuple[str, ...]:
    # Files exported before the ltrb head have outputs "centernet".
    return LTRB_KEYS if doc.get("outputs") == "ltrb" else DETECTOR_KEYS


class DetectorGraph(nn.Module):
    """images uint8 [B, 3, H, W] -> (heatmap logits, size, offset); a multi-level detector's per-level lists
    flattened key by key: (heatmap of every level, finest first, then every size, then every offset; for the
    ltrb head every cls, then every reg)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.keys = output_keys(model)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images)
        if isinstance(out[self.keys[0]], list):
            return tuple(t for key in self.keys for t in out[key])
        return tuple(out[key] for key in self.keys)


def head_strides(model: nn.Module) -> list[int] | None:
    """The multi-level detector's strides, finest first; None for the single-level one."""
    return list(model.strides) if isinstance(model, MultiLevelDetector) else None


def detector_output_names(strides: list[int] | None, keys: tuple[str, ...] = DETECTOR_KEYS) -> list[str]:
    """The graph's output names: ``heatmap, size, offset``, or per level ``heatmap_s4, ..., offset_s32``
    (``cls_s8, ..., reg_s32`` for the ltrb head)."""
    if strides is None:
        return list(keys)
    return [f"{key}_s{s}" for key in keys for s in strides]


class DetectorOnnx:
    """:class:`engine.tasks.base.OnnxOutputs` of the detection task."""

    def graph(self, model: nn.Module, cfg, meta: dict, decode: bool) -> tuple[nn.Module, list[str], str]:
        if decode:
            raise InputError("--decode applies to keypoint models; a detector's decoding (peaks, NMS) stays in the "
                             "runner")
        keys = output_keys(model)
        kind = "ltrb" if keys == LTRB_KEYS else "centernet"
        return DetectorGraph(model), detector_output_names(head_strides(model), keys), kind

    def metadata(self, cfg, meta: dict, model: nn.Module) -> dict:
        # strides: None for the single-level head; the multi-level heads' outputs are regrouped by them.
        doc = {"class_names": meta["class_names"], "strides": head_strides(model)}
        if isinstance(model, LtrbDetector):
            doc["reg_max"] = model.reg_max
        return doc

    def check_graph(self, path: str, session, doc: dict) -> None:
        want = len(_doc_keys(doc)) * len(doc.get("strides") or [None])
        if len(session.get_outputs()) != want:
            raise CheckpointError(f"{path}: its graph has {len(session.get_outputs())} outputs but its metadata "
                                  f"declares {want} (strides {doc.get('strides')}); export it again with "
                                  f"python -m tools.export")

    def unflatten(self, outputs: list, doc: dict) -> dict:
        keys = _doc_keys(doc)
        levels = len(doc.get("strides") or ())
        if levels:      # a multi-level detector: every level's output of the first key, then of the next, ...
            return {key: outputs[i * levels:(i + 1) * levels] for i, key in enumerate(keys)}
        return dict(zip(keys, outputs))
