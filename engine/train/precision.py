"""Which autocast precision a run uses: ``train.precision: auto`` picks bf16 only where the hardware has it.

bf16 autocast is a large win or a large loss depending on the processor, measured with
``bench/bench_train.py`` on the 300-W faces config (one model step, images/s against fp32 eager):

* a CPU with AVX512-BF16 (AMD EPYC, Zen 4): bf16 1.64x, channels_last + bf16 1.92x;
* a CPU with AVX2 only (AMD EPYC, no AVX-512): bf16 0.06x, i.e. seventeen times slower, because every
  bf16 matmul and convolution falls back to a scalar path.

So a config that hard-codes ``bf16`` is fast on one machine and unusable on the next; ``auto`` resolves once,
at the start of a run, to ``bf16`` on a CUDA device that supports it and on a CPU with AVX512-BF16 or AMX,
and to ``fp32`` everywhere else.
"""

from __future__ import annotations

import torch

from engine.config.sections import PRECISION_CHOICES


def cpu_has_native_bf16() -> bool:
    """True on x86 CPUs with AVX512-BF16 or AMX tiles (oneDNN runs bf16 there natively).

    The probes are private torch helpers (``torch.cpu._is_*_supported``, present since torch 2.1); where they
    are missing the answer is False, the safe side.
    """
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe is not None and bool(probe()) for probe in probes)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32`` / ``bf16`` / ``fp16`` unchanged; ``auto`` -> ``bf16`` where ``device`` runs it natively, else fp32."""
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"train.precision={precision!r} is not one of {PRECISION_CHOICES}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"
