"""One training loop for every task.

The trainer knows nothing about keypoints, boxes or classes: a task object turns a batch into a dict with a
``"loss"`` (the trainer calls ``backward`` on it and logs the other entries) and evaluates a model on a
loader into a dict of metrics. Checkpoints (``last.pt`` every epoch, ``best.pt`` by the main metric) go to the
run folder with the resolved config and provenance.

What the loop does around the task, in order, for every batch (docs/training.md explains each):

* forward and loss under the precision chosen once (``fp32``, ``bf16`` autocast, or ``fp16`` autocast with
  a gradient scaler);
* one host sync to check that the loss is finite (and, when asked, the inputs); a failure builds the deep
  report of :mod:`engine.train.nonfinite`, saves the batch, then stops or skips the step;
* ``backward`` of the loss weighted by the batch's share of the accumulation group: gradients add up in
  ``.grad`` over ``accumulate_steps`` batches (that is why ``zero_grad`` exists at all), so N batches of B
  give the gradient of one batch of N x B;
* every ``accumulate_steps`` batches: unscale (fp16), optional clipping by global norm, optional gradient
  check, optimiser step, ``zero_grad``, scheduler step (per optimiser step), EMA update.

A stop signal (SIGTERM; :mod:`engine.train.stop`) is read at the start of every epoch and at each step's
finite-loss sync, agreed by every rank in the same all-reduce, and ends :meth:`Trainer.fit` with
:class:`engine.train.stop.StopRequested` before that step's ``backward``: ``last.pt`` stays the last
end-of-epoch checkpoint, the one that resumes bit-identically.

The epoch loss is the sample-weighted mean ``sum(loss_i * n_i) / sum(n_i)``: a short last batch counts for
its samples, not as much as a full batch. Under DistributedDataParallel the sums are reduced over ranks and
only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import engine.distributed as dist_utils
from engine.checkpoint import save_checkpoint
from engine.config.sections import NONFINITE_POLICIES
from engine.tasks.base import SavesArtifacts, Task
from engine.train import nonfinite
from engine.train.curves import plot_training_curves
from engine.train.ema import ModelEMA
from engine.train.logger import RunLogger
from engine.train.nonfinite import NonFiniteError
from engine.train.precision import resolve_precision
from engine.train.run_folder import check_epoch_trained
from engine.train.stop import StopFlag, StopRequested
from models.utils import device_of

log = logging.getLogger(__name__)


def metric_is_lower_better(name: str) -> bool:
    return name.lower().startswith(("nme", "loss", "error"))


@dataclass
class TrainerOptions:
    epochs: int
    main_metric: str
    log_interval: int = 20
    eval_interval: int = 1
    grad_clip_norm: float | None = None
    progress: bool = True
    checkpoint_extra: dict = field(default_factory=dict)   # config, provenance, dataset meta
    accumulate_steps: int = 1           # batches per optimiser step
    precision: str = "fp32"             # fp32 | bf16 | fp16 | auto (engine/train/precision.py)
    on_nonfinite: str = "stop"          # stop | skip
    max_nonfinite_skips: int = 20       # stop anyway after this many skipped steps in one run
    check_inputs: bool = False          # also check the batch's float tensors every step (syncs)
    check_grads: bool = False           # also check the gradient norm every step (syncs)
    nominal_batch_size: int | None = None   # per-process batch size; weights short batches in accumulation
    data_seed: int | None = None        # the sampler's seed, stored so that a resume continues its order


class Trainer:
    """Args:
        model: the network (on its device already), possibly wrapped in DistributedDataParallel.
        task: an :class:`engine.tasks.base.Task` (``training_step``, ``validate``, ``batch_ids``); one that is
            also :class:`engine.tasks.base.SavesArtifacts` writes pictures of each validation (rank 0 only).
        train_loader / val_loader: loaders whose sampler has ``set_epoch`` (a SeededSampler).
        optimizer, scheduler: the scheduler is stepped once per optimiser step.
        run_dir: output folder.
        ema: optional :class:`engine.train.ema.ModelEMA`, updated after every optimiser step and evaluated alongside.
        stop: the :class:`engine.train.stop.StopFlag` that signal handlers set (``engine.train.run.train``
            installs them); None: a flag nothing sets.
    """

    def __init__(self, model: nn.Module, task: Task, train_loader, val_loader, optimizer: torch.optim.Optimizer,
                 scheduler, run_dir: str, options: TrainerOptions, ema: ModelEMA | None = None,
                 stop: StopFlag | None = None):
        if options.on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"train.on_nonfinite={options.on_nonfinite!r} is not one of {NONFINITE_POLICIES}")
        if options.accumulate_steps < 1:
            raise ValueError(f"train.accumulate_steps must be >= 1, got {options.accumulate_steps}")
        self.model = model
        self.module = dist_utils.unwrap(model)
        self.task = task
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.run_dir = run_dir
        self.options = options
        self.ema = ema
        self.stop = stop if stop is not None else StopFlag()
        self.device = device_of(self.module)
        self.is_main = dist_utils.is_main_process()
        self.distributed = dist_utils.is_distributed()
        # Precision is decided once: the autocast dtype, and a gradient scaler for fp16 (bf16 has fp32's range);
        # ``auto`` becomes bf16 only where the device runs it natively (engine/train/precision.py).
        self.precision = resolve_precision(options.precision, self.device)
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.epoch = 0                 # epochs completed
        self.global_step = 0           # optimiser steps taken
        self.nonfinite_skips = 0
        self.lower_is_better = metric_is_lower_better(options.main_metric)
        self.best_metric = math.inf if self.lower_is_better else -math.inf
        self.best_epoch = -1
        self.history: list[dict] = []
        self.logger = RunLogger(run_dir, enabled=self.is_main)
        self.on_epoch_end: list[Callable[[Trainer, dict], None]] = []
        self._last_grad_norm: torch.Tensor | None = None

    # ------------------------------------------------------------------ state for resume
    def state_dict(self) -> dict:
        """Everything a resume needs, as tensors and plain values (``torch.load(weights_only=True)`` reads it)."""
        return {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "nonfinite_skips": self.nonfinite_skips,
            # The data order and each sample's augmentation are functions of (seed, epoch, index); the
            # next epoch is `epoch`, so storing the seed is storing the order.
            "data": {"seed": self.options.data_seed, "next_epoch": self.epoch},
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if state.get("ema"):
                self.ema.load_state_dict(state["ema"])
            else:
                log.warning("the checkpoint has no EMA weights; the EMA restarts from the current weights")
                self.ema = ModelEMA(self.module, self.ema.decay, self.ema.warmup_steps)
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.best_metric = float(state["best_metric"])
        self.best_epoch = int(state.get("best_epoch", -1))
        self.nonfinite_skips = int(state.get("nonfinite_skips", 0))
        saved_seed = (state.get("data") or {}).get("seed")
        data_seed = self.options.data_seed
        if saved_seed is not None and data_seed is not None and int(saved_seed) != int(data_seed):
            log.warning("the checkpoint's data order came from seed %s, this run uses %s: the data order will not "
                        "continue the interrupted run's", saved_seed, self.options.data_seed)
        set_rng_state(state.get("rng") or {})
        self.logger.restore(self.global_step, self.epoch)

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict:
        """Train from ``self.epoch`` to ``epochs``; returns the run's summary (best and last metrics, epochs,
        steps, skipped steps, seconds), which :func:`engine.train.run.train` writes to ``metrics.json``."""
        start = time.time()
        last_metrics: dict = {}
        for epoch in range(self.epoch, self.options.epochs):
            # A signal during set-up, or during the validation or checkpoint write of the epoch before, is seen
            # here, before the next epoch loads a batch.
            self._check_stop()
            train_stats = self.train_one_epoch(epoch)
            check_epoch_trained(epoch + 1, train_stats["train_images"])
            self.epoch = epoch + 1
            metrics = {}
            if self.val_loader is not None and (self.epoch % self.options.eval_interval == 0
                                                or self.epoch == self.options.epochs):
                metrics = self._validate(self.module, "")
                if self.ema is not None:
                    metrics.update({f"ema_{k}": v for k, v in self._validate(self.ema.module, "ema").items()})
                last_metrics = metrics
            row = {**train_stats, **{f"val_{k}": v for k, v in metrics.items()}}
            self.logger.log_epoch(self.epoch, self.global_step, row)
            self.history.append({"epoch": self.epoch, **row})
            improved = self._update_best(metrics)
            if self.is_main:
                self._save("last.pt", metrics)
                if improved:
                    self._save("best.pt", metrics)
                self._report_epoch(train_stats, metrics, improved)
            for hook in self.on_epoch_end:
                hook(self, row)
        self.logger.close()
        summary = {"main_metric": self.options.main_metric, "best": self.best_metric, "best_epoch": self.best_epoch,
                   "last": last_metrics, "epochs": self.epoch, "steps": self.global_step,
                   "nonfinite_skips": self.nonfinite_skips, "train_seconds": round(time.time() - start, 1)}
        if self.is_main:
            try:
                plot_training_curves(self.logger.epochs.path, self.logger.steps.path,
                                     os.path.join(self.run_dir, "training_curves.png"), self.options.main_metric)
            except Exception as err:   # a plot must never lose a finished run
                log.warning("could not plot training curves: %s", err)
        dist_utils.barrier()
        return summary

    def _check_stop(self) -> None:
        """Raise :class:`StopRequested` when a stop signal reached this rank or any other (one all-reduce)."""
        signum = self.stop.signum
        if self.distributed:
            agreed = torch.tensor([-float(signum)], device=self.device)
            dist_utils.all_reduce_min(agreed)      # min of -signal: the largest signal number any rank got
            signum = int(-agreed.item())
        if signum:
            raise StopRequested(signum)

    def _validate(self, model: nn.Module, tag: str) -> dict:
        metrics = self.task.validate(model, self.val_loader)
        if self.is_main and isinstance(self.task, SavesArtifacts):
            try:
                self.task.save_artifacts(self.run_dir, tag)
            except Exception as err:   # a picture must never lose a run
                log.warning("could not save the evaluation pictures: %s", err)
        return metrics

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def train_one_epoch(self, epoch: int) -> dict:
        self.model.train()
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        accumulate = self.options.accumulate_steps
        num_batches = len(self.train_loader)
        # Sample-weighted sums, kept on the device: epoch loss = sum(loss_i * n_i) / sum(n_i), so a short
        # last batch does not count as much as a full one.
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        seen = 0
        group_weight, in_group = 0.0, 0
        t0 = time.time()
        self.optimizer.zero_grad(set_to_none=True)
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.options.epochs}",
                   disable=not (self.options.progress and self.is_main), leave=False, dynamic_ncols=True)
        for batch_index, batch in enumerate(bar):
            if batch is None:       # every sample of the batch was a skipped bad image
                continue
            closes_group = in_group + 1 == accumulate or batch_index + 1 == num_batches
            with self._autocast():
                out = self.task.training_step(self.model, batch)
            loss = out["loss"]
            n = int(out.get("batch_size", _batch_size(batch)))
            # .item() syncs the GPU: this check is the one host sync per step we accept (inputs only when asked).
            local_ok = torch.isfinite(loss.detach()).all()
            if self.options.check_inputs:
                local_ok = local_ok & _floats_finite(batch, self.device)
            flag = local_ok.to(torch.float32)
            stop = self.stop.signum
            if self.distributed:     # every rank takes the same decision, or DDP would hang
                # The stop flag rides on this all-reduce: min of -signal is -(the largest signal any rank got),
                # so every rank stops at this same step and none waits in backward for one that left.
                flag = torch.stack([flag, torch.full_like(flag, -float(stop))])
                dist_utils.all_reduce_min(flag)
                finite, stop = flag.tolist()
                stop = int(-stop)
            else:
                finite = flag.item()
            if stop:                 # before backward: this step's gradient is never half applied
                raise StopRequested(stop)
            if not finite:
                self._handle_nonfinite("loss", out, batch, epoch, batch_index, bool(local_ok.item()))
                self.optimizer.zero_grad(set_to_none=True)   # drop the whole accumulation group
                group_weight, in_group = 0.0, 0
                continue
            # Each batch's gradient enters with weight n / B: after the group, dividing by the summed
            # weights gives exactly the gradient of the concatenated batch, short batches included.
            weight = n / float(self.options.nominal_batch_size or n)
            sync = contextlib.nullcontext()
            if self.distributed and not closes_group and hasattr(self.model, "no_sync"):
                sync = self.model.no_sync()     # all-reduce the gradients once per group, not per batch
            with sync:
                self.scaler.scale(loss * weight).backward()
            group_weight += weight
            in_group += 1
            loss_sum += loss.detach().to(torch.float64) * n
            seen += n
            if closes_group:
                self._optimizer_step(group_weight, out, batch, epoch, batch_index, t0, seen, bar)
                group_weight, in_group = 0.0, 0
        if in_group:    # the last batches were skipped bad images: still apply what was accumulated
            self._optimizer_step(group_weight, out, batch, epoch, num_batches - 1, t0, seen, bar)
        bar.close()
        elapsed = time.time() - t0
        totals = torch.stack([loss_sum, torch.tensor(float(seen), device=self.device, dtype=torch.float64)])
        dist_utils.all_reduce_sum(totals)
        loss_total, seen_total = float(totals[0]), int(totals[1])
        return {"train_loss": loss_total / max(seen_total, 1), "train_images": seen_total,
                "train_seconds": round(elapsed, 2), "train_images_per_s": round(seen_total / max(elapsed, 1e-9), 1),
                "lr": self.optimizer.param_groups[0]["lr"]}

    def _optimizer_step(self, group_weight: float, out: dict, batch, epoch: int, batch_index: int, t0: float,
                        seen: int, bar) -> None:
        params = [p for p in self.module.parameters() if p.grad is not None]
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        if params and abs(group_weight - 1.0) > 1e-12:
            torch._foreach_mul_([p.grad for p in params], 1.0 / group_weight)
        if self.options.grad_clip_norm:
            grad_norm = nn.utils.clip_grad_norm_(params, self.options.grad_clip_norm)   # the norm before clipping
        else:
            grad_norm = _grad_norm(params, self.device)
        self._last_grad_norm = grad_norm.detach()
        # With fp16 an Inf gradient is routine: the scaler skips that step and lowers its scale.
        if self.options.check_grads and not self.scaler.is_enabled():
            flag = torch.isfinite(grad_norm).to(torch.float32)
            local_ok = bool(flag.item())
            if self.distributed:
                dist_utils.all_reduce_min(flag)
            if not flag.item():
                self._handle_nonfinite("gradient", out, batch, epoch, batch_index, local_ok)
                self.optimizer.zero_grad(set_to_none=True)
                return
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.module)
        self.global_step += 1
        if self.global_step % self.options.log_interval == 0:
            # float() syncs the GPU: only every log_interval steps
            values = {k: float(v.detach()) for k, v in out.items() if torch.is_tensor(v) and v.ndim == 0}
            values.update(lr=self.optimizer.param_groups[0]["lr"], grad_norm=float(grad_norm), epoch=epoch + 1,
                          images_per_s=round(seen / max(time.time() - t0, 1e-9), 1))
            if self.scaler.is_enabled():
                values["grad_scale"] = float(self.scaler.get_scale())
            self.logger.log_step(self.global_step, values)
            bar.set_postfix(loss=f"{values['loss']:.3g}", lr=f"{values['lr']:.2g}",
                            img_s=f"{values['images_per_s']:.0f}")

    # ------------------------------------------------------------------ non-finite values
    def _handle_nonfinite(self, what: str, out: dict, batch, epoch: int, batch_index: int, local_ok: bool) -> None:
        """Report (on the rank that saw it), save the batch, then skip the step or raise, as configured."""
        skip = self.options.on_nonfinite == "skip" and self.nonfinite_skips < self.options.max_nonfinite_skips
        if skip:
            self.nonfinite_skips += 1
            action = (f"step skipped (train.on_nonfinite=skip; {self.nonfinite_skips} of at most "
                      f"{self.options.max_nonfinite_skips} skips)")
        elif self.options.on_nonfinite == "skip":
            action = f"stopped: {self.nonfinite_skips} steps were skipped already (train.max_nonfinite_skips)"
        else:
            action = "stopped (train.on_nonfinite=stop; set train.on_nonfinite=skip to skip such steps)"
        if local_ok:
            report = (f"another process saw a non-finite {what} at epoch {epoch + 1}, batch {batch_index + 1}; "
                      f"its report is in its log and under {os.path.join(self.run_dir, 'nonfinite')}")
        else:
            report = self._nonfinite_report(what, out, batch, epoch, batch_index, action)
        log.error("%s", report)
        if not skip:
            raise NonFiniteError(report)

    def _nonfinite_report(self, what: str, out: dict, batch, epoch: int, batch_index: int, action: str) -> str:
        terms = {k: float(v.detach()) for k, v in out.items() if torch.is_tensor(v) and v.ndim == 0}
        ids = list(self.task.batch_ids(batch))
        n = int(out.get("batch_size", _batch_size(batch)))
        if what == "gradient":
            grad_norm, note = self._last_grad_norm, "this step, before clipping"
        else:
            grad_norm, note = self._last_grad_norm, "of the previous optimiser step"
        grad_value = float(grad_norm) if grad_norm is not None else None
        params = nonfinite.first_nonfinite(self.module.named_parameters())
        grads = nonfinite.first_nonfinite((n_, p.grad) for n_, p in self.module.named_parameters()) \
            if what == "gradient" or self.options.check_grads else None
        first_layer = None
        if what == "loss":
            def replay(model):
                with self._autocast():
                    return self.task.training_step(model, batch)
            first_layer = nonfinite.trace_first_bad_layer(self.module, replay, n)
        step = self.global_step + 1
        rank = dist_utils.rank()
        path = os.path.join(self.run_dir, "nonfinite", f"step{step:07d}" + (f"_rank{rank}" if rank else "") + ".pt")
        report = nonfinite.format_report(
            what=what, epoch=epoch + 1, step=step, batch_index=batch_index + 1, terms=terms, ids=ids,
            lr=self.optimizer.param_groups[0]["lr"], grad_norm=grad_value, grad_norm_note=note, params=params,
            grads=grads, inputs=nonfinite.nonfinite_inputs(batch), first_layer=first_layer, saved=path,
            action=action, largest=nonfinite.largest_parameter(self.module.named_parameters()))
        try:
            nonfinite.save_batch(path, batch, report, ids)
            with open(path[:-3] + ".txt", "w") as f:
                f.write(report + "\n")
        except OSError as err:
            report = report.replace(path, f"{path} (could not be written: {err})")
        return report

    # ------------------------------------------------------------------ helpers
    def _update_best(self, metrics: dict) -> bool:
        value = metrics.get(self.options.main_metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        better = value < self.best_metric if self.lower_is_better else value > self.best_metric
        if better:
            self.best_metric, self.best_epoch = float(value), self.epoch
        return better

    def _save(self, name: str, metrics: dict) -> None:
        state = self.state_dict()
        state.update(self.options.checkpoint_extra)
        state["metrics"] = {k: float(v) for k, v in metrics.items()}
        save_checkpoint(state, os.path.join(self.run_dir, name))

    def _report_epoch(self, train_stats: dict, metrics: dict, improved: bool) -> None:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        star = " (best)" if improved else ""
        log.info("epoch %d/%d: loss %.4g, %.0f img/s%s%s", self.epoch, self.options.epochs, train_stats["train_loss"],
                 train_stats["train_images_per_s"], f"; {shown}" if shown else "", star)


# ---------------------------------------------------------------------------------------------- RNG state
def rng_state() -> dict:
    """Every global RNG's state as tensors (so a ``weights_only=True`` load restores it)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": torch.tensor(np_state[2]),
                  "has_gauss": torch.tensor(np_state[3]), "cached_gaussian": torch.tensor(np_state[4],
                                                                                         dtype=torch.float64)},
        "python": {"version": torch.tensor(py_version), "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss_next": torch.tensor(float("nan") if py_gauss is None else py_gauss, dtype=torch.float64)},
    }


def set_rng_state(state: dict) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state(("MT19937", s["keys"].numpy().astype(np.uint32), int(s["pos"]), int(s["has_gauss"]),
                             float(s["cached_gaussian"])))
    if "python" in state:
        s = state["python"]
        gauss = float(s["gauss_next"])
        random.setstate((int(s["version"]), tuple(int(v) for v in s["internal"].tolist()),
                         None if math.isnan(gauss) else gauss))


# ---------------------------------------------------------------------------------------------- small helpers
def _grad_norm(params: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Global L2 norm of the gradients, on the device (no sync)."""
    if not params:
        return torch.zeros((), device=device)
    norms = torch._foreach_norm([p.grad for p in params])
    return torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]))


def _floats_finite(batch, device: torch.device) -> torch.Tensor:
    ok = torch.ones((), dtype=torch.bool, device=device)
    for t in nonfinite._tensors(batch):
        if t.is_floating_point():
            ok = ok & torch.isfinite(t).all().to(device)
    return ok


def _batch_size(batch) -> int:
    if isinstance(batch, dict):
        for v in batch.values():
            if torch.is_tensor(v) and v.ndim > 0:
                return int(v.shape[0])
    if isinstance(batch, (list, tuple)) and batch and torch.is_tensor(batch[0]):
        return int(batch[0].shape[0])
    raise ValueError("cannot tell the batch size; return 'batch_size' from training_step")
