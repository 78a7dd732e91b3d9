"""The embedded default classification set: eight shapes on textured, cluttered backgrounds.

Each image shows one filled shape (circle, triangle, square, star, cross, ring, crescent, arrow) with a
random size, position, rotation and colour over a background of a colour gradient, faint stripes, a few
random strokes and pixel noise. Images are rendered on the fly from ``numpy.random.default_rng([seed,
split, index])``, so the set is a pure function of its settings (nothing to download or store); a ring and a
circle, or a star and a cross, differ only in shape, so the network has to look at shape, not colour.
:func:`write_image_folder` writes the same images as an image folder, to try the image-folder reader on.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from datasets.image_folder import ClassificationDataset

GENERATOR_VERSION = 1
SHAPES = ("circle", "triangle", "square", "star", "cross", "ring", "crescent", "arrow")
_SPLIT_CODES = {"train": 0, "val": 1}
_SUPERSAMPLE = 4


@dataclass
class SyntheticClassificationSpec:
    """Settings of the synthetic shapes set; every image is a pure function of these, the split and its index."""

    num_train_images: int = 2000
    num_val_images: int = 400
    min_image_size: int = 64            # each side drawn in [min, max]: sizes (and aspect ratios) vary when
    max_image_size: int = 64            # min < max, which is what the input-size policies are for
    min_shape_fraction: float = 0.35    # shape diameter as a fraction of the image's shorter side
    max_shape_fraction: float = 0.8
    max_rotation_deg: float = 180.0     # shapes are rotated uniformly in [-max, max] degrees
    clutter_strokes: int = 3            # random lines in the background
    stripe_amplitude: float = 20.0      # faint stripes of a random period and angle in the background (max)
    noise_std: float = 6.0              # Gaussian pixel noise (0-255 scale)
    seed: int = 0

    def num_images(self, split: str) -> int:
        return self.num_train_images if split == "train" else self.num_val_images

    def sha256(self) -> str:
        """A hash of the settings and generator version: the set's identity, for provenance."""
        text = json.dumps({"generator_version": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def sample_label(spec: SyntheticClassificationSpec, split: str, index: int) -> int:
    """Balanced labels: image ``i`` shows shape ``i % 8``, rendered with its own random draws."""
    del spec, split
    return index % len(SHAPES)


def render_image(spec: SyntheticClassificationSpec, split: str, index: int) -> tuple[np.ndarray, int]:
    """``(RGB uint8 [H, W, 3], label)`` of image ``index`` of ``split``."""
    if split not in _SPLIT_CODES:
        raise ValueError(f"split {split!r} is not one of {tuple(_SPLIT_CODES)}")
    rng = np.random.default_rng([spec.seed, _SPLIT_CODES[split], index])
    label = sample_label(spec, split, index)
    w = int(rng.integers(spec.min_image_size, spec.max_image_size + 1))
    h = int(rng.integers(spec.min_image_size, spec.max_image_size + 1))
    image = _background(rng, w, h, spec)
    fg = _contrasting_colour(rng, image.reshape(-1, 3).mean(0))
    alpha = _shape_mask(rng, SHAPES[label], w, h, spec)
    out = image * (1 - alpha[..., None]) + fg[None, None, :] * alpha[..., None]
    if spec.noise_std > 0:
        out = out + rng.normal(0.0, spec.noise_std, out.shape)
    return np.clip(out, 0, 255).round().astype(np.uint8), label


def _background(rng: np.random.Generator, w: int, h: int, spec: SyntheticClassificationSpec) -> np.ndarray:
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    t = (xx * math.cos(angle) + yy * math.sin(angle))
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    image = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    period, phase, stripe_angle = rng.uniform(4, 12), rng.uniform(0, 2 * math.pi), rng.uniform(0, math.pi)
    stripes = np.sin((xx * math.cos(stripe_angle) + yy * math.sin(stripe_angle)) * 2 * math.pi / period + phase)
    image = image + rng.uniform(0.25, 1.0) * spec.stripe_amplitude * stripes[..., None]
    canvas = np.clip(image, 0, 255).astype(np.uint8).copy()
    for _ in range(spec.clutter_strokes):
        p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.line(canvas, p0, p1, colour, int(rng.integers(1, 3)), cv2.LINE_AA)
    return canvas.astype(np.float64)


def _contrasting_colour(rng: np.random.Generator, background_mean: np.ndarray) -> np.ndarray:
    lum = lambda c: float(np.dot(c, (0.299, 0.587, 0.114)))   # noqa: E731
    for _ in range(20):
        colour = rng.uniform(0, 255, 3)
        if abs(lum(colour) - lum(background_mean)) > 70:
            return colour
    return np.full(3, 255.0 if lum(background_mean) < 128 else 0.0)


def _polygon(points: np.ndarray, angle: float, radius: float, centre: np.ndarray) -> np.ndarray:
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return (points @ rot.T) * radius + centre


def _regular(n: int) -> np.ndarray:
    a = np.arange(n) * 2 * math.pi / n - math.pi / 2
    return np.stack([np.cos(a), np.sin(a)], 1)


def _shape_mask(rng: np.random.Generator, shape: str, w: int, h: int, spec: SyntheticClassificationSpec) -> np.ndarray:
    """Soft mask [h, w] in [0, 1] of one shape (drawn 4x larger, then area-averaged: anti-aliased)."""
    s = _SUPERSAMPLE
    short = min(w, h)
    radius = 0.5 * short * rng.uniform(spec.min_shape_fraction, spec.max_shape_fraction)
    margin = radius * 0.9
    centre = np.array([rng.uniform(margin, max(w - margin, margin + 1e-3)),
                       rng.uniform(margin, max(h - margin, margin + 1e-3))])
    angle = math.radians(rng.uniform(-spec.max_rotation_deg, spec.max_rotation_deg))
    mask = np.zeros((h * s, w * s), dtype=np.uint8)
    c = tuple(int(round(v * s)) for v in centre)
    r = radius * s
    if shape == "circle":
        cv2.circle(mask, c, int(round(r)), 255, -1)
    elif shape == "ring":
        cv2.circle(mask, c, int(round(r)), 255, -1)
        cv2.circle(mask, c, int(round(r * 0.55)), 0, -1)
    elif shape == "crescent":
        cv2.circle(mask, c, int(round(r)), 255, -1)
        off = np.array([math.cos(angle), math.sin(angle)]) * r * 0.45
        cv2.circle(mask, (int(round(c[0] + off[0])), int(round(c[1] + off[1]))), int(round(r * 0.85)), 0, -1)
    else:
        if shape == "triangle":
            pts = _regular(3)
        elif shape == "square":
            pts = _regular(4) * 0.9
        elif shape == "star":
            outer, inner = _regular(5), _regular(5) * 0.42
            inner = inner @ np.array([[math.cos(math.pi / 5), -math.sin(math.pi / 5)],
                                      [math.sin(math.pi / 5), math.cos(math.pi / 5)]]).T
            pts = np.stack([outer, inner], 1).reshape(-1, 2)
        elif shape == "cross":
            a = 0.3
            pts = np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a], [-1, a],
                            [-1, -a], [-a, -a]]) * 0.95
        elif shape == "arrow":
            pts = np.array([[-1, -0.22], [0.15, -0.22], [0.15, -0.6], [1, 0], [0.15, 0.6], [0.15, 0.22],
                            [-1, 0.22]])
        else:
            raise ValueError(f"unknown shape {shape!r}")
        poly = _polygon(pts, angle, r, np.array(c, dtype=np.float64))
        cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 255)
    small = cv2.resize(mask, (w, h), interpolation=cv2.INTER_AREA)
    return small.astype(np.float64) / 255.0


class SyntheticClassificationDataset(ClassificationDataset):
    """The shapes of ``split`` rendered on the fly; the other arguments as :class:`ClassificationDataset`."""

    def __init__(self, spec: SyntheticClassificationSpec, split: str, **kwargs):
        super().__init__(SHAPES, **kwargs)
        if split not in _SPLIT_CODES:
            raise ValueError(f"split {split!r} is not one of {tuple(_SPLIT_CODES)}")
        self.spec = spec
        self.split = split
        self.labels = [sample_label(spec, split, i) for i in range(spec.num_images(split))]
        self._cache: dict[int, np.ndarray] = {}   # rendering costs ~3 ms; 2000 images of 64x64 are 25 MB

    def _load(self, index: int):
        image = self._cache.get(index)
        if image is None:
            image, _ = render_image(self.spec, self.split, index)
            self._cache[index] = image
        return image.copy(), f"synthetic-{self.split}-{index:06d}"


def write_image_folder(root: str, spec: SyntheticClassificationSpec, split: str) -> str:
    """Write ``split`` as ``root/<split>/<shape>/<index>.png`` (lossless); returns the split's folder."""
    folder = os.path.join(root, split)
    for name in SHAPES:
        os.makedirs(os.path.join(folder, name), exist_ok=True)
    for i in range(spec.num_images(split)):
        image, label = render_image(spec, split, i)
        path = os.path.join(folder, SHAPES[label], f"{i:06d}.png")
        if not cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")
    return folder
