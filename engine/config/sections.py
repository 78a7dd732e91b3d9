"""The config sections every task shares (``train``, a data split) and the range checks that go with them.

A task's schema (``engine/tasks/<task>/schema.py``) composes these with its own ``model``, ``data``, ``loss``
and ``eval`` sections; the registry runs :func:`check_common_ranges` and the task's own checks on every
config it reads.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from engine.checkpoint import WEIGHT_CHOICES

PRECISIONS = ("fp32", "bf16", "fp16")           # what autocast runs
PRECISION_CHOICES = PRECISIONS + ("auto",)      # train.precision (auto: engine/train/precision.py)
NONFINITE_POLICIES = ("stop", "skip")           # train.on_nonfinite: stop the run, or skip the step
# Fewer validation samples than this, and the main metric moves by chance from one evaluation to the next: a
# "best" checkpoint chosen on it is chosen on noise (the starter config evaluates less often; the run says so).
SMALL_HOLDOUT = 30
STOP_SIGNALS = ("TERM", "USR1", "USR2")         # train.stop_signals: what may stop training like Ctrl-C


@dataclass
class SplitConfig:
    """Where one split's annotations and images are; paths relative to the working directory."""

    ann_file: str = MISSING
    image_root: str = MISSING
    subset: str = "all"                 # all | holdout | rest: a seeded image split for sets without val
    holdout_fraction: float = 0.1
    holdout_seed: int = 0


@dataclass
class TrainConfig:
    """The training craft, shared by every task (docs/training.md has the command that shows each field)."""

    epochs: int = 10
    batch_size: int = 32                # per process; the global batch is batch_size * processes
    optimizer: str = "adamw"            # sgd | adam | adamw | rmsprop | adagrad
    lr: float = 1e-3
    momentum: float = 0.9               # sgd, rmsprop
    nesterov: bool = False              # sgd only
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])   # adam, adamw
    eps: float = 1e-8                   # adam, adamw, rmsprop, adagrad
    alpha: float = 0.99                 # rmsprop: smoothing of the squared gradient
    weight_decay: float = 1e-4
    decay_norm_and_bias: bool = False   # false: norm layers and biases get no weight decay
    scheduler: str = "cosine"           # cosine | linear | step | multistep | constant (per step, after warmup)
    warmup_steps: int = 100             # linear warmup from warmup_factor * lr (optimiser steps)
    warmup_factor: float = 0.001
    min_lr_ratio: float = 0.01          # cosine / linear floor, as a fraction of lr
    step_epochs: list[int] = field(default_factory=lambda: [8])   # step / multistep milestones
    gamma: float = 0.1                  # step / multistep decay
    accumulate_steps: int = 1           # batches whose gradients add up before one optimiser step
    grad_clip_norm: float | None = None # clip the global gradient norm to this
    precision: str = "fp32"             # fp32 | bf16 | fp16 | auto (autocast; fp16 with a gradient scaler; auto:
                                        # bf16 where the device runs it natively, else fp32: engine/train/precision.py)
    channels_last: bool = False         # NHWC weights and activations (GPUs; 1.10-1.13x on the CPUs measured)
    ema_decay: float | None = None      # e.g. 0.999: keep an EMA of the weights, evaluated alongside
    ema_warmup_steps: int = 0           # ramp the EMA decay up over this many steps
    freeze: list[str] = field(default_factory=list)   # glob patterns of parameter names to freeze
    freeze_stages: int = 0              # freeze the first N feature levels of the timm trunk (0: the stem)
    freeze_bn: str = "none"             # none | frozen (BN layers whose params are frozen) | all: use running stats
    init_weights: str | None = None     # fine-tuning: load model weights only from this file (reports keys)
    init_weights_from: str = "model"    # which weights of a checkpoint of this repository: model | ema (its EMA)
    on_nonfinite: str = "stop"          # stop | skip: what a NaN/Inf loss or gradient does after its report
    max_nonfinite_skips: int = 20       # with skip: stop anyway after this many skipped steps
    check_inputs: bool = False          # also check the batch's float inputs every step (one more sync)
    check_grads: bool = False           # also check the gradient norm every step (one more sync)
    stop_signals: list[str] = field(default_factory=lambda: ["TERM"])   # stop at the next step with one line
                                        # and the resume command (engine/train/stop.py): TERM | USR1 | USR2;
                                        # add USR1 for SLURM's --signal=USR1@90; [] keeps the default actions
    seed: int = 0
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    num_threads: int | None = None      # torch intra-op threads; None keeps torch's default
    num_workers: int = 2
    log_interval: int = 20              # steps between logged (host-synchronised) values
    eval_interval: int = 1              # epochs between evaluations


def level_stride(index: int) -> int:
    """The coarsest feature stride of timm level ``index`` (resnet-like trunks: the stem halves twice, then
    each level once)."""
    return 2 ** (int(index) + 1)


Need = Callable[[str, Any, bool, str], None]


def stop_signal_names(values) -> list[str]:
    """``train.stop_signals`` as signal names without the prefix: ``["SIGTERM", "usr1"]`` -> ``["TERM", "USR1"]``
    (both spellings are what users write)."""
    return [str(v).upper().removeprefix("SIG") for v in values]


def range_checker() -> tuple[list[str], Need]:
    """``(problems, need)``: ``need(key, value, ok, valid)`` appends ``"key = value: valid"`` when not ``ok``."""
    problems: list[str] = []

    def need(key: str, value, ok: bool, valid: str) -> None:
        if not ok:
            problems.append(f"{key} = {value!r}: {valid}")

    return problems, need


def check_common_ranges(cfg: Any) -> list[str]:
    """Every value of the shared sections (``train``, and ``data``'s batch size, bad-input policies and
    ``input_size``) outside its valid range, as ``"key = value: the range"`` (empty when all fit).

    The types are the schema's business; this is about values that would train nothing (``epochs = 0``),
    divide by zero or make a metric meaningless.
    """
    out, need = range_checker()
    t = cfg.train
    need("train.epochs", t.epochs, t.epochs >= 1, "must be >= 1")
    need("train.batch_size", t.batch_size, t.batch_size >= 1, "must be >= 1")
    need("train.lr", t.lr, t.lr > 0 and math.isfinite(t.lr), "must be a finite number > 0")
    need("train.num_workers", t.num_workers, t.num_workers >= 0, "must be >= 0")
    need("train.accumulate_steps", t.accumulate_steps, t.accumulate_steps >= 1, "must be >= 1")
    need("train.log_interval", t.log_interval, t.log_interval >= 1, "must be >= 1")
    need("train.eval_interval", t.eval_interval, t.eval_interval >= 1, "must be >= 1")
    need("train.warmup_steps", t.warmup_steps, t.warmup_steps >= 0, "must be >= 0")
    need("train.weight_decay", t.weight_decay, t.weight_decay >= 0, "must be >= 0")
    need("train.num_threads", t.num_threads, t.num_threads is None or t.num_threads >= 1, "must be >= 1 or null")
    if t.grad_clip_norm is not None:
        need("train.grad_clip_norm", t.grad_clip_norm, t.grad_clip_norm > 0, "must be > 0 or null")
    need("train.precision", t.precision, t.precision in PRECISION_CHOICES,
         f"must be one of {', '.join(PRECISION_CHOICES)}")
    need("train.on_nonfinite", t.on_nonfinite, t.on_nonfinite in NONFINITE_POLICIES, "must be 'stop' or 'skip'")
    stops = stop_signal_names(t.stop_signals)
    need("train.stop_signals", list(t.stop_signals), set(stops) <= set(STOP_SIGNALS) and len(set(stops)) == len(stops),
         f"each of {', '.join(STOP_SIGNALS)} at most once ([] keeps every signal's default action)")
    need("train.init_weights_from", t.init_weights_from, t.init_weights_from in WEIGHT_CHOICES,
         f"must be one of {', '.join(WEIGHT_CHOICES)}")
    if t.ema_decay is not None:
        need("train.ema_decay", t.ema_decay, 0 < t.ema_decay < 1, "must be in (0, 1) or null")
    d = cfg.data
    if hasattr(d, "val_batch_size"):
        need("data.val_batch_size", d.val_batch_size, d.val_batch_size >= 1, "must be >= 1")
    if hasattr(d, "on_bad_image"):
        need("data.on_bad_image", d.on_bad_image, d.on_bad_image in ("error", "skip"), "must be 'error' or 'skip'")
    if hasattr(d, "on_bad_annotation"):
        need("data.on_bad_annotation", d.on_bad_annotation, d.on_bad_annotation in ("error", "skip"),
             "must be 'error' or 'skip'")
    if hasattr(d, "input_size") and len(list(d.input_size)) != 2:
        out.append(f"data.input_size = {list(d.input_size)}: must be two sides [width, height]")
    return out
