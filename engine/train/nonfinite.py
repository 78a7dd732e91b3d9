"""What went wrong when a loss or a gradient turns NaN or Inf: the report, built only after a failure.

The trainer's per-step check is one ``isfinite`` on the loss (one host sync). Everything here is slow on
purpose and runs only once something has already gone wrong: it names the loss terms, the samples, the
learning rate and gradient norm, the parameters or gradients that are non-finite, and it replays the
forward pass on a copy of the model with a hook on every layer to find the first layer whose output is
non-finite (and for which samples). The offending batch is saved so that it can be loaded and looked at.

Diagnosis order (docs/training.md): the data first (the samples named here), then the loss formula
(``log(0)``, a division by zero, ``sqrt`` at 0 in the backward pass), then the learning rate and exploding
gradients.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable

import torch
from torch import nn

from models.errors import UserError
from models.utils import first_n

DIAGNOSIS = ("Diagnose in this order: (1) the data: look at these samples (a NaN/Inf or absurd value in an input "
             "or a target, an empty box, a label out of range); (2) the loss formula: log(0), a division by zero, "
             "sqrt or pow at 0 in the backward pass, exp overflow (compute losses in float32 and clamp with an "
             "epsilon); (3) the learning rate and exploding gradients: lower train.lr, add train.warmup_steps, "
             "set train.grad_clip_norm, and with fp16 use the grad scaler (train.precision=fp16 does).")


class NonFiniteError(UserError, FloatingPointError):
    """Raised when a loss or gradient turns NaN or Inf and ``train.on_nonfinite=stop``; carries the report.

    A user error: the report says which samples, term and parameter, and what to change.
    """


def largest_parameter(named_parameters) -> str:
    """``"<|value|> in <name>"`` of the finite parameter entry with the largest magnitude (exploding weights)."""
    best, where = 0.0, "-"
    for name, p in named_parameters:
        finite = p.detach()[torch.isfinite(p.detach())]
        if finite.numel():
            value = float(finite.abs().max())
            if value > best:
                best, where = value, name
    return f"{best:.3g} in {where}"


def first_nonfinite(named_tensors, limit: int = 5) -> tuple[list[str], int]:
    """Names (at most ``limit``) and count of the non-finite tensors among ``(name, tensor)`` pairs."""
    names, count = [], 0
    for name, t in named_tensors:
        if t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            count += 1
            if len(names) < limit:
                names.append(name)
    return names, count


def nonfinite_inputs(batch, prefix: str = "batch") -> list[str]:
    """Floating tensors of a batch (dicts/lists nest) holding NaN/Inf, with the sample rows that do."""
    found = []
    if torch.is_tensor(batch):
        if batch.is_floating_point() and not bool(torch.isfinite(batch).all()):
            rows = (~torch.isfinite(batch)).reshape(batch.shape[0], -1).any(1).nonzero().flatten().tolist() \
                if batch.ndim > 0 else []
            found.append(f"{prefix} (batch rows {rows[:16]})")
    elif isinstance(batch, dict):
        for k, v in batch.items():
            found += nonfinite_inputs(v, f"{prefix}[{k!r}]")
    elif isinstance(batch, (list, tuple)):
        for i, v in enumerate(batch):
            found += nonfinite_inputs(v, f"{prefix}[{i}]")
    return found


def trace_first_bad_layer(model: nn.Module, run: Callable[[nn.Module], object], batch_size: int | None = None) -> str:
    """Replay ``run(model_copy)`` with a hook on every module; describe the first one with a non-finite output.

    Hooks fire when a module's forward finishes, so the first module reported is the innermost producer.
    The copy keeps the model's mode (BatchNorm uses the batch statistics as in the failing step) and leaves
    the real model's buffers untouched; the RNG state is restored afterwards.
    """
    probe = copy.deepcopy(model)
    found: list[str] = []

    def hook(name):
        def fn(module, inputs, output):
            if found:
                return
            outs = [t for t in _tensors(output) if t.is_floating_point()]
            bad = [t for t in outs if not bool(torch.isfinite(t).all())]
            if not bad:
                return
            ins_ok = all(bool(torch.isfinite(t).all()) for t in _tensors(inputs) if t.is_floating_point())
            where = ""
            t = bad[0]
            if batch_size and t.ndim > 0 and t.shape[0] == batch_size:
                rows = (~torch.isfinite(t)).reshape(t.shape[0], -1).any(1).nonzero().flatten().tolist()
                where = (f" for all {batch_size} samples of the batch" if len(rows) == batch_size else
                         f" for batch rows {rows[:16]}{' ...' if len(rows) > 16 else ''}")
            kind = "NaN" if bool(torch.isnan(t).any()) else "Inf"
            finite = t[torch.isfinite(t)]
            peak = f"; largest finite |value| {float(finite.abs().max()):.3g}" if finite.numel() else ""
            found.append(f"{name or '<model>'} ({type(module).__name__}) output has {kind}{where}{peak}; "
                         f"its inputs were {'finite' if ins_ok else 'already non-finite'}")
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in probe.named_modules()]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        with torch.no_grad():
            run(probe)
    except Exception as err:   # the replay itself may fail on garbage values; say so, keep the report
        if not found:
            found.append(f"(replaying the forward pass raised {type(err).__name__}: {err})")
    finally:
        for h in handles:
            h.remove()
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    if not found:
        return ("none: every layer's output is finite, so the non-finite value arises in the loss computation "
                "itself (log 0, division by zero) or in the backward pass")
    return found[0]


def _tensors(obj):
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def saveable(obj):
    """A copy of a batch that ``torch.load(weights_only=True)`` can read back (tensors on the CPU)."""
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {str(k): saveable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [saveable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def save_batch(path: str, batch, report: str, ids: list) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({"batch": saveable(batch), "sample_ids": [str(i) for i in ids], "report": report}, path)
    return path


def format_report(*, what: str, epoch: int, step: int, batch_index: int, terms: dict, ids: list, lr: float,
                  grad_norm: float | None, grad_norm_note: str, params: tuple[list[str], int],
                  grads: tuple[list[str], int] | None, inputs: list[str] | None, first_layer: str | None,
                  saved: str | None, action: str, largest: str | None = None) -> str:
    """The report as the user reads it: one fact per line, then the diagnosis order."""
    def fmt(v: float) -> str:
        return f"{v:.4g}" if math.isfinite(v) else str(v)

    bad_terms = [k for k, v in terms.items() if not math.isfinite(v)]
    lines = [f"non-finite {what} at epoch {epoch}, step {step} (batch {batch_index} of the epoch)",
             f"  loss terms:        {', '.join(f'{k}={fmt(v)}' for k, v in terms.items())}"
             + (f"  -> non-finite: {', '.join(bad_terms)}" if bad_terms else ""),
             f"  samples:           {first_n(ids, 16)}",
             f"  learning rate:     {lr:.4g}",
             f"  gradient norm:     {fmt(grad_norm) if grad_norm is not None else 'n/a'} ({grad_norm_note})"]
    names, count = params
    lines.append(f"  parameters:        all finite{f', largest |value| {largest}' if largest else ''}" if not count else
                 f"  parameters:        {count} non-finite, first: {', '.join(names)} (an earlier step already "
                 f"wrote NaN/Inf into the weights: the update before this one exploded)")
    if grads is not None:
        names, count = grads
        lines.append("  gradients:         all finite" if not count else
                     f"  gradients:         {count} parameters with non-finite gradients, first: {', '.join(names)}")
    if inputs is not None:
        lines.append("  inputs:            all finite" if not inputs else f"  inputs:            non-finite: "
                     f"{'; '.join(inputs)}")
    if first_layer is not None:
        lines.append(f"  first bad layer:   {first_layer}")
    if saved:
        lines.append(f"  batch saved to:    {saved} (torch.load(path, weights_only=True))")
    lines.append(f"  action:            {action}")
    lines.append(DIAGNOSIS)
    return "\n".join(lines)
