"""Image classification on any timm backbone, trained by the same loop as the other tasks: cross-entropy,
top-k accuracy, confusion matrix. Its registry entry is :data:`ENTRY` (no ONNX export and no two-stage
inference: ``tools.export`` and ``tools.infer`` say so in one line).

Modules: ``schema`` (config sections and ranges), ``task`` (:class:`ClassificationTask` and its evaluator),
``build`` (parts from a config).
"""

from engine.tasks.base import TaskEntry
from engine.tasks.classification.build import (
    build_datasets,
    build_evaluation,
    build_experiment,
    build_inference_model,
    build_model,
    check_checkpoint,
    make_loader,
)
from engine.tasks.classification.schema import ClassificationConfig, check_ranges
from engine.tasks.classification.task import ClassificationEvaluator, ClassificationTask, plot_confusion_matrix

ENTRY = TaskEntry(
    name="classification", schema=ClassificationConfig, check_ranges=check_ranges,
    build_experiment=build_experiment, build_evaluation=build_evaluation,
    build_inference_model=build_inference_model, check_checkpoint=check_checkpoint,
    summary="image classification (timm backbone and head)")

__all__ = ["ENTRY", "ClassificationConfig", "ClassificationEvaluator", "ClassificationTask", "build_datasets",
           "build_evaluation", "build_experiment", "build_inference_model", "build_model", "check_checkpoint",
           "make_loader", "plot_confusion_matrix"]
