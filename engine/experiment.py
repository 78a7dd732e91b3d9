"""Entry points the tools call: train a config, evaluate a checkpoint, load a model for inference."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from engine.checkpoint import load_checkpoint, load_model_state
from engine.config import config_from_dict
from engine.tasks import classification as classification_task
from engine.tasks import detection as detection_task
from engine.tasks import keypoints as keypoint_task
from engine.training import run_training, seed_everything  # noqa: F401  (seed_everything: used by bench/)

log = logging.getLogger(__name__)

# task name -> function(cfg, device, progress) -> dict with model, task, loaders, meta, ...
EXPERIMENT_BUILDERS: dict[str, Callable] = {"keypoints": keypoint_task.build_experiment,
                                             "detection": detection_task.build_experiment}
EXPERIMENT_BUILDERS["classification"] = classification_task.build_experiment


def build_experiment(cfg, device: torch.device, progress: bool = True, rank: int = 0, world_size: int = 1) -> dict:
    if cfg.task not in EXPERIMENT_BUILDERS:
        raise ValueError(f"task {cfg.task!r} has no builder; known: {sorted(EXPERIMENT_BUILDERS)}")
    if world_size > 1:   # builders that support DistributedDataParallel shard their loaders by rank
        return EXPERIMENT_BUILDERS[cfg.task](cfg, device, progress=progress, rank=rank, world_size=world_size)
    return EXPERIMENT_BUILDERS[cfg.task](cfg, device, progress=progress)


def train(cfg, run_dir: str, device: torch.device, resume: str | None = None, progress: bool = True,
          epoch_hooks: tuple = ()) -> dict:
    """Train ``cfg`` into ``run_dir`` (checkpoints, resolved config, logs, curves); returns the summary.

    The set-up (fine-tuning weights, freezing, optimiser, schedule, EMA, DDP, resume) is in
    :func:`engine.training.run_training`; ``epoch_hooks`` are called as ``hook(trainer, row)`` after each epoch.
    """
    return run_training(cfg, run_dir, device, build_experiment, resume=resume, progress=progress,
                        epoch_hooks=epoch_hooks)


def load_for_inference(checkpoint: str, device: torch.device) -> tuple:
    """``(cfg, model in eval mode, checkpoint dict)`` from a checkpoint alone (its config and meta inside)."""
    state = load_checkpoint(checkpoint, map_location=device)
    if "config" not in state:
        raise ValueError(f"{checkpoint} carries no config; it was not written by tools.train")
    cfg = config_from_dict(state["config"])
    if cfg.task == "keypoints":
        meta = keypoint_task.KeypointMeta.from_dict(state["meta"])
        model = keypoint_task.build_model(cfg, len(meta.keypoint_names), pretrained=False)
    elif cfg.task == "detection":
        meta = detection_task.DetectionMeta.from_dict(state["meta"])
        model = detection_task.build_model(cfg, meta.num_classes, pretrained=False)
    elif cfg.task == "classification":
        model = classification_task.build_model(cfg, len(state["meta"]["class_names"]), pretrained=False)
    else:
        raise ValueError(f"{checkpoint}: task {cfg.task!r} cannot be loaded for inference here")
    load_model_state(model, state["model"], source=checkpoint)
    return cfg, model.to(device).eval(), state
