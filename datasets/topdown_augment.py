"""Augmentation settings and photometric presets.

Geometry (box jitter, scale, rotation, shift, flip, half-body) is ours and composed into one affine matrix
(datasets/topdown.py): albumentations' resize-type transforms move keypoints half a pixel off our pixel
convention. Photometric changes (colour, contrast, noise, blur) do not move anything, so they come from
albumentations, seeded per sample so that every run and every resume sees the same augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import albumentations as A
import numpy as np

from models.bbox import box_width_height
from models.errors import ConfigError

PHOTOMETRIC_PRESETS = ("none", "light", "strong")


@dataclass
class TopDownAugment:
    """Training-time geometry of the top-down crop, plus the photometric preset."""

    flip_prob: float = 0.5             # horizontal flip, with left/right keypoints swapped by flip_index
    scale_range: list[float] = field(default_factory=lambda: [0.75, 1.25])   # crop size multiplier
    rotation_deg: float = 40.0         # max |rotation|, uniform in [-r, r]
    rotation_prob: float = 0.6
    shift_fraction: float = 0.16       # max centre shift as a fraction of the crop size
    shift_prob: float = 0.3
    half_body_prob: float = 0.3        # crop to the upper or lower body (needs data.upper_body_ids)
    half_body_min_keypoints: int = 8   # labelled keypoints an instance needs for a half-body crop
    photometric: str = "light"         # one of PHOTOMETRIC_PRESETS
    # Detector-like boxes: each edge of the annotated box moves independently by up to this fraction of the
    # box's width (left, right) or height (top, bottom), so the model stops relying on a landmark-tight box
    # that only exists when the landmarks are known. 0 (off) keeps the annotation box.
    box_jitter: float = 0.0
    box_jitter_prob: float = 1.0
    # Occlusion patches: with this probability 1-3 rectangles of random noise, each side 10-30 % of the
    # crop's, cover part of the crop; the keypoints under them keep their labels, so the model learns to
    # place hidden landmarks from the rest of the face (hands, hair, glasses in the wild). 0: off.
    occlusion_prob: float = 0.0
    # Gaussian or motion blur (kernel 3-7) on top of the photometric preset, for soft or moving faces. 0: off.
    blur_prob: float = 0.0


def jitter_box(box: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Move each edge of one inclusive xyxy box [4] by ``uniform(-fraction, fraction)`` x its width/height.

    The edges move, so the width changes by the difference of the two moves (``w' = w + dx2 - dx1``); a
    box is never made narrower than a quarter of its size. Returns a new float64 [4].
    """
    if not 0 <= fraction < 0.5:
        raise ConfigError(f"data.augment.box_jitter={fraction} must be in [0, 0.5) (a fraction of the box size per "
                          f"edge; 0.1-0.2 mimics a face detector's boxes)")
    box = np.asarray(box, np.float64)
    w, h = box_width_height(box)
    scale = np.array([w, h, w, h])
    out = box + rng.uniform(-fraction, fraction, size=4) * scale
    # Keep at least a quarter of each side: large jitters may otherwise swap the edges.
    centre = (out[:2] + out[2:]) / 2
    half = np.maximum((out[2:] - out[:2] + 1) / 2, np.array([w, h]) / 8)
    return np.concatenate([centre - half + 0.5, centre + half - 0.5])


def pixel_transform(augment: TopDownAugment) -> A.Compose:
    """Everything that changes pixel values but moves no keypoint: the photometric preset, then blur and
    occlusion patches when their probabilities are set."""
    for name in ("occlusion_prob", "blur_prob"):
        value = getattr(augment, name)
        if not 0 <= value <= 1:
            raise ConfigError(f"data.augment.{name}={value} must be a probability in [0, 1]")
    transforms = list(photometric_transform(augment.photometric).transforms)
    if augment.blur_prob > 0:
        transforms.append(A.OneOf([A.GaussianBlur(blur_limit=(3, 7)), A.MotionBlur(blur_limit=(3, 7))],
                                  p=augment.blur_prob))
    if augment.occlusion_prob > 0:
        transforms.append(A.CoarseDropout(num_holes_range=(1, 3), hole_height_range=(0.1, 0.3),
                                          hole_width_range=(0.1, 0.3), fill="random_uniform",
                                          p=augment.occlusion_prob))
    return A.Compose(transforms)


def photometric_transform(preset: str) -> A.Compose:
    """An albumentations pipeline of pixel-value changes only (no geometry), by preset name."""
    if preset == "none":
        transforms = []
    elif preset == "light":
        transforms = [
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
            A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=10, p=0.3),
        ]
    elif preset == "strong":
        transforms = [
            A.RandomBrightnessContrast(brightness_limit=0.3, contrast_limit=0.3, p=0.7),
            A.HueSaturationValue(hue_shift_limit=20, sat_shift_limit=30, val_shift_limit=20, p=0.5),
            A.ToGray(p=0.05),
            A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 5))], p=0.2),
            A.GaussNoise(std_range=(0.02, 0.08), p=0.2),
        ]
    else:
        raise ValueError(f"photometric preset {preset!r} is not one of {PHOTOMETRIC_PRESETS}")
    return A.Compose(transforms)
