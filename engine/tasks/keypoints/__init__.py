"""The top-down keypoint task: heatmap targets built on the device, flip test, COCO keypoint AP, PCK, NME and
the face report, the two-stage pipeline's second stage, ONNX export. Its registry entry is :data:`ENTRY`.

Modules: ``schema`` (config sections and ranges), ``task`` (:class:`KeypointTask`: loss, prediction),
``evaluator`` (scoring), ``build`` (parts from a config), ``export`` (the ONNX graphs), ``distill`` (a trained
model's heatmaps as a second target).
"""

from engine.tasks.base import TaskEntry
from engine.tasks.keypoints.build import (
    build_codec,
    build_evaluation,
    build_experiment,
    build_inference_model,
    build_model,
    build_task,
    check_checkpoint,
    coco_subset,
    load_split,
    load_split_and_meta,
    make_loader,
    make_topdown_dataset,
    make_val_loader,
    prepare_data,
    resolve_meta,
)
from engine.tasks.keypoints.evaluator import KeypointEvaluator
from engine.tasks.keypoints.export import KeypointOnnx
from engine.tasks.keypoints.schema import KeypointConfig, check_ranges
from engine.tasks.keypoints.task import KeypointMeta, KeypointTask, flip_tested_heatmaps

ENTRY = TaskEntry(
    name="keypoints", schema=KeypointConfig, check_ranges=check_ranges, build_experiment=build_experiment,
    build_evaluation=build_evaluation, build_inference_model=build_inference_model, onnx=KeypointOnnx(),
    check_checkpoint=check_checkpoint, top_down=True,
    summary="top-down keypoints (heatmaps on an FPN + stacked hourglass)")

__all__ = ["ENTRY", "KeypointConfig", "KeypointEvaluator", "KeypointMeta", "KeypointTask", "build_codec",
           "build_evaluation", "build_experiment", "build_inference_model", "build_model", "build_task",
           "check_checkpoint", "coco_subset", "flip_tested_heatmaps", "load_split", "load_split_and_meta",
           "make_loader", "make_topdown_dataset", "make_val_loader", "prepare_data", "resolve_meta"]
