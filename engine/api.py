"""The models from Python: what ``tools.infer`` does, as three calls.

    from engine.api import load

    pose = load("runs/pose/best.pt")                    # the task is read from the file; .onnx works too
    keypoints = pose(image, boxes=[[x1, y1, x2, y2]])   # RGB uint8 [H, W, 3] -> [N, K, 3] in image pixels
    for result in pose.video("clip.mp4", track=True):   # a generator of FrameResult, one per frame
        ...

``load`` returns a :class:`KeypointModel` for a keypoint checkpoint (optionally with a ``detector`` for
two stages in one call) or a :class:`Detector` for a detection checkpoint. Every call goes through the
same code as the tools (crops, flip test, decoding, mapping back, rescoring and OKS-NMS, tracking and
smoothing), so results are the same. Coordinates follow docs/conventions.md (pixel ``i`` centred at ``i``;
boxes are inclusive ``[x1, y1, x2, y2]``).

The module lives in ``engine`` (not a new top-level package) so that installing the repository adds no
generic import name beside ``models``, ``datasets``, ``engine`` and ``tools``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from engine.distributed import resolve_device
from engine.inference.box_sources import DetectorBoxes, WholeImageBoxes, detector_boxes
from engine.inference.loading import load_for_inference, load_keypoint_predictor
from engine.inference.pipeline import rescore_and_suppress
from engine.video.frames import VideoSource
from engine.video.runner import FrameResult, VideoPoseRunner
from engine.video.smoothing import TrackSmoother
from engine.video.tracking import PoseTracker
from models.errors import CheckpointError, InputError

__all__ = ["Detector", "FrameResult", "KeypointModel", "load"]


def _check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"expected an RGB uint8 image [H, W, 3], got {image.dtype} {tuple(image.shape)}; for an "
                         f"OpenCV image use cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)")
    return image


def _frames(video, start: int, stop: int | None, stride: int) -> VideoSource:
    return VideoSource(video, start, stop, stride)


class KeypointModel:
    """A top-down keypoint model (see :func:`load`).

    ``model(image, boxes=None) -> [N, K, 3]`` (x, y, confidence) in image pixels: one pose per given box (in
    the boxes' order); without boxes, one per detection when a detector was loaded (by decreasing score,
    duplicates removed by OKS-NMS), else the whole image as one instance. :meth:`predict` also returns
    the boxes and instance scores.
    """

    def __init__(self, predictor, detector: DetectorBoxes | None = None, oks_nms_threshold: float | None = 0.9):
        self.predictor = predictor
        self.meta = predictor.task.meta
        self.keypoint_names = list(self.meta.keypoint_names)
        self.skeleton = list(self.meta.skeleton)
        self.detector = detector
        self.oks_nms_threshold = oks_nms_threshold

    def predict(self, image, boxes=None) -> dict:
        """``{"keypoints": [N, K, 3], "boxes": [N, 4], "scores": [N]}`` of an RGB uint8 image."""
        image = _check_image(image)
        if boxes is not None:
            boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
            kpts = self.predictor.predict(image, boxes)
            scores = self.predictor.task.rescore(kpts[:, :, 2], np.ones(len(boxes)))
            return {"keypoints": kpts, "boxes": boxes, "scores": scores}
        source = self.detector or WholeImageBoxes()
        boxes, box_scores = source.boxes_for(0, image)
        kpts = self.predictor.predict(image, boxes)
        keep, scores = rescore_and_suppress(self.predictor.task, boxes, box_scores, kpts, self.oks_nms_threshold)
        return {"keypoints": kpts[keep], "boxes": boxes[keep], "scores": scores}

    def __call__(self, image, boxes=None) -> np.ndarray:
        return self.predict(image, boxes)["keypoints"]

    def video(self, video: str | int, start: int = 0, stop: int | None = None, stride: int = 1,
              batch_size: int = 8, track: bool = False, smooth: bool = False, det_every: int = 1,
              tracker_options: dict | None = None, smoother_options: dict | None = None) -> Iterator[FrameResult]:
        """Per-frame results of a video file or camera index (a generator): :class:`FrameResult` with
        ``frame``, ``image``, ``keypoints`` [N, K, 3], ``boxes``, ``scores`` and ``track_ids`` (with ``track``).
        ``smooth`` applies the One-Euro filter per track (``smoother_options``: min_cutoff, beta, d_cutoff)."""
        source = _frames(video, start, stop, stride)
        tracker = PoseTracker(self.meta.oks_sigmas, **(tracker_options or {})) if track or smooth else None
        smoother = TrackSmoother(source.fps, **(smoother_options or {})) if smooth else None
        runner = VideoPoseRunner(self.predictor, self.detector or WholeImageBoxes(), det_every=det_every,
                                 batch_size=batch_size, oks_nms_threshold=self.oks_nms_threshold, tracker=tracker,
                                 smoother=smoother)
        yield from runner.run(source)


class Detector:
    """A detector (see :func:`load`). ``detector(image) -> {"boxes" [n, 4], "scores" [n], "labels" [n],
    "category_ids" [n], "class_names" [n]}`` with detections at or above ``score_threshold`` of the
    ``categories`` asked for (as its :meth:`video` and the tools keep them)."""

    def __init__(self, boxes: DetectorBoxes):
        self.source = boxes
        self.class_names = list(boxes.predictor.task.meta.class_names)

    def __call__(self, image) -> dict:
        det = self.source.predictor.predict(_check_image(image))
        keep = self.source.selected(det)
        out = {k: np.asarray(v)[keep] for k, v in det.items()}
        out["class_names"] = [self.class_names[int(c)] for c in out["labels"]]
        return out

    def video(self, video: str | int, start: int = 0, stop: int | None = None, stride: int = 1,
              batch_size: int = 8) -> Iterator[FrameResult]:
        """Per-frame detections of a video (a generator of :class:`FrameResult` with boxes, scores, labels)."""
        runner = VideoPoseRunner(None, self.source, batch_size=batch_size)
        yield from runner.run(_frames(video, start, stop, stride))


def load(path: str, device: str | torch.device = "auto", detector: str | None = None,
         flip_test: bool | None = None, score_threshold: float = 0.3, categories: Sequence[str] | None = None,
         oks_nms_threshold: float | None = 0.9, first_pass: str | None = None) -> KeypointModel | Detector:
    """A keypoint model or a detector from a checkpoint of ``tools.train`` or a model of ``tools.export``.

    Args:
        path: the checkpoint (``.pt``) or exported model (``.onnx``, run on onnxruntime).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:0"``, ...
        detector: with a keypoint model, a detector checkpoint whose boxes it uses when called without boxes.
        flip_test: override the model's flip testing (None keeps its config's).
        score_threshold: the detector's lowest score.
        categories: the detector's classes to keep (names or ids; all when None).
        oks_nms_threshold: duplicate-pose removal between detections (None: keep all).
        first_pass: with a keypoint model, a cheaper one of the same keypoints (checkpoint or ``.onnx``) that
            makes the first prediction; this model runs its ``eval.recrop_passes`` on that prediction's tight
            boxes (a cascade: the small model places the crop, the large one reads it).
    """
    dev = resolve_device(device) if isinstance(device, str) else device
    loaded = load_for_inference(path, dev)          # once: the task is read from what it loads
    task = loaded[0].task
    if task not in ("keypoints", "detection"):
        raise CheckpointError(f"{path}: a {task!r} checkpoint; engine.api loads keypoint models and detectors")
    cats = ",".join(str(c) for c in categories) if categories else None
    if task == "detection":
        if detector or first_pass:
            raise InputError(f"{path} is a detector itself; pass a keypoint model as the first argument")
        return Detector(detector_boxes(path, dev, cats, score_threshold, loaded=loaded))
    predictor, _ = load_keypoint_predictor(path, dev, flip_test, loaded=loaded, first_pass=first_pass)
    boxes = detector_boxes(detector, dev, cats, score_threshold) if detector else None
    return KeypointModel(predictor, boxes, oks_nms_threshold)
