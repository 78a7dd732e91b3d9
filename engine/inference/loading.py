"""Loading a trained model for inference: from a checkpoint of ``tools.train`` or a model of ``tools.export``,
into the predictors every inference path shares (images, videos, ``tools.eval`` on detected boxes and
``engine.api`` all load through here)."""

from __future__ import annotations

import os

import torch

from engine.export.runtime import load_onnx_for_inference
from engine.inference.predictors import DetectionPredictor, TopDownPredictor
from engine.tasks.detection import DetectionMeta
from engine.tasks.detection import build_task as build_detection_task
from engine.tasks.keypoints import KeypointMeta
from engine.tasks.keypoints import build_task as build_keypoint_task
from engine.tasks.registry import load_trained_model
from models.errors import CheckpointError, InputError


def load_for_inference(checkpoint: str, device: torch.device) -> tuple:
    """``(cfg, model in eval mode, checkpoint dict)`` from a checkpoint alone (its config and meta inside).

    An exported ``.onnx`` model gives the same triple from its metadata, its model running on onnxruntime
    (:mod:`engine.export.runtime`)."""
    if checkpoint.endswith(".onnx"):
        return load_onnx_for_inference(checkpoint, device)
    return load_trained_model(checkpoint, device)


def load_keypoint_predictor(path: str, device: torch.device, flip_test: bool | None = None,
                            batch_size: int = 32, loaded: tuple | None = None, first_pass: str | None = None,
                            recrop_passes: int | None = None) -> tuple[TopDownPredictor, object]:
    """``(TopDownPredictor, cfg)`` of a keypoint checkpoint or exported ONNX model (via :func:`load_for_inference`,
    or its ``loaded`` result when the caller has it already). flip_test: None keeps the model's
    ``eval.flip_test``; recrop_passes: None keeps its ``eval.recrop_passes``. ``first_pass``: a cheaper keypoint
    model (checkpoint or ONNX) of the same keypoints that makes the first prediction, whose tight boxes this
    model re-crops on (:class:`TopDownPredictor`'s cascade)."""
    cfg, model, state = loaded or load_for_inference(path, device)
    if cfg.task != "keypoints":
        raise CheckpointError(f"--checkpoint {path} is a {cfg.task!r} checkpoint; pass a detector as "
                              f"--det-checkpoint and a keypoint model as --checkpoint")
    task = build_keypoint_task(cfg, KeypointMeta.from_dict(state["meta"]), progress=False, flip_test=flip_test)
    passes = cfg.eval.recrop_passes if recrop_passes is None else int(recrop_passes)
    first = load_first_pass(first_pass, device, task.meta, path, passes, batch_size) if first_pass else None
    return TopDownPredictor(model, task, cfg.data.input_size, cfg.data.bbox_padding, batch_size=batch_size,
                            recrop_passes=passes, first_pass=first), cfg


def load_first_pass(path: str, device: torch.device, meta: KeypointMeta, second: str, recrop_passes: int,
                    batch_size: int = 32) -> TopDownPredictor:
    """The first pass of a cascade (``--first-pass``): ``path``'s predictor without re-crops, refused in one
    line when it predicts other keypoints than ``meta``'s (the model at ``second``) or when the second model
    has no re-crop pass to run on its boxes."""
    if recrop_passes < 1:
        raise InputError(f"--first-pass {path}: the first pass only places the re-crops of {second}, whose "
                         f"eval.recrop_passes is 0, so it would never run; add eval.recrop_passes=1")
    if not os.path.isfile(path):
        raise InputError(f"--first-pass {path}: no such file (a keypoint checkpoint of tools.train or an .onnx of "
                         f"tools.export)")
    loaded = load_for_inference(path, device)
    if loaded[0].task != "keypoints":
        raise CheckpointError(f"--first-pass {path} is a {loaded[0].task!r} checkpoint; a first pass is a keypoint "
                              f"model with the same keypoints as {second}")
    first, _ = load_keypoint_predictor(path, device, batch_size=batch_size, loaded=loaded, recrop_passes=0)
    names, expected = list(first.task.meta.keypoint_names), list(meta.keypoint_names)
    if names != expected:
        raise InputError(f"--first-pass {path}: predicts {len(names)} keypoints ({', '.join(names[:3])}, ...), "
                         f"{second} {len(expected)} ({', '.join(expected[:3])}, ...); a first pass must predict "
                         f"the same keypoints")
    return first


def load_detection_predictor(path: str, device: torch.device, batch_size: int = 8,
                             loaded: tuple | None = None) -> tuple[DetectionPredictor, object]:
    """``(DetectionPredictor, cfg)`` of a detection checkpoint or exported ONNX detector (``loaded``: its
    :func:`load_for_inference` result, when the caller has it); ``batch_size`` images per forward pass of
    ``predict_many`` (videos)."""
    cfg, model, state = loaded or load_for_inference(path, device)
    if cfg.task != "detection":
        raise CheckpointError(f"--det-checkpoint {path} is a {cfg.task!r} checkpoint, not a detector")
    task = build_detection_task(cfg, DetectionMeta.from_dict(state["meta"]), progress=False)
    return DetectionPredictor(model, task, cfg.data.input_size, batch_size=batch_size), cfg
