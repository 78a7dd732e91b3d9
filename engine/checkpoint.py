"""Checkpoints: state dicts plus the resolved config, written atomically, read with ``weights_only=True``.

A checkpoint is a dict of tensors and plain Python values (no pickled modules or classes), so loading
never executes code from the file and survives refactors of our classes.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile

import torch
from torch import nn

from models.errors import CheckpointError

# 1: model, optimizer, scheduler, epoch, global_step, best metric, torch/cuda RNG, config, provenance.
# 2: + scaler, ema, nonfinite_skips, data (sampler seed, next epoch), numpy and python RNG states as tensors.
# Version-1 files still load (the missing parts start fresh).
FORMAT_VERSION = 2


def save_checkpoint(state: dict, path: str) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync, then rename.

    An interrupted save leaves the previous file intact (a rename within one filesystem is atomic). A full
    disk is a :class:`CheckpointError` naming the file and saying so (torch reports it as ``unexpected pos``
    from its zip writer, or as an ``OSError``), instead of a traceback from inside the serialiser.
    """
    state = {"format_version": FORMAT_VERSION, **state}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if _is_disk_full(err, folder):
            previous = ("the previous checkpoint is intact" if os.path.exists(path) else
                        "no earlier version of it existed")
            raise CheckpointError(f"no space left on device while writing {path}; {previous}. Free space on "
                                  f"{folder} and resume from the last complete checkpoint") from err
        raise


def _is_disk_full(err: BaseException, folder: str) -> bool:
    """ENOSPC (or EDQUOT), directly or as torch's zip-writer error (which drops the errno)."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(err, RuntimeError) and any(s in str(err) for s in ("unexpected pos", "failed writing")):
        cause = err.__cause__ or err.__context__
        if isinstance(cause, OSError):
            return cause.errno in (errno.ENOSPC, errno.EDQUOT)
        try:
            return shutil.disk_usage(folder).free < 64 * 2**20
        except OSError:
            return False
    return False


def remove_stale_temporaries(folder: str) -> list[str]:
    """Delete the temporary files of saves that were killed midway (call when no save is running)."""
    removed = []
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            if name.startswith(".tmp-") and name.endswith(".pt"):
                os.unlink(os.path.join(folder, name))
                removed.append(name)
    return removed


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain values only)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}; check the path (tools.train writes last.pt and best.pt "
                              f"into the run folder)")
    if path.lower().endswith(".onnx"):
        raise CheckpointError(f"{path} is an ONNX model, not a tools.train checkpoint; pass the .pt checkpoint it "
                              f"was exported from (ONNX models run with tools.infer --backend onnxruntime)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        first_line = (str(err).strip().splitlines() or [""])[0]   # torch's own message runs to several lines
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(err).__name__}: {first_line}); it may be "
                              f"truncated or not written by this repository") from err
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} holds no 'model' state dict; is it a checkpoint of this repository?")
    version = state.get("format_version", 0)
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {version}, newer than this code's {FORMAT_VERSION}; "
                         f"update the repository")
    return state


WEIGHT_CHOICES = ("model", "ema")       # a checkpoint's trained weights, or its EMA of them


def checkpoint_weights(state: dict, path: str, which: str = "model") -> dict:
    """The state dict to load from a ``tools.train`` checkpoint: ``"model"``, the trained weights, or ``"ema"``,
    the exponential moving average kept when ``train.ema_decay`` was set (``engine/train/ema.py``)."""
    if which == "model":
        return state["model"]
    if which != "ema":
        raise CheckpointError(f"unknown weights {which!r} for {path}; choose one of {', '.join(WEIGHT_CHOICES)}")
    ema = state.get("ema")
    if not ema or "model" not in ema:
        raise CheckpointError(f"{path} carries no EMA weights (it was trained without train.ema_decay); "
                              f"use its trained weights (--weights model, or train.init_weights_from=model)")
    return ema["model"]


def check_checkpoint_task(state: dict, path: str, task: str, against: str) -> None:
    """Refuse a checkpoint of another task than ``task`` (the config's, or what a flag expects), saying which
    task each is. ``against`` names what asked for ``task`` (e.g. ``"configs/x.yaml"``, ``"--det-checkpoint"``)."""
    saved = (state.get("config") or {}).get("task")
    if saved is not None and saved != task:
        raise CheckpointError(f"{path} is a {saved!r} checkpoint but {against} is for {task!r}; give a {task} "
                              f"checkpoint, or the {saved} config it was trained with")


def load_model_state(model: nn.Module, state_dict: dict, source: str = "checkpoint", strict: bool = True):
    """Load weights, explaining any mismatch by tensor name.

    Shape differences (another architecture or keypoint count) always raise, naming both shapes. Missing or
    unexpected keys raise when ``strict``; otherwise they are returned as ``(missing, unexpected)``.
    """
    own = model.state_dict()
    shape_diff = [f"{k}: {source} {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state_dict.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if shape_diff or (strict and (missing or unexpected)):
        parts = []
        if shape_diff:
            parts.append(f"{len(shape_diff)} tensors differ in shape: " + "; ".join(shape_diff[:8]))
        if strict and missing:
            parts.append(f"{len(missing)} missing from the {source}: {', '.join(missing[:8])}")
        if strict and unexpected:
            parts.append(f"{len(unexpected)} not in the model: {', '.join(unexpected[:8])}")
        raise CheckpointError(f"{source} does not fit this model ({'; '.join(parts)}); was it trained with another "
                         f"backbone, head or keypoint count?")
    model.load_state_dict(state_dict, strict=False)
    return missing, unexpected


def load_weights_for_finetuning(model: nn.Module, path: str, which: str = "model") -> dict:
    """Initialise ``model`` from the weights in ``path`` only (no optimiser, schedule, epoch): fine-tuning.

    ``path`` is a checkpoint of this repository (its ``model`` entry, or with ``which="ema"`` its EMA weights:
    ``train.init_weights_from``) or a plain state dict (also under ``state_dict``). Tensors whose shape differs
    (a classifier head for another number of classes) are left at their initial values, like missing ones.
    Returns ``{"loaded", "missing", "unexpected", "shape_mismatch"}``
    name lists; raises when nothing at all matches (a file for another model).
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file not found: {path} (train.init_weights / --weights); check the path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable weights file ({type(err).__name__}: {err})") from err
    if which != "model":
        if not (isinstance(state, dict) and isinstance(state.get("model"), dict)):
            raise CheckpointError(f"{path} is not a checkpoint of this repository, so it has no {which} weights "
                                  f"(train.init_weights_from={which}); use train.init_weights_from=model")
        state = checkpoint_weights(state, path, which)     # a state dict: the loop below leaves it as it is
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if isinstance(state, dict) and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}     # saved from a DDP wrapper
    own = model.state_dict()
    mismatch = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    usable = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not usable:
        raise CheckpointError(f"{path} shares no tensor (name and shape) with this model (first file keys: "
                         f"{list(state)[:5]}; first model keys: {list(own)[:5]})")
    model.load_state_dict(usable, strict=False)
    return {"loaded": sorted(usable), "missing": [k for k in own if k not in state],
            "unexpected": [k for k in state if k not in own], "shape_mismatch": mismatch}
