"""A local weights file -> the state dict it holds: ``.safetensors`` (timm's Hub files), or anything
``torch.load`` reads (``.bin``, ``.pth``, ``.pt``; loaded with ``weights_only=True``)."""

from __future__ import annotations

import os

import torch

# Where training checkpoints (timm's, Lightning's, ours) keep the model's state dict.
_CONTAINER_KEYS = ("state_dict", "model", "state_dict_ema")


def read_state_dict(path: str, what: str) -> dict:
    """The state dict in ``path``: the file's dict itself, or the one it holds under ``state_dict``, ``model``
    or ``state_dict_ema`` (the first present). ``what`` names the model in the error for a missing file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} weights file not found: {path} (model.pretrained_path)")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in _CONTAINER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            return state[key]
    return state
