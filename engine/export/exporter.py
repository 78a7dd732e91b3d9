"""ONNX export of a trained model, with what inference needs written into the file.

The graph takes ``images``: uint8 RGB ``[B, 3, H, W]`` (B dynamic, or fixed with ``batch``; a crop for a
keypoint model, the letterboxed image for a detector); the normalisation is the model's own first module, so
it is in the graph. What comes out is the task's business (its :class:`engine.tasks.base.OnnxOutputs`: heatmaps or
decoded keypoints for keypoint models, the raw maps of a detector); the metadata is
:mod:`engine.export.format`'s. A task without an ``onnx`` entry is refused in one line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from engine.config.loading import config_to_dict
from engine.export.format import FORMAT_VERSION, metadata_props
from engine.tasks.registry import TASKS, get_task, load_trained_model
from models.errors import CheckpointError, InputError

log = logging.getLogger(__name__)


def inference_metadata(cfg, state: dict, model: nn.Module, outputs: str, flip_in_graph: bool,
                       batch: int | None = None) -> dict:
    """The JSON document stored under :data:`engine.export.format.METADATA_KEY` (``batch``: the graph's fixed
    batch size, None when it is dynamic)."""
    norm = model.normalizer
    # InputNormalizer stores scale = 1 / (255 std) and shift = -mean / std: recover mean and std from them.
    std = (1.0 / (255.0 * norm.scale.flatten())).tolist()
    mean = (-norm.shift.flatten() / norm.scale.flatten() / 255.0).tolist()
    doc = {"format_version": FORMAT_VERSION, "kind": cfg.task, "outputs": outputs, "flip_in_graph": flip_in_graph,
           "input_size": [int(v) for v in cfg.data.input_size], "batch": batch,
           "input": f"uint8 RGB [{batch or 'B'}, 3, H, W]",
           "mean": [round(v, 6) for v in mean], "std": [round(v, 6) for v in std],
           "config": config_to_dict(cfg), "meta": state["meta"]}
    doc.update(get_task(cfg.task).onnx.metadata(cfg, state["meta"], model))
    return doc


def export_onnx(checkpoint: str, output: str, decode: bool = False, opset: int | None = None,
                verify: bool = True, weights: str = "model", eval_overrides: Sequence[str] = (),
                batch: int | None = None) -> dict:
    """Write ``checkpoint`` (a checkpoint of tools.train whose task declares an ONNX export) as an ONNX model at
    ``output``.

    Returns a summary (kind, outputs, path, size, and with ``verify`` the largest difference between
    onnxruntime and PyTorch on a random batch of 3). ``weights``: the checkpoint's trained weights (``"model"``)
    or their EMA (``"ema"``). ``eval_overrides``: dotted ``eval.*`` settings over the checkpoint's, for the
    graph (``eval.flip_test`` with ``--decode``) and the metadata the runner reads (``eval.recrop_passes``).
    ``batch``: fix the batch dimension at this size instead of leaving it dynamic. onnxruntime then drops the
    graph's shape arithmetic (3-10 % off the face cascade's time at batch 1 on a 2-core CPU, docs/results.md);
    the runners split larger batches into calls of this size.
    """
    batch = None if batch is None else int(batch)
    if batch is not None and batch < 1:
        raise InputError(f"--batch {batch}: a fixed batch must be 1 or more; leave --batch out for a dynamic one")
    import onnx  # an optional dependency (the [onnx] extra): only exporting needs it

    cfg, model, state = load_trained_model(checkpoint, torch.device("cpu"), weights, tuple(eval_overrides))
    spec = get_task(cfg.task).onnx
    if spec is None:
        exportable = sorted(name for name, entry in TASKS.items() if entry.onnx is not None)
        raise CheckpointError(f"{checkpoint}: task {cfg.task!r} has no ONNX export (its registry entry declares "
                              f"none); tasks with one: {', '.join(exportable)}")
    graph, names, outputs = spec.graph(model, cfg, state["meta"], decode)
    graph.eval()
    w, h = (int(v) for v in cfg.data.input_size)
    if batch is None:
        # Batch 2 as the example: a batch of 1 would let the exporter specialise the batch dimension to 1.
        example = torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8)
        dynamic = {"images": {0: torch.export.Dim("batch", min=1, max=4096)}}
    else:
        example, dynamic = torch.randint(0, 256, (batch, 3, h, w), dtype=torch.uint8), None
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp = output + ".tmp"
    try:            # written beside the output and moved over it at the end: an interrupted export leaves neither
        torch.onnx.export(graph, (example,), tmp, dynamo=True, external_data=False, opset_version=opset,
                          input_names=["images"], output_names=names, dynamic_shapes=dynamic, verbose=False)
        proto = onnx.load(tmp)
        flip_in_graph = bool(decode and outputs == "keypoints" and cfg.eval.flip_test)
        doc = inference_metadata(cfg, state, model, outputs, flip_in_graph, batch)
        del proto.metadata_props[:]
        for k, v in metadata_props(doc).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        proto.producer_name = "keypoint-fpn tools.export"
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    summary = {"checkpoint": checkpoint, "output": output, "kind": cfg.task, "outputs": names,
               "bytes": os.path.getsize(output)}
    if verify:
        summary["max_abs_diff"] = verify_export(graph, output, example.shape[1:], batch or 3)
    return summary


def verify_export(graph: nn.Module, path: str, image_shape: Sequence[int], batch: int = 3) -> float | None:
    """Largest absolute difference between onnxruntime and PyTorch on a random batch of ``batch`` uint8 images
    of ``image_shape`` [3, H, W] (None without onnxruntime)."""
    try:
        import onnxruntime as ort
    except ImportError:
        log.warning("onnxruntime is not installed: %s was not checked against PyTorch", path)
        return None
    x = torch.randint(0, 256, (batch, *image_shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref = graph(x)
    ref = ref if isinstance(ref, tuple) else (ref,)
    return float(max(np.abs(g - r.numpy()).max() for g, r in zip(got, ref)))
