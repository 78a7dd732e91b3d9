"""Optimisers and per-step learning-rate schedules from the train config.

    build_optimizer(model, "sgd", lr=0.1, weight_decay=1e-4, momentum=0.9, nesterov=True)
    build_scheduler(optimizer, total_steps, steps_per_epoch, "cosine", warmup_steps=100)

The scheduler is a ``LambdaLR`` stepped once per optimiser step (not per epoch), so warmup and decay are
smooth whatever the epoch length, and a resumed run continues the curve from the restored step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
SCHEDULERS = ("cosine", "linear", "step", "multistep", "constant")

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def parameter_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool = False) -> list[dict]:
    """Split trainable parameters into decayed and non-decayed groups.

    Weight decay pulls weights towards zero; on a norm layer's scale or on a bias that only fights the
    normalisation (the next norm layer undoes the scale) and hurts, so by default they are not decayed.
    Frozen parameters (``requires_grad=False``) are left out: the optimiser never sees them.
    """
    decay, no_decay = [], []
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:    # shared (tied) parameters appear once
                continue
            seen.add(id(p))
            if not decay_norm_and_bias and (isinstance(module, _NORM_TYPES) or name.endswith("bias") or p.ndim <= 1):
                no_decay.append(p)
            else:
                decay.append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters (is everything frozen? see train.freeze)")
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                    nesterov: bool = False, betas=(0.9, 0.999), eps: float = 1e-8, alpha: float = 0.99,
                    decay_norm_and_bias: bool = False) -> torch.optim.Optimizer:
    """One of :data:`OPTIMIZERS` over :func:`parameter_groups`.

    momentum/nesterov: SGD (and ``momentum`` for RMSprop). betas: Adam/AdamW. alpha: RMSprop's smoothing of
    the squared gradient. eps: Adam/AdamW/RMSprop/Adagrad's denominator guard. With Adam, ``weight_decay`` is
    L2 added to the gradient (then rescaled by Adam); AdamW decays the weights directly (decoupled), which is
    why AdamW is the usual choice with weight decay.
    """
    name = name.lower()
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r} (train.optimizer); valid: {', '.join(OPTIMIZERS)}")
    if nesterov and (name != "sgd" or momentum <= 0):
        raise ValueError("train.nesterov needs train.optimizer=sgd with train.momentum > 0")
    groups = parameter_groups(model, weight_decay, decay_norm_and_bias)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(betas), eps=eps)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=alpha, eps=eps, momentum=momentum)
    return torch.optim.Adagrad(groups, lr=lr, eps=eps)


def lr_factor(step: int, total_steps: int, steps_per_epoch: int, scheduler: str, warmup_steps: int = 0,
              warmup_factor: float = 0.001, min_lr_ratio: float = 0.0, step_epochs=(), gamma: float = 0.1) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based).

    cosine / linear decay from 1 to ``min_lr_ratio`` over ``total_steps``; step multiplies by ``gamma`` once at
    the first of ``step_epochs``, multistep at each of them; constant stays at 1. A linear warmup from
    ``warmup_factor`` to 1 over the first ``warmup_steps`` multiplies any of them.
    """
    if scheduler == "cosine":
        progress = min(step / max(total_steps, 1), 1.0)
        factor = min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    elif scheduler == "linear":
        progress = min(step / max(total_steps, 1), 1.0)
        factor = 1.0 - (1.0 - min_lr_ratio) * progress
    elif scheduler in ("step", "multistep"):
        epoch = step // max(steps_per_epoch, 1)
        milestones = sorted(step_epochs)[:1] if scheduler == "step" else sorted(step_epochs)
        factor = gamma ** sum(epoch >= m for m in milestones)
    elif scheduler == "constant":
        factor = 1.0
    else:
        raise ValueError(f"unknown scheduler {scheduler!r} (train.scheduler); valid: {', '.join(SCHEDULERS)}")
    if step < warmup_steps:
        alpha = step / warmup_steps
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int, scheduler: str,
                    **kwargs) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per optimiser step."""
    lr_factor(0, total_steps, steps_per_epoch, scheduler, **kwargs)   # validates the name now
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, steps_per_epoch, scheduler, **kwargs))
