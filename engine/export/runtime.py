"""Exported models on onnxruntime, behind the same interfaces as the PyTorch ones.

:class:`OnnxModule` is an ``nn.Module`` whose forward runs an onnxruntime session and returns what the
PyTorch model returns (a list ending with the heatmaps, or the detector's dict), so every PyTorch code
path around the network (crops, flip test on the mirrored crop, decoding, mapping back, rescoring,
OKS-NMS, detection decoding and NMS) runs unchanged on it, and the results agree with PyTorch's up to the
float differences of the network itself. Decoding runs in torch on the heatmaps; a model exported with
``--decode`` returns keypoints itself (:class:`DecodedKeypointRunner`, no PyTorch needed beyond this file's
few lines of affine mapping).

:func:`load_onnx_for_inference` returns what :func:`engine.inference.loading.load_for_inference` returns for a
checkpoint (``cfg``, model, ``state`` with ``meta``), rebuilt from the file's metadata alone.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from datasets.affine import crop_box
from engine.checkpoint import load_checkpoint
from engine.export.format import check_input, fixed_batch, metadata_of
from engine.tasks.registry import config_from_dict, get_task
from models.bbox import keypoints_tight_box
from models.errors import CheckpointError, InputError


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise InputError("--backend onnxruntime needs the onnxruntime package: pip install -r requirements.txt") \
            from None
    return ort


def open_session(path: str, options=None, providers: list[str] | None = None):
    """An onnxruntime session of the file at ``path``: InputError when there is no such file, CheckpointError
    when it is not a readable ONNX model, each in one line that says how to write one."""
    ort = _import_ort()
    if not os.path.isfile(path):
        raise InputError(f"ONNX model {path} does not exist; write one with python -m tools.export --checkpoint "
                         f"best.pt --output {path}")
    try:
        return ort.InferenceSession(path, options, providers=providers or ["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for unreadable files
        raise CheckpointError(f"{path} is not a readable ONNX model ({type(err).__name__}: {err}); export it again "
                              f"with python -m tools.export") from None


def read_metadata(path: str) -> dict:
    """The inference metadata of an ONNX file written by tools.export (CheckpointError when absent)."""
    return metadata_of(path, open_session(path))


def _providers(device: torch.device) -> list[str]:
    ort = _import_ort()
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _check_graph(path: str, sess, doc: dict) -> None:
    """The graph's input size and outputs must be those its metadata declares (CheckpointError otherwise)."""
    check_input(path, sess, doc)
    entry = get_task(doc["kind"])
    if entry.onnx is None:
        raise CheckpointError(f"{path}: task {doc['kind']!r} has no ONNX format in this repository")
    entry.onnx.check_graph(path, sess, doc)


def run_batched(session, images, batch: int | None, name: str = "images") -> list:
    """``session.run`` on ``images`` [N, ...]: in one call, or, for a graph whose batch is fixed at ``batch``, in
    calls of that size, the last one padded with copies of its last image (zeros when N is 0) and every output
    cut back to N rows (all outputs are batch-first)."""
    if batch is None or len(images) == batch:
        return session.run(None, {name: images})
    parts = []
    for start in range(0, max(len(images), 1), batch):
        chunk = images[start:start + batch]
        n = len(chunk)
        fill = chunk[-1:] if n else np.zeros((1, *images.shape[1:]), images.dtype)
        padded = np.concatenate([chunk, np.repeat(fill, batch - n, axis=0)]) if n < batch else chunk
        parts.append([out[:n] for out in session.run(None, {name: padded})])
    return [np.concatenate(outs) for outs in zip(*parts)]


class OnnxModule(nn.Module):
    """An exported heatmap model or detector as an ``nn.Module`` on onnxruntime (see the module docstring).

    forward(images [B, 3, H, W] uint8) -> ``[heatmaps [B, K, h, w]]`` or ``{"heatmap", "size", "offset"}``
    (for a multi-level detector each a list of one tensor per level, finest first, as PyTorch's), torch
    tensors on the device the module was moved to (its one empty parameter says which, as PyTorch code finds
    a model's device from its parameters).
    """

    def __init__(self, path: str, device: torch.device | None = None, threads: int | None = None):
        super().__init__()
        device = device or torch.device("cpu")
        ort = _import_ort()
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.path = path
        self.session = open_session(path, opts, _providers(device))
        self.doc = metadata_of(path, self.session)
        _check_graph(path, self.session, self.doc)
        self.kind, self.outputs = self.doc["kind"], self.doc["outputs"]
        self.input_name = self.session.get_inputs()[0].name
        self.batch = fixed_batch(self.session)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._device_anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def run(self, images: torch.Tensor | np.ndarray) -> list[np.ndarray]:
        x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if x.dtype != np.uint8:
            raise InputError(f"{self.path} takes uint8 RGB images [B, 3, H, W]; got {x.dtype}")
        return run_batched(self.session, np.ascontiguousarray(x), self.batch, self.input_name)

    def forward(self, images: torch.Tensor):
        device = self._device_anchor.device
        outs = [torch.from_numpy(o).to(device) for o in self.run(images)]
        return get_task(self.kind).onnx.unflatten(outs, self.doc)


def load_onnx_for_inference(path: str, device: torch.device) -> tuple:
    """``(cfg, model, state)`` of an exported heatmap model or detector, like
    :func:`engine.inference.loading.load_for_inference` for a checkpoint (``state`` holds ``meta`` and ``config``)."""
    model = OnnxModule(path, device)
    if model.outputs == "keypoints":
        raise CheckpointError(f"{path} was exported with --decode (keypoints in crop pixels, flip test inside), "
                              f"which this pipeline cannot flip-test or batch differently; export it without "
                              f"--decode for tools.infer and engine.api, or run it with "
                              f"engine.export.runtime.DecodedKeypointRunner")
    cfg = config_from_dict(model.doc["config"])
    return cfg, model.to(device).eval(), {"meta": model.doc["meta"], "config": model.doc["config"]}


def check_matches_checkpoint(onnx_path: str, checkpoint: str) -> None:
    """CheckpointError naming the field when an exported model and a checkpoint disagree (input size,
    keypoints, flip map, classes)."""
    doc = read_metadata(onnx_path)
    state = load_checkpoint(checkpoint, map_location="cpu")
    cfg = state.get("config", {})
    meta = state.get("meta", {})
    if cfg.get("task") != doc["kind"]:
        raise CheckpointError(f"{onnx_path} is a {doc['kind']!r} model but {checkpoint} a {cfg.get('task')!r} one; "
                              f"pass the checkpoint it was exported from")
    size = [int(v) for v in cfg["data"]["input_size"]]
    if size != doc["input_size"]:
        raise CheckpointError(f"input size differs: {onnx_path} takes {doc['input_size']} but {checkpoint} "
                              f"{size}; export the checkpoint again (python -m tools.export --checkpoint "
                              f"{checkpoint} --output {onnx_path})")
    for key in ("keypoint_names", "flip_index", "class_names"):
        if key in meta and meta[key] != doc["meta"].get(key):
            ours, theirs = doc["meta"].get(key), meta[key]
            what = f"{len(ours)} vs {len(theirs)}" if len(ours or []) != len(theirs) else "same count, other values"
            raise CheckpointError(f"{key} differ ({what}) between {onnx_path} and {checkpoint}; export the "
                                  f"checkpoint again")


class DecodedKeypointRunner:
    """A keypoint model exported with ``--decode``: crops in, keypoints out, no torch in the loop.

    ``predict(crops uint8 [B, H, W, 3], crop_to_image [B, 2, 3])`` -> [B, K, 3] (x, y, score) in image pixels.
    ``spin=False`` lets onnxruntime's threads sleep as soon as a run ends instead of spinning for the next one:
    where two sessions take turns (a cascade), each one's spinning threads otherwise hold the cores the other
    needs.
    """

    def __init__(self, path: str, threads: int | None = None, first_pass: DecodedKeypointRunner | None = None,
                 spin: bool = True):
        ort = _import_ort()
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        if not spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = open_session(path, opts)
        self.doc = metadata_of(path, self.session)
        if self.doc["outputs"] != "keypoints":
            raise CheckpointError(f"{path} outputs {self.doc['outputs']}, not decoded keypoints; export it with "
                                  f"--decode or load it with engine.api.load")
        if first_pass is not None and first_pass.doc["keypoint_names"] != self.doc["keypoint_names"]:
            raise InputError(f"first pass {first_pass.path}: predicts {len(first_pass.doc['keypoint_names'])} "
                             f"keypoints, {path} {len(self.doc['keypoint_names'])}; a first pass must predict the "
                             f"same keypoints")
        self.path, self.first_pass, self.batch = path, first_pass, fixed_batch(self.session)

    def predict(self, crops: np.ndarray, crop_to_image: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(crops, dtype=np.uint8).transpose(0, 3, 1, 2))
        kpts, scores = run_batched(self.session, x, self.batch)
        m = np.asarray(crop_to_image, dtype=np.float64)
        xy = np.einsum("bij,bkj->bki", m[:, :, :2], kpts.astype(np.float64)) + m[:, None, :, 2]
        return np.concatenate([xy, scores[..., None].astype(np.float64)], -1)

    def predict_boxes(self, image: np.ndarray, boxes, recrop_passes: int | None = None) -> np.ndarray:
        """Keypoints [N, K, 3] (x, y, score in image pixels) of an RGB uint8 image's ``boxes`` [N, 4] (inclusive
        xyxy): each box cropped as in training, run, mapped back; then ``recrop_passes`` times (default: the
        exported config's ``eval.recrop_passes``) cropped again on the predicted points' tight box, so a
        landmark model trained on tight boxes sees its own box whatever a face detector gave (the PyTorch
        path's :class:`engine.inference.predictors.TopDownPredictor` does the same). With a ``first_pass``
        runner (a cascade), the first prediction is that cheaper model's, and the passes (at least 1) are
        this model's, on its points' tight boxes."""
        cfg = self.doc["config"]
        passes = cfg["eval"].get("recrop_passes", 0) if recrop_passes is None else int(recrop_passes)
        size, padding = self.doc["input_size"], float(cfg["data"]["bbox_padding"])
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if len(boxes) == 0:
            return np.zeros((0, len(self.doc["keypoint_names"]), 3))
        if self.first_pass is not None:
            if passes < 1:
                raise InputError(f"{self.path}: with a first pass, recrop_passes must be 1 or more (this model "
                                 f"runs on the first pass's boxes only)")
            pred = self.first_pass.predict_boxes(image, boxes, recrop_passes=0)
        else:
            pred = self._predict_crops(image, boxes, size, padding)
        for _ in range(passes):
            pred = self._predict_crops(image, keypoints_tight_box(pred[..., :2], boxes), size, padding)
        return pred

    def _predict_crops(self, image: np.ndarray, boxes: np.ndarray, size, padding: float) -> np.ndarray:
        crops, mats = zip(*(crop_box(image, b, size, padding) for b in boxes))
        return self.predict(np.stack(crops), np.stack(mats))
