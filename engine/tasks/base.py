"""What a task is: the object the trainer and the evaluator call (:class:`Task`), what its builders return
(:class:`Experiment`), and the one registry entry that declares everything else about it (:class:`TaskEntry`).

A new task is a module (or a package, as the three built-in ones) with a task class satisfying :class:`Task`,
a config schema with its range checks, a ``build_experiment`` function, and a :class:`TaskEntry` naming them,
registered with :func:`engine.tasks.registry.register` (the built-in ones are listed in that file). The trainer
and the tools never ask which task they run: they call what the entry and these protocols declare.

``tests/test_task_protocol.py`` checks that every task class satisfies the protocols (``isinstance`` against
the ``runtime_checkable`` protocols below checks that the methods exist, not their signatures: the
signatures are written here for readers and type checkers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from torch import nn


@runtime_checkable
class Task(Protocol):
    """What the trainer and the evaluation call on every task.

    * ``training_step(model, batch) -> dict``: moves the batch to the model's device and returns ``"loss"``
      (a scalar tensor the trainer calls ``backward`` on), optionally ``"batch_size"`` (samples in the batch,
      for the sample-weighted epoch loss and gradient accumulation), and any other scalar tensors to log.
      Called under the trainer's autocast context; also replayed by the non-finite report.
    * ``validate(model, loader) -> dict[str, float]``: metrics on the validation loader; the config's
      ``eval.main_metric`` must be one of the keys. Under DistributedDataParallel each rank gets its shard
      of the loader and every rank must return the metrics of the whole set (the evaluator gathers them).
      Built-in tasks implement it as ``engine.evaluation.evaluator.evaluate_model(self, model, loader)[0]``.
    * ``batch_ids(batch) -> list``: one printable id per sample (image / annotation ids), named in the
      report of a non-finite loss or gradient.
    * ``evaluator() -> Evaluator``: a fresh :class:`engine.evaluation.evaluator.Evaluator` for the validation
      ground truth the task was built with.
    * ``predict_batches(model, loader) -> Iterator``: the model's predictions, one item per batch, in the
      form the task's evaluator ``process``-es (the model is put in eval mode and restored).
    """

    def training_step(self, model: nn.Module, batch: Any) -> dict: ...

    def validate(self, model: nn.Module, loader) -> dict[str, float]: ...

    def batch_ids(self, batch: Any) -> list: ...

    def evaluator(self) -> Any: ...

    def predict_batches(self, model: nn.Module, loader) -> Iterator: ...


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

    A task's ``build_evaluation(cfg, device, progress)`` returns the same with ``train_loader=None`` and a
    model without pretrained weights, for evaluating a checkpoint.
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


class OnnxOutputs(Protocol):
    """How a task's model goes into an ONNX file and comes back out (``engine/export``).

    * ``graph(model, cfg, meta, decode) -> (module, output names, outputs kind)``: the module to export,
      taking uint8 RGB ``[B, 3, H, W]``; ``decode`` asks for decoded outputs (a task that cannot raises
      InputError).
    * ``metadata(cfg, meta, model) -> dict``: task keys of the file's metadata besides the common ones.
    * ``check_graph(path, session, doc)``: CheckpointError when a session's inputs or outputs do not match
      the metadata ``doc``.
    * ``unflatten(outputs, doc)``: the session's output tensors as the PyTorch model returns them.
    """

    def graph(self, model: nn.Module, cfg, meta: dict, decode: bool) -> tuple[nn.Module, list[str], str]: ...

    def metadata(self, cfg, meta: dict, model: nn.Module) -> dict: ...

    def check_graph(self, path: str, session, doc: dict) -> None: ...

    def unflatten(self, outputs: list, doc: dict) -> Any: ...


@dataclass(frozen=True)
class TaskEntry:
    """Everything the trainer and the tools know about one task, in one place.

    Args:
        name: the config's ``task`` value.
        schema: the config dataclass (``task``, ``name``, ``output_dir``, ``model``, ``data``, ``loss``,
            ``train`` of :class:`engine.config.sections.TrainConfig`, ``eval``).
        check_ranges: ``cfg -> ["key = value: valid range", ...]`` beyond the shared ``train``/``data`` checks.
        build_experiment: ``(cfg, device, progress, rank, world_size) -> Experiment`` for ``tools.train``.
        build_evaluation: ``(cfg, device, progress) -> Experiment`` for ``tools.eval`` (validation side only,
            an untrained model to load a checkpoint into); None: ``tools.eval`` refuses the task in one line.
        build_inference_model: ``(cfg, checkpoint meta) -> nn.Module``, the untrained model a checkpoint's
            weights load into (``tools.infer``, ``tools.export``, ``engine.api``); None: no inference path.
        onnx: :class:`OnnxOutputs`; None: ``tools.export`` refuses the task in one line.
        check_checkpoint: ``(state, experiment, checkpoint path) -> None``, raising CheckpointError when a
            checkpoint cannot be scored on the evaluation data (other classes, other keypoints); optional.
        top_down: the model works on crops of boxes, so ``tools.eval`` / ``tools.infer`` can give it boxes from
            a detection file or a detector (the two-stage pipeline).
        summary: one line for ``--help`` texts and error messages.
    """

    name: str
    schema: type
    check_ranges: Callable[[Any], list[str]]
    build_experiment: Callable[..., Experiment]
    build_evaluation: Callable[..., Experiment] | None = None
    build_inference_model: Callable[[Any, dict], nn.Module] | None = None
    onnx: OnnxOutputs | None = None
    check_checkpoint: Callable[[dict, Experiment, str], None] | None = None
    top_down: bool = False
    summary: str = ""
