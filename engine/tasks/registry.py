"""The task table: a config's ``task`` -> the function that builds its experiment.

A new task is a module in ``engine/tasks/`` whose task class satisfies ``engine.tasks.base.Task`` and whose
``build_experiment(cfg, device, progress, rank, world_size)`` returns the parts; add one line here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from engine.tasks import classification, detection, keypoints
from engine.tasks.base import Experiment
from models.errors import ConfigError

EXPERIMENT_BUILDERS: dict[str, Callable[..., Experiment]] = {
    "keypoints": keypoints.build_experiment,
    "detection": detection.build_experiment,
    "classification": classification.build_experiment,
}


def build_experiment(cfg, device: torch.device, progress: bool = True, rank: int = 0,
                     world_size: int = 1) -> Experiment:
    """The model, task object, loaders and meta of ``cfg.task`` (loaders sharded by ``rank`` under DDP)."""
    if cfg.task not in EXPERIMENT_BUILDERS:
        raise ConfigError(f"task {cfg.task!r} has no builder; known: {sorted(EXPERIMENT_BUILDERS)}")
    return EXPERIMENT_BUILDERS[cfg.task](cfg, device, progress=progress, rank=rank, world_size=world_size)


EVALUATION_BUILDERS: dict[str, Callable[..., Experiment]] = {
    "keypoints": keypoints.build_evaluation,
    "detection": detection.build_evaluation,
}


def build_evaluation(cfg, device: torch.device, progress: bool = True) -> Experiment:
    """The validation side of ``cfg.task`` (loader, ground truth, task, an untrained model to load weights into)."""
    if cfg.task not in EVALUATION_BUILDERS:
        raise ConfigError(f"task {cfg.task!r} cannot be evaluated by tools.eval (known: "
                          f"{sorted(EVALUATION_BUILDERS)}); its validation metrics are in the run's metrics.json")
    return EVALUATION_BUILDERS[cfg.task](cfg, device, progress=progress)
