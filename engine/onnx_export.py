"""ONNX export of keypoint models and detectors, with what inference needs written into the file.

The graph takes ``images``: uint8 RGB ``[B, 3, H, W]`` (B dynamic; a crop for a keypoint model, the
letterboxed image for a detector); the normalisation is the model's own first module, so it is in the
graph. Outputs:

* keypoint model, default: ``heatmaps`` [B, K, h, w] (the last stack). The runner (engine.onnx_runtime)
  does what PyTorch does around them: flip test on the mirrored crop, decoding, mapping back.
* keypoint model, ``decode=True``: ``keypoints`` [B, K, 2] in crop pixels and ``scores`` [B, K]; the flip
  test (when the config asks for it), argmax and the configured refinement (models.heatmap_codec, pure
  tensor code) are in the graph.
* detector: ``heatmap`` [B, C, h, w] logits, ``size`` and ``offset`` [B, 2, h, w] (decoded by the runner
  with the task's codec, threshold and NMS). A multi-level detector (``model.head=multi_level``) has one
  output per level and key, ``heatmap_s8``, ``size_s8``, ``offset_s8``, ... (all heatmaps finest first,
  then all sizes, then all offsets); its metadata holds ``strides``, and the runner regroups them into the
  per-level lists that PyTorch's model returns.

Metadata (``metadata_props``): ``repo.inference`` holds one JSON document (format version, kind, outputs,
the resolved config, the checkpoint's meta); the keys ``input_size``, ``keypoint_names``, ``flip_index``,
``mean``, ``std``, ``codec`` and ``class_names`` repeat what a reader without this repository wants.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import torch
from torch import nn

from models.errors import CheckpointError, InputError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
METADATA_KEY = "repo.inference"


class HeatmapGraph(nn.Module):
    """images uint8 [B, 3, H, W] -> heatmaps [B, K, h, w] (the last stack)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)[-1]


class DecodedKeypointGraph(nn.Module):
    """images uint8 [B, 3, H, W] -> (keypoints [B, K, 2] crop pixels, scores [B, K]): flip test and decode inside."""

    def __init__(self, model: nn.Module, codec, flip_index, flip_test: bool):
        super().__init__()
        self.model, self.codec, self.flip_test = model, codec, flip_test
        self.register_buffer("flip_index", torch.as_tensor(flip_index, dtype=torch.long), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        heatmaps = self.model(images)[-1]
        if self.flip_test:
            flipped = self.model(images.flip(-1))[-1]
            heatmaps = 0.5 * (heatmaps + self.codec.flip_heatmaps(flipped, self.flip_index))
        return self.codec.decode(heatmaps)


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


def _head_strides(model: nn.Module) -> list[int] | None:
    """The multi-level detector's strides, finest first; None for the single-level one."""
    from models.detector import MultiLevelCenterNetDetector

    return list(model.strides) if isinstance(model, MultiLevelCenterNetDetector) else None


def detector_output_names(strides: list[int] | None) -> list[str]:
    """The graph's output names: ``heatmap, size, offset``, or per level ``heatmap_s4, ..., offset_s32``."""
    if strides is None:
        return list(DETECTOR_KEYS)
    return [f"{key}_s{s}" for key in DETECTOR_KEYS for s in strides]


def inference_metadata(cfg, state: dict, model: nn.Module, outputs: str, flip_in_graph: bool) -> dict:
    """The JSON document stored under :data:`METADATA_KEY`."""
    from engine.config import config_to_dict

    norm = model.normalizer
    # InputNormalizer stores scale = 1 / (255 std) and shift = -mean / std: recover mean and std from them.
    std = (1.0 / (255.0 * norm.scale.flatten())).tolist()
    mean = (-norm.shift.flatten() / norm.scale.flatten() / 255.0).tolist()
    doc = {"format_version": FORMAT_VERSION, "kind": cfg.task, "outputs": outputs, "flip_in_graph": flip_in_graph,
           "input_size": [int(v) for v in cfg.data.input_size], "input": "uint8 RGB [B, 3, H, W]",
           "mean": [round(v, 6) for v in mean], "std": [round(v, 6) for v in std],
           "config": config_to_dict(cfg), "meta": state["meta"]}
    if cfg.task == "keypoints":
        from engine.tasks import keypoints as kp

        codec = kp.build_codec(cfg)
        doc.update(keypoint_names=state["meta"]["keypoint_names"], flip_index=state["meta"]["flip_index"],
                   codec={"heatmap_size": list(codec.heatmap_size), "stride": codec.stride, "sigma": codec.sigma,
                          "refine": codec.refine, "blur_kernel_size": codec.blur_kernel_size})
    else:
        doc["class_names"] = state["meta"]["class_names"]
        # None for the single-level head; the multi-level head's outputs are regrouped by these.
        doc["strides"] = _head_strides(model)
    return doc


def export_onnx(checkpoint: str, output: str, decode: bool = False, opset: int | None = None,
                verify: bool = True) -> dict:
    """Write ``checkpoint`` (a keypoint or detection checkpoint of tools.train) as an ONNX model at ``output``.

    Returns a summary (kind, outputs, path, size, and with ``verify`` the largest difference between
    onnxruntime and PyTorch on a random batch of 3).
    """
    import onnx

    from engine.inference import load_for_inference

    if checkpoint.endswith(".onnx"):
        raise InputError(f"--checkpoint {checkpoint} is already an ONNX model; pass the .pt checkpoint it came from")
    cfg, model, state = load_for_inference(checkpoint, torch.device("cpu"))
    if cfg.task == "keypoints":
        from engine.tasks import keypoints as kp

        if decode:
            graph = DecodedKeypointGraph(model, kp.build_codec(cfg), state["meta"]["flip_index"],
                                         cfg.eval.flip_test)
            names, outputs = ["keypoints", "scores"], "keypoints"
        else:
            graph, names, outputs = HeatmapGraph(model), ["heatmaps"], "heatmaps"
    elif cfg.task == "detection":
        if decode:
            raise InputError("--decode applies to keypoint models; a detector's decoding (peaks, NMS) stays in the "
                             "runner")
        graph, names, outputs = DetectorGraph(model), detector_output_names(_head_strides(model)), "centernet"
    else:
        raise CheckpointError(f"{checkpoint}: task {cfg.task!r} cannot be exported (keypoints or detection only)")
    graph.eval()
    w, h = (int(v) for v in cfg.data.input_size)
    # Batch 2 as the example: a batch of 1 would let the exporter specialise the batch dimension to 1.
    example = torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp = output + ".tmp"
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(graph, (example,), tmp, dynamo=True, external_data=False, opset_version=opset,
                      input_names=["images"], output_names=names, dynamic_shapes={"images": {0: batch}},
                      verbose=False)
    proto = onnx.load(tmp)
    doc = inference_metadata(cfg, state, model, outputs, decode and cfg.task == "keypoints" and cfg.eval.flip_test)
    props = {METADATA_KEY: json.dumps(doc), "input_size": json.dumps(doc["input_size"]),
             "mean": json.dumps(doc["mean"]), "std": json.dumps(doc["std"])}
    for key in ("keypoint_names", "flip_index", "codec", "class_names", "strides"):
        if key in doc:
            props[key] = json.dumps(doc[key])
    del proto.metadata_props[:]
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = "keypoint-fpn tools.export"
    onnx.checker.check_model(proto)
    onnx.save(proto, tmp)
    os.replace(tmp, output)
    summary = {"checkpoint": checkpoint, "output": output, "kind": cfg.task, "outputs": names,
               "bytes": os.path.getsize(output)}
    if verify:
        summary["max_abs_diff"] = verify_export(graph, output, example)
    return summary


def verify_export(graph: nn.Module, path: str, example: torch.Tensor) -> float | None:
    """Largest absolute difference between onnxruntime and PyTorch on a random batch of 3 (None without
    onnxruntime)."""
    try:
        import onnxruntime as ort
    except ImportError:
        log.warning("onnxruntime is not installed: %s was not checked against PyTorch", path)
        return None
    x = torch.randint(0, 256, (3, *example.shape[1:]), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref = graph(x)
    ref = ref if isinstance(ref, tuple) else (ref,)
    return float(max(np.abs(g - r.numpy()).max() for g, r in zip(got, ref)))
