"""Keypoints on videos: frames -> boxes -> batched top-down poses -> ids -> smoothing -> video, JSON and CSV.

The same steps as on still images (engine.inference.pipeline: the crop of each box, flip test, mapping back,
rescoring, OKS-NMS), with three differences that only make sense in time:

* Frames are batched: the crops of ``batch_size`` frames go through the keypoint model together, and a
  detector sees ``batch_size`` frames at once.
* A detector may run only every ``det_every`` frames; the frames in between reuse its last boxes (cheap,
  and right while the subjects move less than the crop's padding in that time).
* Instances get ids (engine.video.tracking) and, optionally, smoothed keypoints (engine.video.smoothing).

Outputs per video under the output folder: ``<name>_annotated.mp4`` (input frame rate and size; skeletons,
ids and scores), ``<name>_keypoints.json`` (COCO keypoint results plus ``frame`` and ``track_id``) and
``<name>.csv`` (DeepLabCut's layout, engine.video.outputs). A detector alone writes
``<name>_detections.json`` (COCO detection results plus ``frame``) and the annotated video.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np
from tqdm import tqdm

from engine.inference.box_sources import DetectorBoxes, WholeImageBoxes
from engine.inference.drawing import draw_detections, draw_keypoints
from engine.inference.pipeline import rescore_and_suppress
from engine.inference.predictors import TopDownPredictor
from engine.video.frames import VideoSource, VideoWriter
from engine.video.outputs import frame_results, write_dlc_csv
from engine.video.smoothing import TrackSmoother
from engine.video.tracking import PoseTracker
from models.errors import InputError
from models.utils import write_json

log = logging.getLogger(__name__)


@dataclass
class FrameResult:
    """One frame's instances, by decreasing score. ``keypoints`` [N, K, 3] (x, y, confidence) in image pixels
    (None for a detector alone), ``boxes`` [N, 4] inclusive xyxy, ``scores`` [N] (instance scores),
    ``track_ids`` [N] (None without tracking), ``labels`` [N] class indices (detector alone)."""

    frame: int
    image: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    keypoints: np.ndarray | None = None
    track_ids: np.ndarray | None = None
    labels: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


class VideoPoseRunner:
    """Per-frame results of a stream of frames.

    Args:
        predictor: the keypoint model's :class:`TopDownPredictor` (None: a detector alone).
        box_source: :class:`engine.inference.box_sources.WholeImageBoxes`, :class:`DetectionFileBoxes` (``image_id`` =
            frame index) or :class:`DetectorBoxes`.
        det_every: run the detector on every N-th processed frame only; the others reuse its last boxes.
        batch_size: frames per batch.
        oks_nms_threshold: OKS-NMS threshold per frame (None: keep every pose).
        tracker: a :class:`PoseTracker` (None: no ids). Needs a keypoint model.
        smoother: a :class:`TrackSmoother` (needs a tracker: smoothing follows ids).
        flip_test: override the task's flip testing (None keeps it).
    """

    def __init__(self, predictor: TopDownPredictor | None, box_source, det_every: int = 1, batch_size: int = 8,
                 oks_nms_threshold: float | None = 0.9, tracker: PoseTracker | None = None,
                 smoother: TrackSmoother | None = None, flip_test: bool | None = None):
        if det_every < 1 or batch_size < 1:
            raise InputError(f"--det-every {det_every} and --video-batch-size {batch_size} must be >= 1")
        if smoother is not None and tracker is None:
            raise InputError("--smooth follows each track id: add --track")
        if predictor is None and not isinstance(box_source, DetectorBoxes):
            raise InputError("a video needs a keypoint model (--checkpoint) or a detector (--det-checkpoint)")
        self.predictor, self.box_source = predictor, box_source
        self.det_every, self.batch_size = det_every, batch_size
        self.oks_nms_threshold = oks_nms_threshold
        self.tracker, self.smoother, self.flip_test = tracker, smoother, flip_test
        self._last_det: tuple | None = None
        self._processed = 0

    def _detector_boxes(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(boxes, scores, labels)`` per frame from the detector, run on every ``det_every``-th frame."""
        src: DetectorBoxes = self.box_source
        need = [i for i in range(len(images)) if (self._processed + i) % self.det_every == 0]
        dets = dict(zip(need, src.predictor.predict_many([images[i] for i in need]))) if need else {}
        out = []
        for i, image in enumerate(images):
            if i in dets:
                self._last_det = src.from_detections(dets[i], image.shape[:2])
            out.append(self._last_det)
        return out

    def _boxes(self, batch: list[tuple[int, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        if isinstance(self.box_source, DetectorBoxes):
            return self._detector_boxes([im for _, im in batch])
        return [(*self.box_source.boxes_for(idx, im), None) for idx, im in batch]

    def _process(self, batch: list[tuple[int, np.ndarray]]) -> list[FrameResult]:
        boxes = self._boxes(batch)
        self._processed += len(batch)
        if self.predictor is None:
            return [FrameResult(idx, im, b, s, labels=lab) for (idx, im), (b, s, lab) in zip(batch, boxes)]
        poses = self.predictor.predict_many([im for _, im in batch], [b for b, _, _ in boxes], self.flip_test)
        results = []
        for (idx, im), (b, s, _), p in zip(batch, boxes, poses):
            keep, scores = rescore_and_suppress(self.predictor.task, b, s, p, self.oks_nms_threshold)
            b, p = b[keep].reshape(-1, 4), p[keep]
            ids = None
            if self.tracker is not None:
                ids = self.tracker.update(idx, b, p)
                if self.smoother is not None:
                    p = self.smoother.smooth(idx, ids, p)
            results.append(FrameResult(idx, im, b, scores, keypoints=p, track_ids=ids))
        return results

    def run(self, frames: Iterable[tuple[int, np.ndarray]]) -> Iterator[FrameResult]:
        """Results of ``(frame index, RGB frame)`` pairs, in order, computed ``batch_size`` frames at a time."""
        batch: list[tuple[int, np.ndarray]] = []
        for item in frames:
            batch.append(item)
            if len(batch) == self.batch_size:
                yield from self._process(batch)
                batch = []
        if batch:
            yield from self._process(batch)


# ---------------------------------------------------------------------------------------------- drawing
_ID_COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
               (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def draw_frame(result: FrameResult, meta=None, class_names=None, draw_threshold: float = 0.2,
               draw_boxes: bool = True) -> np.ndarray:
    """The frame with its skeletons (or boxes), ids and scores drawn (RGB uint8)."""
    if result.keypoints is None:
        names = [class_names[int(c)] for c in result.labels] if class_names is not None else None
        return draw_detections(result.image, result.boxes, result.scores, names)
    out = draw_keypoints(result.image, result.keypoints, meta.skeleton, meta.flip_index, draw_threshold)
    scale = max(out.shape[:2]) / 256
    thick = max(int(round(1.5 * scale)), 1)
    for i, box in enumerate(result.boxes):
        tid = None if result.track_ids is None else int(result.track_ids[i])
        colour = _ID_COLOURS[tid % len(_ID_COLOURS)] if tid is not None else (255, 255, 0)
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        if draw_boxes:
            cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick)
        text = (f"id {tid} " if tid is not None else "") + f"{result.scores[i]:.2f}"
        # Above the box where there is room (inside it otherwise), clear of the keypoints.
        size = 0.3 * max(scale, 1)
        text_h = int(22 * size) + 2
        y = y1 - 4 if y1 - 4 >= text_h else y1 + text_h
        cv2.putText(out, text, (x1, y), cv2.FONT_HERSHEY_SIMPLEX, size, colour, max(thick // 2, 1), cv2.LINE_AA)
    return out


# ---------------------------------------------------------------------------------------------- one video
def infer_video(source: VideoSource, runner: VideoPoseRunner, output_dir: str, meta=None, class_names=None,
                scorer: str = "model", category_id: int = 1, draw_threshold: float = 0.2, write_video: bool = True,
                progress: bool = True) -> dict:
    """Run ``runner`` over ``source`` and write the annotated video, the JSON and the CSV under ``output_dir``.

    Returns a summary: frames processed, instances, track ids, the paths written, and ``broken_at`` (the
    frame at which a damaged video stopped decoding, else None). What was written before such a break is
    kept.
    """
    os.makedirs(output_dir, exist_ok=True)
    name = source.name
    paths = {"video": os.path.join(output_dir, f"{name}_annotated.mp4")} if write_video else {}
    writer = VideoWriter(paths["video"], source.fps) if write_video else None
    results, frames, track_ids = [], [], set()
    det_records = []
    bar = tqdm(total=source.expected_frames(), desc=name, unit="frame", disable=not progress, dynamic_ncols=True)
    whole = isinstance(runner.box_source, WholeImageBoxes)
    try:
        for res in runner.run(source):
            frames.append(res.frame)
            if res.keypoints is not None:
                results.extend(frame_results(res.frame, res.keypoints, res.scores, res.boxes, res.track_ids,
                                             category_id))
                if res.track_ids is not None:
                    track_ids.update(int(t) for t in res.track_ids)
            else:
                det_records.append({"image_id": res.frame, "boxes": res.boxes, "scores": res.scores,
                                    "category_ids": np.asarray(runner.box_source.predictor.task.meta.category_ids)[
                                        np.asarray(res.labels, dtype=np.int64)]})
            if writer is not None:
                writer.write(draw_frame(res, meta, class_names, draw_threshold, draw_boxes=not whole))
            bar.update(1)
    except KeyboardInterrupt:
        if not source.camera:
            raise
        log.info("camera %s: stopped by Ctrl-C after %d frames", source.spec, len(frames))   # a camera's end
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    summary = {"input": source.spec, "frames": len(frames), "fps": source.fps, "size": list(source.size),
               "broken_at": source.broken_at}
    if runner.predictor is not None:
        paths["json"] = os.path.join(output_dir, f"{name}_keypoints.json")
        paths["csv"] = os.path.join(output_dir, f"{name}.csv")
        write_json(paths["json"], results)
        write_dlc_csv(paths["csv"], results, meta.keypoint_names, scorer, frames, runner.tracker is not None)
        summary.update(instances=len(results), track_ids=sorted(track_ids))
    else:
        dets = runner.box_source.predictor.task.to_coco_results(det_records)
        for d in dets:
            d["frame"] = d["image_id"]
        paths["json"] = os.path.join(output_dir, f"{name}_detections.json")
        write_json(paths["json"], dets)
        summary["instances"] = len(dets)
    summary["outputs"] = paths
    log.info("%s: %d frames%s -> %s", source.spec, len(frames),
             f" (broke off at frame {source.broken_at})" if source.broken_at is not None else "",
             ", ".join(paths.values()))
    return summary
