"""Entry points the tools call: train a config, evaluate a checkpoint, load a model for inference."""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable

import numpy as np
import torch

from engine.checkpoint import load_checkpoint, load_model_state
from engine.config import config_from_dict, config_to_dict, save_config
from engine.optim import build_optimizer, build_scheduler
from engine.provenance import provenance
from engine.tasks import keypoints as keypoint_task
from engine.trainer import Trainer, TrainerOptions

log = logging.getLogger(__name__)

# task name -> function(cfg, device, progress) -> dict with model, task, loaders, meta, ...
EXPERIMENT_BUILDERS: dict[str, Callable] = {"keypoints": keypoint_task.build_experiment}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_experiment(cfg, device: torch.device, progress: bool = True) -> dict:
    if cfg.task not in EXPERIMENT_BUILDERS:
        raise ValueError(f"task {cfg.task!r} has no builder; known: {sorted(EXPERIMENT_BUILDERS)}")
    return EXPERIMENT_BUILDERS[cfg.task](cfg, device, progress=progress)


def train(cfg, run_dir: str, device: torch.device, resume: str | None = None, progress: bool = True) -> dict:
    """Train ``cfg`` into ``run_dir`` (checkpoints, resolved config, logs, curves); returns the summary."""
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    seed_everything(cfg.train.seed)
    exp = build_experiment(cfg, device, progress)
    model = exp["model"]
    t = cfg.train
    optimizer = build_optimizer(model, t.optimizer, t.lr, t.weight_decay, t.momentum, t.nesterov)
    steps_per_epoch = len(exp["train_loader"])
    scheduler = build_scheduler(optimizer, t.epochs * steps_per_epoch, steps_per_epoch, t.scheduler,
                                warmup_steps=t.warmup_steps, warmup_factor=t.warmup_factor,
                                min_lr_ratio=t.min_lr_ratio, step_epochs=t.step_epochs, gamma=t.gamma)
    os.makedirs(run_dir, exist_ok=True)
    save_config(cfg, os.path.join(run_dir, "config.yaml"))
    prov = provenance(t.seed, exp["annotation_files"])
    _write_json(os.path.join(run_dir, "provenance.json"), prov)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("run folder %s; %s parameters; %d training steps per epoch", run_dir, f"{n_params:,}", steps_per_epoch)
    extra = {"config": config_to_dict(cfg), "provenance": prov, **exp.get("checkpoint_extra", {})}
    options = TrainerOptions(epochs=t.epochs, main_metric=cfg.eval.main_metric, log_interval=t.log_interval,
                             eval_interval=t.eval_interval, grad_clip_norm=t.grad_clip_norm, progress=progress,
                             checkpoint_extra=extra)
    trainer = Trainer(model, exp["task"], exp["train_loader"], exp["val_loader"], optimizer, scheduler, run_dir,
                      options)
    if resume:
        state = load_checkpoint(resume, map_location=device)
        _check_resume_config(state.get("config", {}), extra["config"], resume)
        trainer.load_state_dict(state)
        log.info("resumed from %s at epoch %d, step %d", resume, trainer.epoch, trainer.global_step)
    summary = trainer.fit()
    summary["provenance"] = prov
    _write_json(os.path.join(run_dir, "metrics.json"), summary)
    return summary


def load_for_inference(checkpoint: str, device: torch.device) -> tuple:
    """``(cfg, model in eval mode, checkpoint dict)`` from a checkpoint alone (its config and meta inside)."""
    state = load_checkpoint(checkpoint, map_location=device)
    if "config" not in state:
        raise ValueError(f"{checkpoint} carries no config; it was not written by tools.train")
    cfg = config_from_dict(state["config"])
    if cfg.task == "keypoints":
        meta = keypoint_task.KeypointMeta.from_dict(state["meta"])
        model = keypoint_task.build_model(cfg, len(meta.keypoint_names), pretrained=False)
    else:
        raise ValueError(f"{checkpoint}: task {cfg.task!r} cannot be loaded for inference here")
    load_model_state(model, state["model"], source=checkpoint)
    return cfg, model.to(device).eval(), state


def _check_resume_config(saved: dict, current: dict, path: str) -> None:
    """Refuse to resume into a different model or data; say which fields differ."""
    diffs = []

    def walk(a, b, prefix):
        for key in sorted(set(a) | set(b)):
            va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
            name = f"{prefix}{key}"
            if isinstance(va, dict) and isinstance(vb, dict):
                walk(va, vb, name + ".")
            elif va != vb:
                diffs.append(f"{name}: checkpoint {va!r} vs now {vb!r}")

    for section in ("task", "model", "data"):
        a, b = saved.get(section, {}), current.get(section, {})
        if isinstance(a, dict) and isinstance(b, dict):
            walk(a, b, section + ".")
        elif a != b:
            diffs.append(f"{section}: checkpoint {a!r} vs now {b!r}")
    if diffs:
        raise ValueError(f"cannot resume from {path}: the config differs in {len(diffs)} fields: " + "; ".join(diffs))


def _write_json(path: str, obj) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(path + ".tmp", path)
