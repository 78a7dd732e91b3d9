"""Augmentation settings and photometric presets.

Geometry (box jitter, scale, rotation, shift, flip, half-body) is ours and composed into one affine matrix
(datasets/topdown.py): albumentations' resize-type transforms move keypoints half a pixel off our pixel
convention. Photometric changes (colour, contrast, noise, blur) do not move anything, so they come from
albumentations, seeded per sample so that every run and every resume sees the same augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import albumentations as A

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
