"""How long a training will take on this machine, from a few timed steps: what ``tools.make_config`` says before
a run starts and what ``--minutes`` sizes a schedule by.

The steps are real ones (the config's experiment, loader, precision and memory layout, an AdamW step), timed
after a warm-up, so the estimate includes data loading; validation is timed on a few batches of the
validation loader and scaled to the whole split. On a shared or thermally throttled machine the estimate is
off by as much as the machine's speed moves (10-20 % on the 2-core machines measured), so it is rounded.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from dataclasses import dataclass

import torch

from engine.tasks.base import Experiment
from engine.train.optim import build_optimizer
from engine.train.precision import resolve_precision


@dataclass
class TrainingSpeed:
    """Measured on this machine: seconds per optimiser step (loader included) and per validation pass."""

    seconds_per_step: float
    seconds_per_validation: float
    steps_per_epoch: int
    precision: str

    def minutes(self, epochs: int, eval_interval: int, ema: bool = False) -> float:
        """Expected minutes of a run of ``epochs``, validating every ``eval_interval`` epochs and at the end
        (twice per validation with an EMA)."""
        validations = math.ceil(epochs / max(eval_interval, 1))      # every interval, and the last epoch
        train = epochs * self.steps_per_epoch * self.seconds_per_step
        return (train + validations * (2 if ema else 1) * self.seconds_per_validation) / 60.0

    def epochs_within(self, minutes: float, eval_interval: int, ema: bool = False) -> int:
        """The most epochs whose expected time fits in ``minutes`` (at least 1)."""
        epochs = 1
        while self.minutes(epochs + 1, eval_interval, ema) <= minutes:
            epochs += 1
        return epochs


def measure_training_speed(exp: Experiment, precision: str = "fp32", channels_last: bool = False,
                           steps: int = 4, warmup: int = 2, val_batches: int = 2) -> TrainingSpeed:
    """Time ``steps`` training steps (after ``warmup``) and ``val_batches`` validation batches of ``exp``.

    The model is a copy: ``exp.model`` is left as it was (weights, mode, layout)."""
    model = copy.deepcopy(exp.model).train()
    device = next(model.parameters()).device
    resolved = resolve_precision(precision, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, "adamw", 1e-4)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolved)
    batches = itertools.cycle(exp.train_loader)

    def step() -> None:
        batch = next(batches)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = exp.task.training_step(model, batch)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].float().backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    per_step = (time.perf_counter() - start) / steps
    per_validation = _validation_seconds(exp, model, dtype, device, val_batches)
    return TrainingSpeed(per_step, per_validation, len(exp.train_loader), resolved)


def _validation_seconds(exp: Experiment, model: torch.nn.Module, dtype, device: torch.device, batches: int) -> float:
    """A validation pass's seconds: the prediction of ``batches`` batches (after a first one that starts the
    workers and warms up), scaled to the loader's length; a loader this short is timed whole."""
    total = len(exp.val_loader)
    if total == 0:
        return 0.0
    predictions = exp.task.predict_batches(model, exp.val_loader)
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        start = time.perf_counter()
        if total > batches + 1:
            next(predictions, None)
            start = time.perf_counter()
        timed = sum(1 for _ in itertools.islice(predictions, batches if total > batches + 1 else total))
        seconds = time.perf_counter() - start
    predictions.close()
    if total <= batches + 1:
        return seconds                          # the whole pass
    return seconds / max(timed, 1) * total
