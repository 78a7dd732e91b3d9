"""The contract between the trainer and a task, and what a task's ``build_experiment`` returns.

A new task is a class that satisfies :class:`Task` plus a ``build_experiment(cfg, device, progress, rank,
world_size) -> Experiment`` function in its module, and one line in ``engine/tasks/registry.py``. The
trainer never asks which task it runs: it calls these methods and nothing else.

``tests/test_task_protocol.py`` checks that every task class satisfies the protocol (``isinstance`` against
the ``runtime_checkable`` protocols below checks that the methods exist, not their signatures: the
signatures are written here for readers and type checkers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from torch import nn


@runtime_checkable
class Task(Protocol):
    """What the trainer calls on every task.

    * ``training_step(model, batch) -> dict``: moves the batch to the model's device and returns ``"loss"``
      (a scalar tensor the trainer calls ``backward`` on), optionally ``"batch_size"`` (samples in the batch,
      for the sample-weighted epoch loss and gradient accumulation), and any other scalar tensors to log.
      Called under the trainer's autocast context; also replayed by the non-finite report.
    * ``validate(model, loader) -> dict[str, float]``: metrics on the validation loader; the config's
      ``eval.main_metric`` must be one of the keys. Under DistributedDataParallel each rank gets its shard
      of the loader and every rank must return the metrics of the whole set (gather or reduce inside).
    * ``batch_ids(batch) -> list``: one printable id per sample (image / annotation ids), named in the
      report of a non-finite loss or gradient.
    """

    def training_step(self, model: nn.Module, batch: Any) -> dict: ...

    def validate(self, model: nn.Module, loader) -> dict[str, float]: ...

    def batch_ids(self, batch: Any) -> list: ...


@runtime_checkable
class SavesArtifacts(Protocol):
    """Optional hook: a task that also implements this writes files about its last ``validate`` call (e.g. a
    confusion matrix) into the run folder; the trainer calls it on rank 0 after each validation, with
    ``tag`` ``""`` for the model and ``"ema"`` for its EMA copy. A failure here is logged, never fatal."""

    def save_artifacts(self, run_dir: str, tag: str = "") -> list[str]: ...


@dataclass
class Experiment:
    """Everything a training run needs, built from a config by a task's ``build_experiment``.

    Args:
        model: the network, on the device.
        task: the :class:`Task` object.
        train_loader / val_loader: seeded loaders (this rank's share under DDP).
        meta: what the model needs to know about its data (keypoint skeleton, class names, ...), or None.
        annotation_files: files whose hashes go into the run's provenance.
        data_hashes: {description: sha256} of data that is not an annotation file (image lists, specs).
        checkpoint_extra: entries stored in every checkpoint besides the weights (e.g. ``{"meta": ...}``), so
            that inference can rebuild the model from the checkpoint alone.
        val_data: the validation split as read (its images and ids), for tools that walk its images.

    A task module's ``build_evaluation(cfg, device, progress)`` returns the same with ``train_loader=None``
    and a model without pretrained weights, for evaluating a checkpoint.
    """

    model: nn.Module
    task: Task
    train_loader: Any
    val_loader: Any
    meta: Any = None
    annotation_files: list[str] = field(default_factory=list)
    data_hashes: dict[str, str] | None = None
    checkpoint_extra: dict = field(default_factory=dict)
    val_data: Any = None
