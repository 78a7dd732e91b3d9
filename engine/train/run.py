"""Set up and run one training from a config, for any task (the loop itself is ``engine.train.loop.Trainer``).

In order: threads and seeds; the task's experiment (model, task object, loaders); weights for fine-tuning;
freezing (stages, name patterns, BatchNorm) and the list of what is trainable; optimiser and per-step
schedule; EMA; DistributedDataParallel; the run folder (resolved config, provenance); resume; the loop.

The stop signals of ``train.stop_signals`` (SIGTERM by default) are handled from the first of these steps to
the last (engine/train/stop.py): a signal during set-up stops before the first step, and the DataLoader
workers ignore the stop signals unless their parent sends them. Ctrl-C stays Python's KeyboardInterrupt.
"""

from __future__ import annotations

import logging
import math
import os
import random

import numpy as np
import torch

import engine.distributed as dist_utils
from engine.checkpoint import load_checkpoint, load_weights_for_finetuning, remove_stale_temporaries
from engine.config.loading import config_to_dict, save_config
from engine.config.sections import SMALL_HOLDOUT
from engine.tasks.registry import build_experiment
from engine.train.ema import ModelEMA
from engine.train.freeze import freeze_batchnorm, freeze_parameters, freeze_stages, trainable_summary
from engine.train.loop import Trainer, TrainerOptions
from engine.train.optim import build_optimizer, build_scheduler
from engine.train.provenance import provenance
from engine.train.run_folder import claim_run_dir, interrupted_error, stopped_error
from engine.train.stop import StopFlag, StopRequested, shield_workers, signal_name, stop_signals
from models.errors import CheckpointError, ConfigError, DataError
from models.utils import first_n, write_json

log = logging.getLogger(__name__)

# Train settings that may change on resume without notice, that change the state's meaning (warned), and
# that make the saved optimiser state unusable (refused).
RESUME_FREE = ("epochs", "log_interval", "eval_interval", "num_workers", "device", "num_threads", "init_weights",
               "init_weights_from", "stop_signals")
RESUME_STRICT = ("optimizer", "freeze", "freeze_stages", "decay_norm_and_bias")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(cfg, run_dir: str, device: torch.device, resume: str | None = None, progress: bool = True,
          epoch_hooks: tuple = (), overwrite: bool = False) -> dict:
    """Train ``cfg`` into ``run_dir`` (checkpoints, resolved config, logs, curves); returns the summary written
    to ``metrics.json``. ``epoch_hooks`` are called as ``hook(trainer, row)`` after each epoch. A ``run_dir``
    that holds a run is refused unless ``resume`` continues it or ``overwrite`` replaces it.

    Raises :class:`models.errors.Interrupted` on Ctrl-C and :class:`models.errors.Stopped` on a signal of
    ``train.stop_signals`` (exit code 128 + its number), each naming the complete ``last.pt``. The signals'
    handlers are installed for this call only and the previous ones restored after it."""
    config_dict = config_to_dict(cfg)
    with stop_signals(cfg.train.stop_signals) as stop:   # until metrics.json is written: a late signal waits
        state = None
        if resume:   # refuse a checkpoint of another set-up before building anything or writing into run_dir
            state = load_checkpoint(resume, map_location=device)
            check_resume_config(state.get("config", {}), config_dict, resume)
        elif cfg.train.init_weights_from != "model" and not cfg.train.init_weights:
            # a continuation config (e.g. a stage 2) started without the run it continues would train from
            # scratch at its small learning rate: a waste of hours that looks like a bad result
            raise ConfigError(f"train.init_weights_from = {cfg.train.init_weights_from!r} but no weights file: "
                              f"this config continues another run; give its checkpoint with --weights FILE "
                              f"(train.init_weights), or set train.init_weights_from=model to start from scratch")
        claim_run_dir(run_dir, resume, overwrite, is_main=dist_utils.rank() == 0)
        summary = _train(cfg, run_dir, device, state, resume, progress, epoch_hooks, config_dict, stop)
        if dist_utils.is_main_process():
            write_json(os.path.join(run_dir, "metrics.json"), summary, indent=2)
        if stop.signum:   # it came during the last epoch's validation or save: nothing was left to stop
            log.warning("%s arrived after the last training step; the run finished", signal_name(stop.signum))
    return summary


def _train(cfg, run_dir: str, device: torch.device, state: dict | None, resume: str | None, progress: bool,
           epoch_hooks: tuple, config_dict: dict, stop: StopFlag) -> dict:
    """Everything of :func:`train` that runs under the stop signals' handlers: set-up, then the loop."""
    _set_up_process(cfg.train)
    exp = build_experiment(cfg, device, progress=progress and dist_utils.is_main_process(),
                           rank=dist_utils.rank(), world_size=dist_utils.world_size())
    shield_workers((exp.train_loader, exp.val_loader), cfg.train.stop_signals)
    _prepare_model(exp.model, cfg.train, fine_tune=not resume)
    frozen, summary_text = _freeze(exp.model, cfg.train)
    optimizer, scheduler, steps_per_epoch = _optimisation(exp, cfg)
    ema = ModelEMA(exp.model, cfg.train.ema_decay, cfg.train.ema_warmup_steps) if cfg.train.ema_decay else None
    prov = _write_run_folder(cfg, run_dir, exp, summary_text, frozen)
    _log_start(exp, cfg.train, run_dir, steps_per_epoch)
    trainer = _make_trainer(cfg, exp, run_dir, device, optimizer, scheduler, ema, progress,
                            extra={"config": config_dict, "provenance": prov, **exp.checkpoint_extra}, stop=stop)
    trainer.on_epoch_end.extend(epoch_hooks)
    if state is not None:
        trainer.load_state_dict(state)
        log.info("resumed from %s at epoch %d, step %d", resume, trainer.epoch, trainer.global_step)
    try:
        summary = trainer.fit()
    except KeyboardInterrupt:
        raise interrupted_error(run_dir, trainer.epoch, cfg.train.epochs, trainer.global_step) from None
    except StopRequested as request:
        raise stopped_error(run_dir, trainer.epoch, cfg.train.epochs, trainer.global_step, request.signum,
                            rank=dist_utils.rank(), world_size=dist_utils.world_size()) from None
    summary["provenance"] = prov
    summary["config"] = config_dict
    return summary


def _set_up_process(t) -> None:
    """Threads and seeds, before anything draws a random number."""
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    seed_everything(t.seed)


def _prepare_model(model: torch.nn.Module, t, fine_tune: bool) -> None:
    """Memory layout, then the fine-tuning weights (``train.init_weights``; not when resuming, whose
    checkpoint holds the weights)."""
    if t.channels_last:     # in place: the same Parameter objects, so optimiser and EMA see NHWC weights
        model.to(memory_format=torch.channels_last)
    if t.init_weights and fine_tune:
        report = load_weights_for_finetuning(model, t.init_weights, t.init_weights_from)
        log.info("fine-tuning from %s (%s weights): %d tensors loaded; %d missing (left at init): %s; "
                 "%d unexpected (ignored): %s; %d of another shape (left at init): %s", t.init_weights,
                 t.init_weights_from, len(report["loaded"]),
                 len(report["missing"]), first_n(report["missing"], empty="-"), len(report["unexpected"]),
                 first_n(report["unexpected"], empty="-"), len(report["shape_mismatch"]),
                 first_n(report["shape_mismatch"], empty="-"))


def _freeze(model: torch.nn.Module, t) -> tuple[list[str], str]:
    """Freeze stages, name patterns and BatchNorm layers as configured; ``(frozen names, trainable summary)``."""
    frozen = freeze_stages(model, t.freeze_stages) + freeze_parameters(model, t.freeze)
    bn_frozen = freeze_batchnorm(model, t.freeze_bn)
    summary_text = trainable_summary(model)
    if frozen or bn_frozen:
        log.info("frozen: %d parameter tensors (%s); BatchNorm layers on running statistics: %d", len(frozen),
                 first_n(frozen, empty="-"), len(bn_frozen))
    log.info("%s", summary_text)
    return frozen, summary_text


def _optimisation(exp, cfg) -> tuple[torch.optim.Optimizer, object, int]:
    """The optimiser, its per-step schedule over the whole run, and the optimiser steps per epoch."""
    t = cfg.train
    optimizer = build_optimizer(exp.model, t.optimizer, t.lr, t.weight_decay, t.momentum, t.nesterov, betas=t.betas,
                                eps=t.eps, alpha=t.alpha, decay_norm_and_bias=t.decay_norm_and_bias)
    if len(exp.train_loader) == 0:
        raise DataError(f"{cfg.data.train.ann_file if hasattr(cfg.data, 'train') else 'the train split'}: no "
                        f"training batch (0 samples); nothing to train on")
    steps_per_epoch = math.ceil(len(exp.train_loader) / max(t.accumulate_steps, 1))
    scheduler = build_scheduler(optimizer, t.epochs * steps_per_epoch, steps_per_epoch, t.scheduler,
                                warmup_steps=t.warmup_steps, warmup_factor=t.warmup_factor,
                                min_lr_ratio=t.min_lr_ratio, step_epochs=t.step_epochs, gamma=t.gamma)
    return optimizer, scheduler, steps_per_epoch


def _write_run_folder(cfg, run_dir: str, exp, summary_text: str, frozen: list[str]) -> dict:
    """On rank 0: the resolved config, provenance and the list of what trains, written before the first step
    (leftovers of a save that was killed midway removed first). Returns the provenance ({} on other ranks)."""
    if not dist_utils.is_main_process():
        return {}
    os.makedirs(run_dir, exist_ok=True)
    stale = remove_stale_temporaries(run_dir)
    if stale:
        log.info("removed %d partial checkpoint files of an interrupted save: %s", len(stale), stale)
    save_config(cfg, os.path.join(run_dir, "config.yaml"))
    prov = provenance(cfg.train.seed, exp.annotation_files, exp.data_hashes)
    prov["world_size"] = dist_utils.world_size()
    write_json(os.path.join(run_dir, "provenance.json"), prov, indent=2)
    with open(os.path.join(run_dir, "parameters.txt"), "w") as f:
        f.write(summary_text + "\n\nfrozen parameters:\n" + "\n".join(frozen) + "\n")
    return prov


def _log_start(exp, t, run_dir: str, steps_per_epoch: int) -> None:
    world = dist_utils.world_size()
    n_params = sum(p.numel() for p in exp.model.parameters())
    log.info("run folder %s; %s parameters; %d optimiser steps per epoch (%d batches of %d%s)", run_dir,
             f"{n_params:,}", steps_per_epoch, len(exp.train_loader), t.batch_size,
             f" x {world} processes" if world > 1 else "")
    num_val = len(exp.val_loader.dataset) if exp.val_loader is not None else 0
    if 0 < num_val < SMALL_HOLDOUT:
        log.warning("the validation split has %d samples (< %d): its metrics move by chance from one evaluation to "
                    "the next, so best.pt is chosen on noise; compare last.pt, or label more validation images",
                    num_val, SMALL_HOLDOUT)


def _make_trainer(cfg, exp, run_dir: str, device: torch.device, optimizer, scheduler, ema, progress: bool,
                  extra: dict, stop: StopFlag | None = None) -> Trainer:
    """The loop, with the model wrapped for DistributedDataParallel when there are several processes."""
    t = cfg.train
    options = TrainerOptions(epochs=t.epochs, main_metric=cfg.eval.main_metric, log_interval=t.log_interval,
                             eval_interval=t.eval_interval, grad_clip_norm=t.grad_clip_norm, progress=progress,
                             checkpoint_extra=extra, accumulate_steps=t.accumulate_steps, precision=t.precision,
                             on_nonfinite=t.on_nonfinite, max_nonfinite_skips=t.max_nonfinite_skips,
                             check_inputs=t.check_inputs, check_grads=t.check_grads,
                             nominal_batch_size=t.batch_size, data_seed=t.seed)
    trainer = Trainer(dist_utils.wrap_ddp(exp.model, device), exp.task, exp.train_loader, exp.val_loader, optimizer,
                      scheduler, run_dir, options, ema=ema, stop=stop)
    if t.precision == "auto":
        log.info("train.precision=auto: %s on this %s%s", trainer.precision, device.type,
                 "" if trainer.precision == "bf16" else " (no native bf16: AVX512-BF16 / AMX on a CPU)")
    return trainer


def check_resume_config(saved: dict, current: dict, path: str) -> None:
    """Refuse to resume into another model, data or optimiser set-up, naming every field that differs; warn
    about training settings that differ (allowed, but the run no longer continues the interrupted one)."""
    errors = _diff(saved, current, ("task", "model", "data", "loss"))
    train_diffs = _diff(saved.get("train", {}), current.get("train", {}), None, prefix="train.")
    errors += [d for d in train_diffs if d.split(":")[0][len("train."):].split(".")[0] in RESUME_STRICT]
    if errors:
        raise CheckpointError(f"cannot resume from {path}: the config differs in {len(errors)} fields: "
                              + "; ".join(errors) + "; resume with the run's own config.yaml, or start a new run "
                              "(--weights to fine-tune)")
    warn = [d for d in train_diffs if d.split(":")[0][len("train."):].split(".")[0] not in RESUME_STRICT + RESUME_FREE]
    if warn:
        log.warning("resuming %s with different training settings (the run will not repeat the interrupted one): %s",
                    path, "; ".join(warn))


def _diff(a: dict, b: dict, sections, prefix: str = "") -> list[str]:
    diffs: list[str] = []

    def walk(x, y, name):
        if isinstance(x, dict) and isinstance(y, dict):
            for key in sorted(set(x) | set(y)):
                walk(x.get(key, "<absent>"), y.get(key, "<absent>"), f"{name}{key}" if not name else f"{name}.{key}")
        elif x != y:
            diffs.append(f"{name}: checkpoint {x!r} vs now {y!r}")

    if sections is None:
        for key in sorted(set(a) | set(b)):
            walk(a.get(key, "<absent>"), b.get(key, "<absent>"), f"{prefix}{key}")
    else:
        for section in sections:
            if section in a or section in b:
                walk(a.get(section, "<absent>"), b.get(section, "<absent>"), section)
    return diffs
