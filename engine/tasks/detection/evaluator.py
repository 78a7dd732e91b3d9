"""Scoring detections: COCO bbox AP/AR through pycocotools, and detections per image."""

from __future__ import annotations

from engine.distributed import all_gather_list
from engine.evaluation.coco import coco_eval


class DetectionEvaluator:
    """Accumulates per-image detection records (``image_id``, numpy ``boxes`` [n, 4] inclusive xyxy in image
    pixels, ``scores`` [n], ``category_ids`` [n]: :meth:`DetectionTask.predict_batches`), then scores them
    (:class:`engine.evaluation.evaluator.Evaluator`): AP, AP50, AP75, APs/m/l, AR1/10/100, ARs/m/l and
    ``detections_per_image``.

    Args:
        task: the DetectionTask (COCO results, classes, NMS settings for the report).
        gt: COCO ground truth of the scored images and classes.
    """

    def __init__(self, task, gt: dict):
        self.task, self.gt = task, gt
        self.reset()

    def reset(self) -> None:
        self.records: list[dict] = []
        self.results: list[dict] = []

    def process(self, predictions: list[dict], seconds: float | None = None) -> None:
        self.records.extend(predictions)

    def evaluate(self) -> dict[str, float]:
        # Under DistributedDataParallel each rank predicted its share: score them all, on every rank.
        self.results = self.task.to_coco_results(all_gather_list(self.records))
        metrics = coco_eval(self.gt, self.results, "bbox")
        metrics["detections_per_image"] = len(self.results) / max(len(self.gt["images"]), 1)
        return metrics

    def describe(self) -> dict:
        objects = sum(not a.get("iscrowd", 0) for a in self.gt["annotations"])
        return {"task": "detection", "images": len(self.gt["images"]), "objects": objects,
                "classes": list(self.task.meta.class_names), "nms": self.task.nms,
                "score_threshold": self.task.score_threshold}
