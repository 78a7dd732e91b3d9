"""Exponential moving average (EMA) of a model's weights, evaluated alongside the trained weights.

After every optimiser step ``ema = d * ema + (1 - d) * weights``. The average of the last ~``1 / (1 - d)``
steps' weights sits nearer the centre of the valley the optimiser is bouncing around in, so it often
evaluates better than the last weights, for free at training time (one extra copy of the weights).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """Args:
        model: the (unwrapped) model being trained; a frozen copy is kept on the same device.
        decay: the EMA decay ``d`` (0.999 averages roughly the last 1000 steps).
        warmup_steps: the effective decay ramps as ``min(d, (1 + n) / (warmup_steps + n))``, so that early
            on the average is not dominated by the random initial weights (0 disables the ramp).

    Floating-point parameters and buffers are averaged (BatchNorm running statistics too); integer buffers
    (``num_batches_tracked``) are copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup_steps: int = 0):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay} (train.ema_decay)")
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.warmup_steps = warmup_steps
        self.updates = 0

    def current_decay(self) -> float:
        if self.warmup_steps <= 0:
            return self.decay
        return min(self.decay, (1 + self.updates) / (self.warmup_steps + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        self.updates += 1
        ema_state = self.module.state_dict()
        floats_ema, floats_new = [], []
        for name, value in model.state_dict().items():
            target = ema_state[name]
            if target.dtype.is_floating_point:
                floats_ema.append(target)
                floats_new.append(value.detach())
            else:
                target.copy_(value)
        if floats_ema:
            # ema += (1 - d) * (new - ema), fused over all tensors
            torch._foreach_lerp_(floats_ema, floats_new, 1.0 - d)

    def state_dict(self) -> dict:
        return {"model": self.module.state_dict(), "updates": torch.tensor(self.updates), "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])
