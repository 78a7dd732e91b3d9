"""The CenterNet-style detection task: heatmap, size and offset targets built on the device for one or several
FPN levels (or, with ``model.head: ltrb``, class scores and edge-distance distributions trained on several
cells per object, ``models/ltrb.py``), decoding, NMS, COCO bbox AP, the two-stage pipeline's first stage, ONNX
export. Its registry entry is :data:`ENTRY`.

Modules: ``schema`` (config sections and ranges), ``task`` (:class:`DetectionTask`: losses, prediction),
``evaluator`` (scoring), ``build`` (parts from a config), ``export`` (the ONNX graph).
"""

from engine.tasks.base import TaskEntry
from engine.tasks.detection.build import (
    HEADS,
    build_codec,
    build_evaluation,
    build_experiment,
    build_inference_model,
    build_model,
    build_task,
    check_checkpoint,
    load_split,
    make_dataset,
    make_loader,
    make_val_loader,
    prepare_data,
)
from engine.tasks.detection.evaluator import DetectionEvaluator
from engine.tasks.detection.export import DetectorOnnx
from engine.tasks.detection.schema import DetectionConfig, check_ranges
from engine.tasks.detection.task import DetectionMeta, DetectionTask

ENTRY = TaskEntry(
    name="detection", schema=DetectionConfig, check_ranges=check_ranges, build_experiment=build_experiment,
    build_evaluation=build_evaluation, build_inference_model=build_inference_model, onnx=DetectorOnnx(),
    check_checkpoint=check_checkpoint,
    summary="CenterNet-style or ltrb (GFL / YOLOv8) boxes on one or several FPN levels")

__all__ = ["ENTRY", "HEADS", "DetectionConfig", "DetectionEvaluator", "DetectionMeta", "DetectionTask",
           "build_codec", "build_evaluation", "build_experiment", "build_inference_model", "build_model",
           "build_task", "check_checkpoint", "load_split", "make_dataset", "make_loader", "make_val_loader",
           "prepare_data"]
