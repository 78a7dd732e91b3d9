"""How an image of any size reaches a network: the input-size policies of classification.

=============  ======================================================================================
resize         scale both sides to the input size: the whole image is seen, the aspect ratio is not kept
center_crop    scale so the image covers the input size times ``crop_scale``, cut the centre: aspect kept,
               the border is lost
random_crop    as center_crop, at training a random window (and a random scale in [1, crop_scale]);
               at evaluation the centre
letterbox      scale so the whole image fits, pad the rest with a fill colour: aspect kept, nothing lost,
               part of the input is padding
native         no resizing at all: each image keeps its size, a batch is padded to its largest image and
               the classifier pools only over each image's own region (adaptive pooling)
=============  ======================================================================================

Costs (memory, speed and accuracy, measured on this machine) are in docs/training.md. All functions take
and return RGB uint8 ``[H, W, 3]`` arrays; randomness comes from the ``rng`` passed in (seeded per sample and
epoch by the sampler).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import default_collate

INPUT_POLICIES = ("resize", "center_crop", "random_crop", "letterbox", "native")


@dataclass
class ClassificationAugment:
    """Training-time augmentation of classification images (evaluation uses none)."""

    flip_prob: float = 0.5              # horizontal flip
    photometric: str = "light"          # none | light | strong (datasets/topdown_augment.py presets)


def check_policy(policy: str) -> str:
    if policy not in INPUT_POLICIES:
        raise ValueError(f"data.input_policy={policy!r} is not one of {INPUT_POLICIES}")
    return policy


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    # INTER_AREA averages when shrinking (no aliasing); linear when enlarging.
    interp = cv2.INTER_AREA if width * height < w * h else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


@dataclass(frozen=True)
class FitPlan:
    """Where a policy puts an image of ``image_size`` (width, height) in an input of ``input_size``: resized
    to ``resized`` (width, height), then cut at ``offset`` (x0, y0) for the crops or pasted at ``offset`` on
    the canvas for letterbox; ``native`` and ``resize`` use no offset."""

    policy: str
    image_size: tuple[int, int]
    input_size: tuple[int, int]
    resized: tuple[int, int]
    offset: tuple[int, int] = (0, 0)

    @property
    def image_share(self) -> float:
        """Fraction of the output that shows the image (letterbox: the rest is padding)."""
        if self.policy != "letterbox":
            return 1.0
        return self.resized[0] * self.resized[1] / (self.input_size[0] * self.input_size[1])

    @property
    def kept(self) -> float:
        """Fraction of the (resized) image that reaches the output (the crops cut the border)."""
        if self.policy not in ("center_crop", "random_crop"):
            return 1.0
        return self.input_size[0] * self.input_size[1] / (self.resized[0] * self.resized[1])

    @property
    def aspect(self) -> float:
        """Factor by which the aspect ratio changes (1: kept; resize squeezes)."""
        sx, sy = self.resized[0] / self.image_size[0], self.resized[1] / self.image_size[1]
        return max(sx, sy) / min(sx, sy)


def plan_fit(width: int, height: int, size: Sequence[int], policy: str, train: bool = False,
             rng: np.random.Generator | None = None, crop_scale: float = 1.143) -> FitPlan:
    """The geometry :func:`fit_to_input` applies to a ``width x height`` image (random_crop at training draws
    its zoom and window from ``rng``, in that order; at evaluation it is the centre window)."""
    out_w, out_h = int(size[0]), int(size[1])
    w, h = int(width), int(height)
    if policy == "native":
        return FitPlan(policy, (w, h), (w, h), (w, h))
    if policy == "resize":
        return FitPlan(policy, (w, h), (out_w, out_h), (out_w, out_h))
    if policy in ("center_crop", "random_crop"):
        scale = max(out_w / w, out_h / h) * crop_scale
        random_window = policy == "random_crop" and train
        if random_window:
            if rng is None:
                raise ValueError("random_crop at training needs an rng")
            scale = max(out_w / w, out_h / h) * rng.uniform(1.0, max(crop_scale, 1.0))
        new_w, new_h = max(out_w, round(w * scale)), max(out_h, round(h * scale))
        if random_window:
            x0 = int(rng.integers(0, new_w - out_w + 1))
            y0 = int(rng.integers(0, new_h - out_h + 1))
        else:
            x0, y0 = (new_w - out_w) // 2, (new_h - out_h) // 2
        return FitPlan(policy, (w, h), (out_w, out_h), (new_w, new_h), (x0, y0))
    if policy == "letterbox":
        scale = min(out_w / w, out_h / h)
        new_w, new_h = max(1, min(out_w, round(w * scale))), max(1, min(out_h, round(h * scale)))
        return FitPlan(policy, (w, h), (out_w, out_h), (new_w, new_h), ((out_w - new_w) // 2, (out_h - new_h) // 2))
    raise ValueError(f"data.input_policy={policy!r} is not one of {INPUT_POLICIES}")


def fit_to_input(image: np.ndarray, size: Sequence[int], policy: str, train: bool = False,
                 rng: np.random.Generator | None = None, crop_scale: float = 1.143,
                 fill: Sequence[int] = (0, 0, 0)) -> tuple[np.ndarray, tuple[int, int]]:
    """Apply ``policy`` to an RGB uint8 image; ``size`` is the input ``(width, height)``.

    Returns ``(image, (valid_h, valid_w))``: the output and the part of it that shows the image (the whole
    output except for ``native``, where it is the image's own size; letterbox padding counts as input).
    The geometry is :func:`plan_fit`'s.
    """
    h, w = image.shape[:2]
    plan = plan_fit(w, h, size, policy, train=train, rng=rng, crop_scale=crop_scale)
    out_w, out_h = plan.input_size
    new_w, new_h = plan.resized
    x0, y0 = plan.offset
    if policy == "native":
        return image, (h, w)
    if policy == "resize":
        return _resize(image, out_w, out_h), (out_h, out_w)
    if policy == "letterbox":
        canvas = np.empty((out_h, out_w, 3), dtype=np.uint8)
        canvas[:] = np.asarray(fill, dtype=np.uint8)
        canvas[y0:y0 + new_h, x0:x0 + new_w] = _resize(image, new_w, new_h)
        return canvas, (out_h, out_w)
    resized = _resize(image, new_w, new_h)     # center_crop, random_crop
    return np.ascontiguousarray(resized[y0:y0 + out_h, x0:x0 + out_w]), (out_h, out_w)


def collate_padded(batch: list) -> dict | None:
    """Collate classification samples; images of different sizes (``native``) are padded to the largest.

    Padding goes to the bottom and right with zeros, and ``valid_hw`` ([B, 2]) keeps each image's own size so
    that the model can pool over it alone. ``None`` samples (skipped bad images) are dropped.
    """
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    shapes = {tuple(b["image"].shape) for b in batch}
    if len(shapes) == 1:
        return default_collate(batch)
    c = batch[0]["image"].shape[0]
    h = max(b["image"].shape[1] for b in batch)
    w = max(b["image"].shape[2] for b in batch)
    images = torch.zeros((len(batch), c, h, w), dtype=batch[0]["image"].dtype)
    for i, b in enumerate(batch):
        _, bh, bw = b["image"].shape
        images[i, :, :bh, :bw] = b["image"]
    rest = default_collate([{k: v for k, v in b.items() if k != "image"} for b in batch])
    return {"image": images, **rest}
