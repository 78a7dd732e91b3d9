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
    """

    def __init__(self, model: nn.Module, task, input_size: Sequence[int], bbox_padding: float = DEFAULT_CROP_PADDING,
                 batch_size: int = 32, recrop_passes: int = 0):
        self.model = model
        self.task = task
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.bbox_padding = bbox_padding
        self.batch_size = batch_size
        self.recrop_passes = int(recrop_passes)

    def crop(self, image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The model's crop of one inclusive-xyxy box: ``(crop [H, W, 3] uint8, crop_to_image [2, 3])``."""
        return crop_box(image, box, self.input_size, self.bbox_padding)

    @torch.no_grad()
    def predict(self, image: np.ndarray, boxes: np.ndarray, flip_test: bool | None = None) -> np.ndarray:
        """Keypoints of every box.

        image: RGB uint8 [H, W, 3]; boxes: [N, 4] inclusive xyxy. Returns [N, K, 3] (x, y, confidence) in
        image pixel coordinates.
        """
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        num_k = len(self.task.meta.keypoint_names)
        if len(boxes) == 0:
            return np.zeros((0, num_k, 3))
        pred = self._predict_once(image, boxes, flip_test)
        for _ in range(self.recrop_passes):
            pred = self._predict_once(image, keypoints_tight_box(pred[..., :2], boxes), flip_test)
        return pred

    def _predict_once(self, image: np.ndarray, boxes: np.ndarray, flip_test: bool | None) -> np.ndarray:
        out = []
        for start in range(0, len(boxes), self.batch_size):
            crops, mats = zip(*(self.crop(image, b) for b in boxes[start:start + self.batch_size]))
            batch = {"image": torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous(),
                     "crop_to_image": torch.from_numpy(np.stack(mats)).float()}
            pred = self.task.predict_batch(self.model, batch, flip_test)
            out.append(torch.cat([pred["keypoints"], pred["scores"][..., None]], dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float64)



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
