"""Scoring keypoint predictions: COCO keypoint AP/AR, PCK, NME and the face-alignment report.

One evaluator for every way a keypoint model gets its boxes. On ground-truth boxes each prediction knows the
instance it was cropped from (``truth``, ``truth_bbox`` in its record), so PCK, NME and the face report pair
them directly. On detected boxes (a detection-results file or a detector, through the two-stage pipeline)
COCO's AP matches by OKS, and the face report matches each ground-truth face to the prediction whose box
overlaps it most (a face without one counts as a failure); PCK and NME need a ground-truth instance per
prediction and are left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.distributed import all_gather_list
from engine.evaluation.coco import coco_eval
from engine.evaluation.face_metrics import evaluate_detected, write_face_outputs
from engine.evaluation.keypoint_metrics import nme, pck


class KeypointEvaluator:
    """Accumulates pose records, then scores them (:class:`engine.evaluation.evaluator.Evaluator`).

    A record: ``image_id``, ``bbox`` [4] (the box it was cropped from, inclusive xyxy), ``box_score``,
    ``keypoints`` [K, 2] and ``scores`` [K] in image pixels; on ground-truth boxes also ``truth`` [K, 3] and
    ``truth_bbox`` [4] (:meth:`KeypointTask.predict_batches`), on detected boxes as
    :meth:`engine.inference.pipeline.TwoStagePipeline.run` gives them.

    Args:
        task: the KeypointTask (instance rescoring, COCO results, OKS sigmas, PCK thresholds, NME pair, face
            report).
        gt: COCO ground truth of the scored images.
        boxes: where the boxes came from, for the report (``"ground truth"`` or a box source's description).
        instances: on detected boxes, the ground-truth instances (``image_id``, ``bbox`` [4], ``keypoints``
            [K, 3]) the face report matches predictions to; None on ground-truth boxes.
        image_ids: on detected boxes, the images scored (each of their faces counts).
    """

    def __init__(self, task, gt: dict, boxes: str = "ground truth", instances: Sequence | None = None,
                 image_ids: Sequence[int] | None = None):
        self.task, self.gt, self.boxes = task, gt, boxes
        self.instances, self.image_ids = instances, image_ids
        self.reset()

    def reset(self) -> None:
        self.records: list[dict] = []
        self.seconds: float | None = None
        self.results: list[dict] = []
        self.face_nme: np.ndarray | None = None

    def process(self, predictions: list[dict], seconds: float | None = None) -> None:
        self.records.extend(predictions)
        if seconds is not None:
            self.seconds = (self.seconds or 0.0) + seconds

    def evaluate(self) -> dict[str, float]:
        task = self.task
        # Under DistributedDataParallel each rank predicted its share: score them all, on every rank.
        records = all_gather_list(self.records)
        self.results = task.to_coco_results(records)
        metrics = coco_eval(self.gt, self.results, "keypoints", sigmas=task.meta.oks_sigmas)
        if self.instances is not None:
            metrics.update(evaluate_detected(task.face, records, self.instances, self.image_ids, self.seconds))
        elif records:
            pred = np.stack([r["keypoints"] for r in records])
            truth = np.stack([r["truth"] for r in records])
            boxes = np.stack([r["truth_bbox"] for r in records])
            metrics.update(pck(pred, truth, boxes, task.pck_thresholds))
            metrics["NME"] = nme(pred, truth, boxes, task.meta.nme_pair)
            if task.face is not None:
                metrics.update(task.face.evaluate(pred, truth, boxes, seconds=self.seconds))
        self.face_nme = task.face.last_face_nme if task.face is not None else None
        return metrics

    def describe(self) -> dict:
        return {"boxes": self.boxes, "flip_test": self.task.flip_test, "refine": self.task.codec.refine,
                "instances": len(self.results)}

    def write_outputs(self, out_dir: str, report: dict) -> None:
        """With a face report: what its numbers are normalised by, into ``report``, and ``ced.png``."""
        face = self.task.face
        if face is not None:
            face.last_face_nme = self.face_nme
        write_face_outputs(face, out_dir, report)
