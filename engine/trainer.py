"""One training loop for every task.

The trainer knows nothing about keypoints, boxes or classes: a task object turns a batch into a dict with a
``"loss"`` (the trainer calls ``backward`` on it and logs the other entries) and evaluates a model on a
loader into a dict of metrics. Checkpoints (``last.pt`` every evaluation, ``best.pt`` by the main metric) go
to the run folder with the resolved config and provenance.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from engine.checkpoint import save_checkpoint
from engine.logger import RunLogger
from engine.visualize import plot_training_curves

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


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss turns NaN or Inf; the message says which term and which samples."""


class Trainer:
    """Args:
        model: the network (on its device already).
        task: an object with ``training_step(model, batch) -> dict`` (``"loss"`` plus logged terms),
            ``validate(model, loader) -> dict[str, float]`` and ``batch_ids(batch) -> list`` (sample ids for
            error reports).
        train_loader / val_loader: loaders whose sampler has ``set_epoch`` (a SeededSampler).
        optimizer, scheduler: the scheduler is stepped once per optimiser step.
        run_dir: output folder.
    """

    def __init__(self, model: nn.Module, task, train_loader, val_loader, optimizer: torch.optim.Optimizer,
                 scheduler, run_dir: str, options: TrainerOptions):
        self.model = model
        self.task = task
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.run_dir = run_dir
        self.opt = options
        self.epoch = 0                 # epochs completed
        self.global_step = 0
        self.lower_is_better = metric_is_lower_better(options.main_metric)
        self.best_metric = math.inf if self.lower_is_better else -math.inf
        self.best_epoch = -1
        self.history: list[dict] = []
        self.logger = RunLogger(run_dir)
        self.on_epoch_end: list[Callable[[Trainer, dict], None]] = []

    # ------------------------------------------------------------------ state for resume
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.best_metric = float(state["best_metric"])
        self.best_epoch = int(state.get("best_epoch", -1))
        rng = state.get("rng") or {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict:
        """Train from ``self.epoch`` to ``epochs``; returns the summary also written to ``metrics.json``."""
        start = time.time()
        last_metrics: dict = {}
        for epoch in range(self.epoch, self.opt.epochs):
            train_stats = self.train_one_epoch(epoch)
            self.epoch = epoch + 1
            metrics = {}
            if self.val_loader is not None and (self.epoch % self.opt.eval_interval == 0
                                                or self.epoch == self.opt.epochs):
                metrics = self.task.validate(self.model, self.val_loader)
                last_metrics = metrics
            row = {**train_stats, **{f"val_{k}": v for k, v in metrics.items()}}
            self.logger.log_epoch(self.epoch, self.global_step, row)
            self.history.append({"epoch": self.epoch, **row})
            improved = self._update_best(metrics)
            self._save("last.pt", metrics)
            if improved:
                self._save("best.pt", metrics)
            self._report_epoch(train_stats, metrics, improved)
            for hook in self.on_epoch_end:
                hook(self, row)
        self.logger.close()
        summary = {"main_metric": self.opt.main_metric, "best": self.best_metric, "best_epoch": self.best_epoch,
                   "last": last_metrics, "epochs": self.epoch, "steps": self.global_step,
                   "train_seconds": round(time.time() - start, 1)}
        self._write_json("train_summary.json", summary)
        try:
            plot_training_curves(self.logger.epochs.path, self.logger.steps.path,
                                 os.path.join(self.run_dir, "training_curves.png"), self.opt.main_metric)
        except Exception as err:   # a plot must never lose a finished run
            log.warning("could not plot training curves: %s", err)
        return summary

    def train_one_epoch(self, epoch: int) -> dict:
        self.model.train()
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        device = next(self.model.parameters()).device
        # Sample-weighted sums, kept on the device: epoch loss = sum(loss_i * n_i) / sum(n_i), so a short
        # last batch does not count as much as a full one.
        loss_sum = torch.zeros((), device=device)
        seen = 0
        t0 = time.time()
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.opt.epochs}", disable=not self.opt.progress,
                   leave=False, dynamic_ncols=True)
        for batch in bar:
            if batch is None:       # every sample of the batch was a skipped bad image
                continue
            out = self.task.training_step(self.model, batch)
            loss = out["loss"]
            # .item() syncs the GPU: this check is the one host sync per step we accept.
            if not torch.isfinite(loss).item():
                raise NonFiniteLossError(self._nonfinite_report(out, batch))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.opt.grad_clip_norm:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.opt.grad_clip_norm)
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            n = int(out.get("batch_size", _batch_size(batch)))
            loss_sum += loss.detach() * n
            seen += n
            self.global_step += 1
            if self.global_step % self.opt.log_interval == 0:
                values = {k: float(v.detach()) for k, v in out.items() if torch.is_tensor(v) and v.ndim == 0}
                values.update(lr=self.optimizer.param_groups[0]["lr"], epoch=epoch + 1,
                              images_per_s=round(seen / max(time.time() - t0, 1e-9), 1))
                self.logger.log_step(self.global_step, values)
                bar.set_postfix(loss=f"{values['loss']:.3g}", lr=f"{values['lr']:.2g}",
                                img_s=f"{values['images_per_s']:.0f}")
        bar.close()
        elapsed = time.time() - t0
        return {"train_loss": float(loss_sum) / max(seen, 1), "train_images": seen,
                "train_seconds": round(elapsed, 2), "train_images_per_s": round(seen / max(elapsed, 1e-9), 1),
                "lr": self.optimizer.param_groups[0]["lr"]}

    # ------------------------------------------------------------------ helpers
    def _update_best(self, metrics: dict) -> bool:
        value = metrics.get(self.opt.main_metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        better = value < self.best_metric if self.lower_is_better else value > self.best_metric
        if better:
            self.best_metric, self.best_epoch = float(value), self.epoch
        return better

    def _save(self, name: str, metrics: dict) -> None:
        state = self.state_dict()
        state.update(self.opt.checkpoint_extra)
        state["metrics"] = {k: float(v) for k, v in metrics.items()}
        save_checkpoint(state, os.path.join(self.run_dir, name))

    def _report_epoch(self, train_stats: dict, metrics: dict, improved: bool) -> None:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        star = " (best)" if improved else ""
        log.info("epoch %d/%d: loss %.4g, %.0f img/s%s%s", self.epoch, self.opt.epochs, train_stats["train_loss"],
                 train_stats["train_images_per_s"], f"; {shown}" if shown else "", star)

    def _nonfinite_report(self, out: dict, batch) -> str:
        terms = {k: float(v.detach()) for k, v in out.items() if torch.is_tensor(v) and v.ndim == 0}
        bad = [k for k, v in terms.items() if not math.isfinite(v)]
        ids = self.task.batch_ids(batch) if hasattr(self.task, "batch_ids") else []
        return (f"non-finite loss at epoch {self.epoch + 1}, step {self.global_step + 1}: terms {bad} "
                f"(all: {terms}); lr {self.optimizer.param_groups[0]['lr']:.3g}; samples {ids[:16]}. "
                f"Check the data first (these samples), then the loss formula (log 0, division by zero), "
                f"then the learning rate and gradient clipping (train.grad_clip_norm).")

    def _write_json(self, name: str, obj: dict) -> None:
        path = os.path.join(self.run_dir, name)
        with open(path + ".tmp", "w") as f:
            json.dump(obj, f, indent=2)
        os.replace(path + ".tmp", path)


def _batch_size(batch) -> int:
    if isinstance(batch, dict):
        for v in batch.values():
            if torch.is_tensor(v) and v.ndim > 0:
                return int(v.shape[0])
    if isinstance(batch, (list, tuple)) and batch and torch.is_tensor(batch[0]):
        return int(batch[0].shape[0])
    raise ValueError("cannot tell the batch size; return 'batch_size' from training_step")
