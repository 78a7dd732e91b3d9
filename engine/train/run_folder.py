"""The run folder's safety: a finished run is never overwritten by accident, and a stop says how to go on.

* :func:`claim_run_dir`: a folder that holds a run (checkpoints, epoch log, summary) is written into only by
  ``--resume`` (which continues it) or ``--overwrite`` (which first removes the old run's files).
* :func:`interrupted_error`: Ctrl-C during training becomes one line: where it stopped, which checkpoint is
  complete, and (from ``tools.train``) the exact command that continues it; :func:`stopped_error` is the same
  for a stop signal (SIGTERM from a scheduler; engine/train/stop.py).
* :func:`check_epoch_trained`: an epoch in which not one sample was trained (every image skipped) stops the
  run instead of saving an untrained model as ``best.pt``.
"""

from __future__ import annotations

import logging
import os
import shutil

from engine.checkpoint import load_checkpoint
from engine.train.stop import signal_name
from models.errors import DataError, Interrupted, RunDirError, Stopped

log = logging.getLogger(__name__)

# What a run leaves that a user would lose (logs of a run that never finished an epoch are not worth a refusal).
RUN_FILES = ("last.pt", "best.pt", "metrics.json", "epochs.csv")
# Everything a run writes, removed by --overwrite so that the new run's logs do not mix with the old ones.
RUN_OUTPUTS = RUN_FILES + ("steps.csv", "config.yaml", "provenance.json", "parameters.txt", "training_curves.png",
                           "tensorboard", "nonfinite")


def existing_run_files(run_dir: str) -> list[str]:
    """The files of :data:`RUN_FILES` that ``run_dir`` holds (empty: no run there)."""
    return [name for name in RUN_FILES if os.path.exists(os.path.join(run_dir, name))]


def claim_run_dir(run_dir: str, resume: str | None = None, overwrite: bool = False, is_main: bool = True) -> None:
    """Refuse to train into a folder that holds a run unless ``resume`` continues it or ``overwrite`` replaces it.

    Raises :class:`RunDirError` naming the folder, what it holds, and both flags. With ``overwrite`` the old
    run's outputs are removed first (rank 0 only), so nothing of it is mistaken for the new run's.
    """
    found = existing_run_files(run_dir)
    if not found or resume:
        return
    if not overwrite:
        last = os.path.join(run_dir, "last.pt")
        hint = f"--resume {last}" if os.path.exists(last) else "--resume <its last.pt>"
        raise RunDirError(f"run folder {run_dir} already holds a run ({', '.join(found)}); continue it with "
                          f"{hint}, replace it with --overwrite, or choose another --run-dir")
    if is_main:
        removed = []
        for name in RUN_OUTPUTS:
            path = os.path.join(run_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.unlink(path)
            else:
                continue
            removed.append(name)
        log.warning("--overwrite: removed the previous run's files from %s: %s", run_dir, ", ".join(removed))


def check_epoch_trained(epoch: int, train_images: int) -> None:
    """Stop when epoch ``epoch`` (1-based) trained on no sample at all: nothing would be learnt, and the
    checkpoints about to be written would pass an untrained model off as a result."""
    if train_images == 0:
        raise DataError(f"epoch {epoch} trained on no sample: every batch was empty or skipped (unreadable images "
                        f"under data.on_bad_image=skip, non-finite steps under train.on_nonfinite=skip); nothing was "
                        f"saved. Check the images of the train split and the log above")


def interrupted_error(run_dir: str, epoch_done: int, epochs: int, step: int) -> Interrupted:
    """The one-line report of a Ctrl-C: where training stopped and which checkpoint is complete.

    ``epoch_done``: epochs completed; ``step``: optimiser steps taken. The checkpoint's own epoch is read
    from the file (a Ctrl-C during a save leaves the previous file, which the atomic save keeps intact).
    The error carries ``checkpoint`` (``last.pt`` when it exists, else None) and ``where`` (the message without
    its resume hint) for the caller's own resume command.
    """
    where = f"interrupted (Ctrl-C) in epoch {epoch_done + 1} of {epochs}, after {step} optimiser steps"
    checkpoint, state = _last_checkpoint(run_dir)
    text = f"{where}; {_checkpoint_words(checkpoint, state)}"
    err = Interrupted(text + (f"; continue with --resume {checkpoint}" if checkpoint else ""))
    err.checkpoint, err.where = checkpoint, text
    return err


def stopped_error(run_dir: str, epoch_done: int, epochs: int, step: int, signum: int, rank: int = 0,
                  world_size: int = 1) -> Stopped:
    """The one-line report of a stop signal (exit code 128 + ``signum``), like :func:`interrupted_error`.

    A stop keeps the last end-of-epoch ``last.pt`` (the trainer resumes only at epoch boundaries), so the line
    counts the optimiser steps of the current epoch that a resume trains again. On a rank other than 0 the
    line only says that it stopped with the others: rank 0 reports the checkpoint, which another node may
    not even see, and ``where``/``checkpoint`` are None so that ``tools.train`` adds no resume command.
    """
    name = signal_name(signum)
    where = f"stopped by {name} in epoch {epoch_done + 1} of {epochs}, after {step} optimiser steps"
    if rank != 0:
        err = Stopped(f"rank {rank} of {world_size}: {where}, with the other ranks; rank 0's line names the "
                      f"complete checkpoint and the command that continues", signum)
        err.checkpoint, err.where = None, None
        return err
    checkpoint, state = _last_checkpoint(run_dir)
    text = f"{where}; {_checkpoint_words(checkpoint, state)}"
    redo = step - int(state.get("global_step", step)) if isinstance(state, dict) else 0
    if redo > 0:
        text += f"; the {redo} optimiser steps after it are trained again on resume (a stop keeps the last " \
                "end-of-epoch checkpoint)"
    err = Stopped(text + (f"; continue with --resume {checkpoint}" if checkpoint else ""), signum)
    err.checkpoint, err.where = checkpoint, text
    return err


def _last_checkpoint(run_dir: str) -> tuple[str | None, dict | str | None]:
    """``(path of last.pt or None, its state, or the reason it could not be read)``.

    An existing ``last.pt`` is named even when reading it back fails here: writes are atomic, so the file is
    a complete checkpoint in all but name, and without a checkpoint the printed command would be the one
    with ``--overwrite``, which deletes it. A ``--resume`` of a truly broken file fails with its own message.
    """
    last = os.path.join(run_dir, "last.pt")
    if not os.path.isfile(last):
        return None, None
    try:
        return last, load_checkpoint(last)
    except Exception as err:   # a report must not fail: say what is known
        return last, str(err)


def _checkpoint_words(checkpoint: str | None, state: dict | str | None) -> str:
    if checkpoint is None:
        return "no checkpoint is complete yet (the first is written at the end of epoch 1)"
    if isinstance(state, dict):
        return f"{checkpoint} is complete (end of epoch {int(state['epoch'])})"
    return f"{checkpoint} could not be read back ({state})"
