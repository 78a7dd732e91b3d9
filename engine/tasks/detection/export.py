"""The detector in an ONNX file (``engine/export``): its raw maps out, decoded by the runner.

The graph takes ``images``: uint8 RGB ``[B, 3, H, W]`` (the letterboxed image, B dynamic) and outputs
``heatmap`` [B, C, h, w] logits, ``size`` and ``offset`` [B, 2, h, w]; the runner decodes them with the
task's codec, threshold and NMS, as PyTorch does. A multi-level detector (``model.head=multi_level``) has
one output per level and key, ``heatmap_s8``, ``size_s8``, ``offset_s8``, ... (all heatmaps finest first,
then all sizes, then all offsets); its metadata holds ``strides``, by which the runner regroups them into
the per-level lists that PyTorch's model returns.
"""

from __future__ import annotations

import torch
from torch import nn

from models.detector import MultiLevelCenterNetDetector
from models.errors import CheckpointError, InputError

DETECTOR_KEYS = ("heatmap", "size", "offset")


class DetectorGraph(nn.Module):
    """images uint8 [B, 3, H, W] -> (heatmap logits, size, offset); a multi-level detector's per-level lists
    flattened key by key: (heatmap of every level, finest first, then every size, then every offset)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images)
        if isinstance(out["heatmap"], list):
            return tuple(t for key in DETECTOR_KEYS for t in out[key])
        return tuple(out[key] for key in DETECTOR_KEYS)


def head_strides(model: nn.Module) -> list[int] | None:
    """The multi-level detector's strides, finest first; None for the single-level one."""
    return list(model.strides) if isinstance(model, MultiLevelCenterNetDetector) else None


def detector_output_names(strides: list[int] | None) -> list[str]:
    """The graph's output names: ``heatmap, size, offset``, or per level ``heatmap_s4, ..., offset_s32``."""
    if strides is None:
        return list(DETECTOR_KEYS)
    return [f"{key}_s{s}" for key in DETECTOR_KEYS for s in strides]


class DetectorOnnx:
    """:class:`engine.tasks.base.OnnxOutputs` of the detection task."""

    def graph(self, model: nn.Module, cfg, meta: dict, decode: bool) -> tuple[nn.Module, list[str], str]:
        if decode:
            raise InputError("--decode applies to keypoint models; a detector's decoding (peaks, NMS) stays in the "
                             "runner")
        return DetectorGraph(model), detector_output_names(head_strides(model)), "centernet"

    def metadata(self, cfg, meta: dict, model: nn.Module) -> dict:
        # strides: None for the single-level head; the multi-level head's outputs are regrouped by them.
        return {"class_names": meta["class_names"], "strides": head_strides(model)}

    def check_graph(self, path: str, session, doc: dict) -> None:
        want = 3 * len(doc.get("strides") or [None])
        if len(session.get_outputs()) != want:
            raise CheckpointError(f"{path}: its graph has {len(session.get_outputs())} outputs but its metadata "
                                  f"declares {want} (strides {doc.get('strides')}); export it again with "
                                  f"python -m tools.export")

    def unflatten(self, outputs: list, doc: dict) -> dict:
        levels = len(doc.get("strides") or ())
        if levels:      # a multi-level detector: outputs are every heatmap, then every size, then every offset
            return {key: outputs[i * levels:(i + 1) * levels] for i, key in enumerate(DETECTOR_KEYS)}
        return dict(zip(DETECTOR_KEYS, outputs))
