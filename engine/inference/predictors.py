"""Predictors on whole images: top-down keypoints for given boxes, and whole-image detection.

The crops are taken exactly as in evaluation (same box -> centre/size, same affine matrix), so a model
scores the same through ``tools.infer`` as through ``tools.eval``.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch import nn

from datasets.affine import crop_box, invert_affine
from datasets.detection_transforms import view_matrix
from models.bbox import DEFAULT_CROP_PADDING, keypoints_tight_box
from models.errors import InputError


class TopDownPredictor:
    """Args:
        model: a keypoint model in eval mode.
        task: the KeypointTask (codec, flip map) the model was trained with.
        input_size: model input ``(width, height)``.
        bbox_padding: crop padding around each box (as in training).
        batch_size: crops per forward pass.
        recrop_passes: after the first prediction, crop each instance again on the tight box of its predicted
            keypoints and predict again, this many times (``eval.recrop_passes``). For landmark sets whose
            annotation box is the landmarks' tight box (300-W): the model then sees the box it was trained on
            whatever box a face detector gave, at the cost of one more forward pass per pass. 0: off.
        first_pass: another, cheaper predictor of the same keypoints that makes the first prediction in this
            model's place (a cascade): its points only place this model's crops, so a small model is enough
            there, and this one runs its ``recrop_passes`` (at least 1) on their tight boxes. The first pass
            keeps its own flip test and re-crops (the loaders give it none).
    """

    def __init__(self, model: nn.Module, task, input_size: Sequence[int], bbox_padding: float = DEFAULT_CROP_PADDING,
                 batch_size: int = 32, recrop_passes: int = 0, first_pass: TopDownPredictor | None = None):
        self.model = model
        self.task = task
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.bbox_padding = bbox_padding
        self.batch_size = batch_size
        self.recrop_passes = int(recrop_passes)
        if first_pass is not None and self.recrop_passes < 1:
            raise InputError("a first pass only places this model's re-crops, and recrop_passes is 0, so this model "
                             "would never run: set eval.recrop_passes=1 (or more) or leave the first pass out")
        self.first_pass = first_pass

    def crop(self, image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The model's crop of one inclusive-xyxy box: ``(crop [H, W, 3] uint8, crop_to_image [2, 3])``."""
        return crop_box(image, box, self.input_size, self.bbox_padding)

    def predict(self, image: np.ndarray, boxes: np.ndarray, flip_test: bool | None = None) -> np.ndarray:
        """Keypoints of every box.

        image: RGB uint8 [H, W, 3]; boxes: [N, 4] inclusive xyxy. Returns [N, K, 3] (x, y, confidence) in
        image pixel coordinates.
        """
        return self.predict_many([image], [boxes], flip_test)[0]

    @torch.no_grad()
    def predict_many(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray],
                     flip_test: bool | None = None) -> list[np.ndarray]:
        """Keypoints of every box of several images (video frames), their crops batched together: one
        [n_i, K, 3] per image, exactly what :meth:`predict` gives each image alone (first pass and re-crops
        included)."""
        boxes = [np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in boxes]
        if self.first_pass is not None:
            pred = self.first_pass.predict_many(images, boxes)
        else:
            pred = self._predict_once(images, boxes, flip_test)
        for _ in range(self.recrop_passes):
            tight = [keypoints_tight_box(p[..., :2], b) for p, b in zip(pred, boxes)]
            pred = self._predict_once(images, tight, flip_test)
        return pred

    def _predict_once(self, images: Sequence[np.ndarray], boxes: list[np.ndarray],
                      flip_test: bool | None) -> list[np.ndarray]:
        crops, mats = [], []
        for image, image_boxes in zip(images, boxes):
            for b in image_boxes:
                c, m = self.crop(image, b)
                crops.append(c)
                mats.append(m)
        out = [np.zeros((0, len(self.task.meta.keypoint_names), 3))]
        for start in range(0, len(crops), self.batch_size):
            batch = {"image": torch.from_numpy(np.stack(crops[start:start + self.batch_size])).permute(0, 3, 1, 2)
                     .contiguous(),
                     "crop_to_image": torch.from_numpy(np.stack(mats[start:start + self.batch_size])).float()}
            pred = self.task.predict_batch(self.model, batch, flip_test)
            out.append(torch.cat([pred["keypoints"], pred["scores"][..., None]], dim=-1).cpu().numpy())
        flat = np.concatenate(out).astype(np.float64)
        return np.split(flat, np.cumsum([len(b) for b in boxes])[:-1])


class DetectionPredictor:
    """Whole-image detection: letterbox into the model input exactly as evaluation does, decode, map back.

    Args:
        model: a detector in eval mode.
        task: the DetectionTask (codec, classes, score threshold, NMS) the model was trained with.
        input_size: model input ``(width, height)``.
        batch_size: images per forward pass in :meth:`predict_many`.
    """

    def __init__(self, model: nn.Module, task, input_size: Sequence[int], batch_size: int = 8):
        self.model = model
        self.task = task
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.batch_size = batch_size

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The letterboxed model input of an RGB uint8 image: ``(input [H, W, 3] uint8, input_to_image [2, 3])``."""
        m = view_matrix((image.shape[1], image.shape[0]), self.input_size)
        warped = cv2.warpAffine(image, m, self.input_size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                borderValue=(0, 0, 0))
        return warped, invert_affine(m)

    @torch.no_grad()
    def predict_many(self, images: Sequence[np.ndarray]) -> list[dict]:
        """Detections of each RGB uint8 image: dicts of numpy ``boxes`` [n, 4] (inclusive xyxy, image pixels),
        ``scores`` [n], ``labels`` [n] and ``category_ids`` [n], by decreasing score."""
        out: list[dict] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            inputs, mats = zip(*(self.prepare(im) for im in chunk))
            batch = {"image": torch.from_numpy(np.stack(inputs)).permute(0, 3, 1, 2).contiguous(),
                     "input_to_image": torch.from_numpy(np.stack(mats)).float(),
                     "image_size": torch.tensor([[im.shape[1], im.shape[0]] for im in chunk])}
            out.extend(self.task.predict_batch(self.model, batch))
        return out

    def predict(self, image: np.ndarray) -> dict:
        return self.predict_many([image])[0]
