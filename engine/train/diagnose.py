"""Three checks for a model that trains badly, on any task's experiment (``tools.diagnose_training``).

1. **Overfit one batch** (:func:`overfit_one_batch`): train on a single small batch, over and over. A model
   and pipeline without bugs drive the loss of a handful of samples close to zero; one that cannot has a
   bug (targets that do not match the inputs, a frozen or detached part, a loss that cannot reach zero, a
   learning rate far off), and no amount of data or epochs will fix it.
2. **Under- or over-fitting from the curves** (:func:`diagnose_curves`): the run's ``epochs.csv``. A
   training loss still falling at the end and a validation metric still improving: underfitting (train
   longer, or more capacity or a higher learning rate). A validation metric that peaked and then got worse
   while the training loss kept falling: overfitting (more augmentation or data, weight decay, fewer epochs;
   ``best.pt`` holds the peak). Neither: converged.
3. **Learning-rate range test** (:func:`lr_range_test`, L. Smith, 2017): raise the learning rate
   exponentially over a few hundred steps and watch the smoothed loss; it falls fastest somewhere below the
   rate where it blows up. The suggestion is the rate of the steepest fall, and a tenth of the rate of the
   lowest loss (both are rules of thumb; the second is the more conservative).

Every function works on plain parts (model, task, batches, optimiser) so that it runs on any task whose
object satisfies :class:`engine.tasks.base.Task`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from engine.train.loop import metric_is_lower_better


def first_batch(loader) -> object:
    """The first batch of a loader that is not ``None`` (a batch of only unreadable images)."""
    for batch in loader:
        if batch is not None:
            return batch
    raise ValueError("the loader gave no usable batch")


def take(batch, n: int):
    """The first ``n`` samples of a collated batch (tensors and lists cut along their first axis)."""
    if isinstance(batch, dict):
        return {k: take(v, n) for k, v in batch.items()}
    if torch.is_tensor(batch) and batch.ndim > 0:
        return batch[:n]
    if isinstance(batch, (list, tuple)):
        return type(batch)(batch[:n])
    return batch


def overfit_one_batch(model: nn.Module, task, batch, optimizer: torch.optim.Optimizer, steps: int,
                      target_ratio: float = 0.1) -> dict:
    """Train ``model`` on ``batch`` alone for ``steps`` optimiser steps (train mode).

    Returns {"losses": every step's loss, "initial", "final", "lowest", "ratio" (final / initial),
    "passed" (ratio <= target_ratio), "target_ratio", "steps"}.
    """
    model.train()
    losses = []
    for _ in range(steps):
        loss = task.training_step(model, batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    if not losses or not all(math.isfinite(v) for v in losses):
        bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
        return {"losses": losses, "initial": losses[0] if losses else math.nan, "final": math.nan,
                "lowest": math.nan, "ratio": math.nan, "passed": False, "target_ratio": target_ratio,
                "steps": steps, "nonfinite_at_step": bad}
    ratio = losses[-1] / losses[0] if losses[0] > 0 else math.nan
    return {"losses": losses, "initial": losses[0], "final": losses[-1], "lowest": min(losses), "ratio": ratio,
            "passed": bool(ratio <= target_ratio), "target_ratio": target_ratio, "steps": steps}


def diagnose_curves(rows: Sequence[dict], main_metric: str, tail_fraction: float = 1 / 3,
                    still_falling: float = 0.05, worse_than_best: float = 0.01) -> dict:
    """Tell under- from over-fitting from a run's per-epoch rows (``epochs.csv``: ``epoch``, ``train_loss``,
    ``val_<main_metric>`` on the epochs that were evaluated).

    * ``train_drop``: relative fall of the training loss over the last ``tail_fraction`` of the epochs;
      above ``still_falling`` the training loss is still falling.
    * the validation metric's best epoch and its last value; ``val_drop`` is how much worse the last value is
      than the best, relative to the best (sign-corrected for metrics where lower is better).

    Verdict: ``"overfitting"`` when the last validation value is more than ``worse_than_best`` worse than the
    best one, the best came before the last evaluation and the training loss fell after it; else
    ``"underfitting"`` when the training loss is still falling or the best validation value is the last
    one while it was still improving; else ``"converged"``. Returns the numbers, the verdict and advice.
    """
    rows = [r for r in rows if _finite(r.get("train_loss"))]
    if len(rows) < 2:
        raise ValueError(f"need at least 2 epochs with a train_loss to read a trend, got {len(rows)}")
    key = f"val_{main_metric}"
    lower = metric_is_lower_better(main_metric)
    train = [float(r["train_loss"]) for r in rows]
    k = max(1, math.ceil(len(rows) * tail_fraction))
    start = train[-k - 1] if len(train) > k else train[0]
    train_drop = (start - train[-1]) / abs(start) if start else 0.0
    evaluated = [(int(r["epoch"]), float(r[key])) for r in rows if _finite(r.get(key))]
    out = {"epochs": len(rows), "main_metric": main_metric, "train_loss_first": train[0], "train_loss_last": train[-1],
           "train_drop": train_drop, "evaluations": len(evaluated)}
    overfit = False
    still_improving = False
    if evaluated:
        sign = -1.0 if lower else 1.0
        best_epoch, best = max(evaluated, key=lambda e: sign * e[1])
        last_epoch, last = evaluated[-1]
        val_drop = sign * (best - last) / abs(best) if best else 0.0
        loss_at_best = next(float(r["train_loss"]) for r in rows if int(r["epoch"]) == best_epoch)
        train_fell_after = train[-1] < loss_at_best
        overfit = best_epoch < last_epoch and val_drop > worse_than_best and train_fell_after
        if len(evaluated) >= 2:
            prev = evaluated[-2][1]
            still_improving = best_epoch == last_epoch and sign * (last - prev) > 0
        out.update(best_epoch=best_epoch, best=best, last_epoch=last_epoch, last=last, val_drop=val_drop)
    if overfit:
        verdict = "overfitting"
        advice = (f"validation {main_metric} peaked at epoch {out['best_epoch']} and is {100 * out['val_drop']:.1f}% "
                  "worse since, while the training loss kept falling: regularise (data.augment.*, "
                  "train.weight_decay, more data) or stop earlier; best.pt holds the peak")
    elif train_drop > still_falling or still_improving:
        verdict = "underfitting"
        advice = (f"the training loss fell {100 * train_drop:.1f}% over the last {k} epochs"
                  + (f" and validation {main_metric} is still improving" if still_improving else "")
                  + ": train longer (train.epochs), or raise capacity or train.lr (see the learning-rate range test)")
    else:
        verdict = "converged"
        advice = ("the training loss has flattened and validation is not getting worse: to go further, raise "
                  "capacity (model.*) or the input size, or improve the data")
    out.update(verdict=verdict, advice=advice)
    return out


def lr_range_test(model: nn.Module, task, batches: Iterable, make_optimizer: Callable[[float], torch.optim.Optimizer],
                  lr_min: float = 1e-6, lr_max: float = 1.0, steps: int = 100, smoothing: float = 0.9,
                  diverge_factor: float = 4.0) -> dict:
    """Raise the learning rate exponentially from ``lr_min`` to ``lr_max`` over ``steps`` optimiser steps,
    one batch each (``batches`` is cycled), and record the loss.

    The loss is smoothed by a bias-corrected exponential moving average; the test stops early when the
    smoothed loss exceeds ``diverge_factor`` times its lowest value (the rate is far too high from there).
    Returns {"lrs", "losses" (raw), "smoothed", "steepest_lr" (steepest fall of the smoothed loss against
    log lr), "lowest_lr" (lowest smoothed loss), "suggested_lr" (``lowest_lr / 10``), "diverged_at_lr"}.
    """
    optimizer = make_optimizer(lr_min)
    factor = (lr_max / lr_min) ** (1.0 / max(steps - 1, 1))
    model.train()
    lrs, losses, smoothed = [], [], []
    avg, best, diverged = 0.0, math.inf, None
    batch_iter = _cycle(batches)
    for i in range(steps):
        lr = lr_min * factor ** i
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = task.training_step(model, next(batch_iter))["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        lrs.append(lr)
        losses.append(value)
        if not math.isfinite(value):
            diverged = lr
            break
        avg = smoothing * avg + (1 - smoothing) * value
        smooth = avg / (1 - smoothing ** (i + 1))
        smoothed.append(smooth)
        best = min(best, smooth)
        if smooth > diverge_factor * best:
            diverged = lr
            break
    n = len(smoothed)
    lowest = min(range(n), key=lambda j: smoothed[j]) if n else 0
    # Slope of the smoothed loss against log(lr), up to the lowest point (beyond it the loss is rising).
    slopes = [(smoothed[j + 1] - smoothed[j]) / math.log(lrs[j + 1] / lrs[j]) for j in range(max(lowest, 1))
              if j + 1 < n]
    steepest = min(range(len(slopes)), key=lambda j: slopes[j]) if slopes else 0
    return {"lrs": lrs, "losses": losses, "smoothed": smoothed, "steepest_lr": lrs[steepest] if lrs else math.nan,
            "lowest_lr": lrs[lowest] if lrs else math.nan, "suggested_lr": lrs[lowest] / 10 if lrs else math.nan,
            "diverged_at_lr": diverged}


def _cycle(batches: Iterable):
    while True:
        empty = True
        for b in batches:
            if b is not None:
                empty = False
                yield b
        if empty:
            raise ValueError("the loader gave no usable batch")


def _finite(v) -> bool:
    try:
        return v is not None and v != "" and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
