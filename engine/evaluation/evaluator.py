"""The evaluator contract: accumulate predictions, then score (in the spirit of detectron2's evaluators).

Training-time validation and ``tools.eval`` score through the same objects, whatever gave the predictions:
ground-truth boxes, a detection-results file or a detector. A task's ``evaluator()`` builds one; the task's
``predict_batches(model, loader)`` yields what its ``process`` takes. Under DistributedDataParallel each
rank processes its share and ``evaluate`` gathers them before scoring, so every rank returns the metrics of
the whole set.
"""

from __future__ import annotations

import time
from typing import Any, Protocol, runtime_checkable

from torch import nn


@runtime_checkable
class Evaluator(Protocol):
    """* ``reset()``: forget what was processed.
    * ``process(predictions, seconds=0.0)``: add one batch of the task's predictions (``seconds``: the time
      they took, for per-item speed in the report).
    * ``evaluate() -> dict[str, float]``: the metrics of everything processed since the last reset.
    * ``describe() -> dict``: what was scored and how (boxes used, counts), for the report beside the metrics.
    * ``results``: after ``evaluate``, the predictions in the benchmark's results format (COCO results for
      keypoints and boxes; empty where there is none), which ``tools.eval`` writes to a file.
    """

    results: list

    def reset(self) -> None: ...

    def process(self, predictions: Any, seconds: float = 0.0) -> None: ...

    def evaluate(self) -> dict[str, float]: ...

    def describe(self) -> dict: ...


@runtime_checkable
class WritesOutputs(Protocol):
    """Optional: an evaluator that also writes files about its last ``evaluate`` (e.g. a CED plot) into the
    output folder of ``tools.eval``, adding what it wrote to ``report``."""

    def write_outputs(self, out_dir: str, report: dict) -> None: ...


def evaluate_model(task, model: nn.Module, loader, evaluator: Evaluator | None = None) -> tuple[dict, Evaluator]:
    """Predict with ``task.predict_batches(model, loader)`` and score with ``evaluator`` (default:
    ``task.evaluator()``). Returns ``(metrics, evaluator)``; the model is left in the mode it was in."""
    evaluator = evaluator if evaluator is not None else task.evaluator()
    evaluator.reset()
    start = time.perf_counter()
    for predictions in task.predict_batches(model, loader):
        now = time.perf_counter()
        evaluator.process(predictions, seconds=now - start)
        start = time.perf_counter()
    return evaluator.evaluate(), evaluator
