"""The task table: a config's ``task`` -> its :class:`engine.tasks.base.TaskEntry`, and what is done by name.

Everything that depends on which task a config or a checkpoint is goes through here: reading a config
against its task's schema and ranges (:func:`load_config`, :func:`config_from_dict`), building a training
or evaluation experiment, and rebuilding a trained model from a checkpoint alone
(:func:`load_trained_model`). The built-in tasks are listed at the bottom of this file; a task defined
elsewhere (a plug-in, a test) calls :func:`register` with its entry before its configs are read.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from engine.checkpoint import checkpoint_weights, load_checkpoint, load_model_state
from engine.config.loading import config_from_containers, parse_overrides, read_yaml
from engine.config.sections import check_common_ranges
from engine.tasks import classification, detection, keypoints
from engine.tasks.base import Experiment, TaskEntry
from models.errors import CheckpointError, ConfigError

TASKS: dict[str, TaskEntry] = {}


def register(entry: TaskEntry, replace: bool = False) -> TaskEntry:
    """Add ``entry`` to the table (``replace``: over an entry of the same name); returns it."""
    if entry.name in TASKS and not replace and TASKS[entry.name] is not entry:
        raise ValueError(f"task {entry.name!r} is registered already; pass replace=True to replace it")
    TASKS[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    TASKS.pop(name, None)


def get_task(name: str) -> TaskEntry:
    """The entry of task ``name``; ConfigError naming the known tasks otherwise."""
    if name not in TASKS:
        raise ConfigError(f"task {name!r} is not one of {sorted(TASKS)}")
    return TASKS[name]


# ---------------------------------------------------------------------------------------------- configs
def check_ranges(cfg: Any) -> list[str]:
    """Every value of ``cfg`` outside its range: the shared sections', then its task's."""
    return check_common_ranges(cfg) + get_task(cfg.task).check_ranges(cfg)


def config_from_sources(task: str, sources: list[tuple[str, Any]]) -> Any:
    """The config of ``task`` from ``(name, container)`` sources merged in order, typed and range-checked."""
    return config_from_containers(get_task(task).schema, sources, check_ranges)


def load_config(path: str, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """Read ``path`` (YAML), apply dotted ``overrides`` (``train.lr=0.01``), check, return the task's config
    dataclass. The task is the file's ``task`` (``keypoints`` when absent) unless an override sets it."""
    raw = read_yaml(path)
    over = parse_overrides(overrides)
    task = over.get("task") if "task" in over else raw.get("task", "keypoints")
    return config_from_sources(task, [(path, raw), ("command-line override", over)])


def config_from_dict(data: dict, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """Rebuild a config from the plain dict saved in a checkpoint (or an exported model's metadata), with
    dotted ``overrides`` applied on top."""
    sources = [("checkpoint config", OmegaConf.create(data))]
    if overrides:
        sources.append(("command-line override", parse_overrides(overrides)))
    return config_from_sources(data.get("task", "keypoints"), sources)


# ---------------------------------------------------------------------------------------------- building
def build_experiment(cfg, device: torch.device, progress: bool = True, rank: int = 0,
                     world_size: int = 1) -> Experiment:
    """The model, task object, loaders and meta of ``cfg.task`` (loaders sharded by ``rank`` under DDP)."""
    return get_task(cfg.task).build_experiment(cfg, device, progress=progress, rank=rank, world_size=world_size)


def build_evaluation(cfg, device: torch.device, progress: bool = True) -> Experiment:
    """The validation side of ``cfg.task`` (loader, ground truth, task, an untrained model to load weights into)."""
    entry = get_task(cfg.task)
    if entry.build_evaluation is None:
        raise ConfigError(f"task {cfg.task!r} cannot be evaluated by tools.eval (it declares no build_evaluation); "
                          f"its validation metrics are in the run's metrics.json")
    return entry.build_evaluation(cfg, device, progress=progress)


def load_trained_model(checkpoint: str, device: torch.device, weights: str = "model",
                       eval_overrides: list[str] | tuple[str, ...] = ()) -> tuple[Any, nn.Module, dict]:
    """``(cfg, model in eval mode on device, checkpoint dict)`` from a checkpoint of ``tools.train`` alone: its
    config says the task, whose entry builds the model its weights load into. ``weights``: ``"model"`` (the
    trained weights) or ``"ema"`` (their moving average, when the run kept one). ``eval_overrides``: dotted
    ``eval.*`` settings applied over the checkpoint's (the weights fix every other section)."""
    state = load_checkpoint(checkpoint, map_location=device)
    if "config" not in state:
        raise CheckpointError(f"{checkpoint} carries no config; it was not written by tools.train")
    not_eval = [o for o in eval_overrides if not o.strip().startswith("eval.")]
    if not_eval:
        raise ConfigError(f"{not_eval[0]}: only eval.* settings can change after training (the weights fix the "
                          f"model, data and loss sections); e.g. eval.flip_test=true")
    cfg = config_from_dict(state["config"], eval_overrides)
    entry = get_task(cfg.task)
    if entry.build_inference_model is None:
        raise CheckpointError(f"{checkpoint}: task {cfg.task!r} declares no inference model "
                              f"(TaskEntry.build_inference_model), so it cannot be loaded for inference")
    model = entry.build_inference_model(cfg, state.get("meta") or {})
    load_model_state(model, checkpoint_weights(state, checkpoint, weights), source=checkpoint)
    return cfg, model.to(device).eval(), state


# The built-in tasks; a new one is one more entry here (or a register() call where it is defined).
for _entry in (keypoints.ENTRY, detection.ENTRY, classification.ENTRY):
    register(_entry)
