"""The keypoint model in an ONNX file (``engine/export``): heatmaps out, or decoded keypoints.

The graph takes ``images``: uint8 RGB crops ``[B, 3, H, W]`` (B dynamic); the model normalises them itself.

* default: ``heatmaps`` [B, K, h, w] (the last stack). The runner (:mod:`engine.export.runtime`) does what
  PyTorch does around them: flip test on the mirrored crop, decoding, mapping back.
* ``decode=True``: ``keypoints`` [B, K, 2] in crop pixels and ``scores`` [B, K]; the flip test (when the
  config asks for it), argmax and the configured refinement (:mod:`models.heatmap_codec`, pure tensor code)
  are in the graph.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.tasks.keypoints.build import build_codec
from engine.tasks.keypoints.task import flip_tested_heatmaps
from models.errors import CheckpointError


class HeatmapGraph(nn.Module):
    """images uint8 [B, 3, H, W] -> heatmaps [B, K, h, w] (the last stack)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)[-1]


class DecodedKeypointGraph(nn.Module):
    """images uint8 [B, 3, H, W] -> (keypoints [B, K, 2] crop pixels, scores [B, K]): flip test and decode inside."""

    def __init__(self, model: nn.Module, codec, flip_index, flip_test: bool, flip_test_shift: float = 0.0):
        super().__init__()
        self.model, self.codec, self.flip_test, self.flip_test_shift = model, codec, flip_test, flip_test_shift
        self.register_buffer("flip_index", torch.as_tensor(flip_index, dtype=torch.long), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        heatmaps = flip_tested_heatmaps(self.model, images, self.codec, self.flip_index, self.flip_test,
                                        self.flip_test_shift)
        return self.codec.decode(heatmaps)


class KeypointOnnx:
    """:class:`engine.tasks.base.OnnxOutputs` of the keypoint task."""

    def graph(self, model: nn.Module, cfg, meta: dict, decode: bool) -> tuple[nn.Module, list[str], str]:
        if decode:
            graph = DecodedKeypointGraph(model, build_codec(cfg), meta["flip_index"], cfg.eval.flip_test,
                                         cfg.eval.flip_test_shift)
            return graph, ["keypoints", "scores"], "keypoints"
        return HeatmapGraph(model), ["heatmaps"], "heatmaps"

    def metadata(self, cfg, meta: dict, model: nn.Module) -> dict:
        codec = build_codec(cfg)
        return {"keypoint_names": meta["keypoint_names"], "flip_index": meta["flip_index"],
                "codec": {"heatmap_size": list(codec.heatmap_size), "stride": codec.stride, "sigma": codec.sigma,
                          "refine": codec.refine, "blur_kernel_size": codec.blur_kernel_size}}

    def check_graph(self, path: str, session, doc: dict) -> None:
        k = session.get_outputs()[0].shape[1]
        if isinstance(k, int) and k != len(doc["keypoint_names"]):
            raise CheckpointError(f"{path}: its graph outputs {k} keypoints but its metadata names "
                                  f"{len(doc['keypoint_names'])}; export it again")

    def unflatten(self, outputs: list, doc: dict) -> list:
        return outputs          # [heatmaps]: the last element is what the model's stack list ends with
