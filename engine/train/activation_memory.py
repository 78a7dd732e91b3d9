"""How much memory a training forward keeps for the backward pass: the one counter used by the backbone and
input-policy tools and by ``bench/bench_input_policies.py``.

On any device, :func:`saved_tensor_bytes` counts the tensors autograd saves for backward (through
``torch.autograd.graph.saved_tensors_hooks``): each underlying storage once (views of one storage, or one
tensor saved by several ops, share memory), its full size, parameters and buffers left out (they are held
anyway and do not grow with the input). On CUDA :func:`cuda_peak_bytes` gives the allocator's view: the peak
allocated during the forward minus what was allocated before (it also holds short-lived temporaries, so it
is a little higher).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


def saved_tensor_bytes(model: nn.Module, run: Callable[[], object]) -> int:
    """Bytes autograd saves for backward while ``run()`` executes (e.g. ``lambda: model(x)`` or a task's
    training step); each storage once, ``model``'s parameters and buffers excluded. Grad mode is on inside."""
    weights = {_storage_key(t) for t in (*model.parameters(), *model.buffers())}
    seen: dict[tuple[str, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            key = _storage_key(t)
        except (RuntimeError, NotImplementedError):  # tensors without a plain storage (e.g. mkldnn)
            key, nbytes = ("opaque", id(t)), t.numel() * t.element_size()
        else:
            nbytes = t.untyped_storage().nbytes()
        if key not in weights:
            seen[key] = nbytes
        return t  # keep the tensor itself: memory behaviour is unchanged

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    del out  # frees the graph and the saved tensors
    return sum(seen.values())


def cuda_peak_bytes(run: Callable[[], object], device: torch.device) -> int:
    """Peak CUDA memory allocated while ``run()`` executes (grad mode on) minus what was allocated before it."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    with torch.enable_grad():
        out = run()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    del out
    return peak - base
