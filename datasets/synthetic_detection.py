"""The embedded default detection set: coloured shapes of four classes on textured backgrounds.

Classes: disc, square, triangle, cross. Each image has a textured background (colour gradient,
low-frequency noise, stripes or a checker pattern, thin clutter lines) and zero to ``max_objects`` objects
of varied size, from a few pixels (COCO "small") to about a third of the image, with random colours
(always contrasting with the background under them), mild rotation, some cut by the image border and some
partly covered by later objects. A few images have no object at all (negatives).

Every object's box is the tight box of its pixels (those at least half covered by the anti-aliased shape,
before later objects cover part of it), in COCO ``[x, y, w, h]`` with ``w = x2 - x1 + 1``; ``area`` is its
visible pixel count. Objects keep their box
centres at least ``min_center_distance`` pixels apart, so at the 128 x 128 evaluation scale two objects never
share a stride-4 cell of the detector (a CenterNet cannot report both), and overlap little (box IoU below 0.3).

Everything is drawn from ``numpy.random.default_rng([seed, split, image_index])``: the set is a pure function
of its settings, written once to ``root/`` as JPEG images and COCO json (like datasets/synthetic.py).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

from datasets.synthetic_writer import ensure_written, write_split_images
from models.bbox import box_center, box_iou, xyxy_to_coco_xywh

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
CLASS_NAMES = ("disc", "square", "triangle", "cross")
# Objects whose boxes overlap more than this are re-placed.
_MAX_BOX_IOU = 0.3


@dataclass
class SyntheticDetectionSpec:
    """Settings of the synthetic detection set; the written set is a pure function of these."""

    num_train_images: int = 800
    num_val_images: int = 100
    min_image_size: int = 112
    max_image_size: int = 160
    max_objects: int = 8
    min_object_size: float = 6.0        # pixels, longer side
    max_object_size: float = 56.0
    small_object_prob: float = 0.35     # share of objects drawn at most 16 pixels large
    truncation_prob: float = 0.1        # chance that an object's centre is placed near the border
    empty_image_prob: float = 0.05
    min_center_distance: float = 10.0   # pixels between box centres
    seed: int = 0


def ensure_synthetic_detection_dataset(root: str, spec: SyntheticDetectionSpec) -> dict[str, str]:
    """Write the set under ``root`` unless an identical one is already there. Returns the json paths."""
    return ensure_written(root, spec, GENERATOR_VERSION, "detection", generate_split)


def generate_split(root: str, split: str, num_images: int, spec: SyntheticDetectionSpec,
                   progress: bool = True) -> dict:
    """Draw and write ``num_images`` images of one split; returns its COCO dict."""
    images, annotations = write_split_images(root, split, num_images, spec.seed,
                                             lambda rng: render_image(rng, spec), f"synthetic detection {split}",
                                             progress)
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASS_NAMES)]
    return {"info": {"description": f"synthetic shapes, {split}", "generator_version": GENERATOR_VERSION},
            "images": images, "annotations": annotations, "categories": categories}


# ---------------------------------------------------------------------------------------------- drawing
def render_image(rng: np.random.Generator, spec: SyntheticDetectionSpec) -> tuple[np.ndarray, list[dict]]:
    """One RGB image and its annotations (COCO dicts without ids)."""
    w = int(rng.integers(spec.min_image_size, spec.max_image_size + 1))
    h = int(rng.integers(spec.min_image_size, spec.max_image_size + 1))
    image = _background(rng, w, h)
    n_obj = 0 if rng.random() < spec.empty_image_prob else int(rng.integers(1, spec.max_objects + 1))
    masks, classes, boxes = [], [], []
    for _ in range(n_obj):
        for _attempt in range(20):
            cls = int(rng.integers(len(CLASS_NAMES)))
            mask = _shape_mask(rng, cls, w, h, spec)
            box = _tight_box(mask)
            if box is None:
                continue
            centre = box_center(np.asarray(box, np.float64))
            if not boxes:
                break
            others = np.asarray(boxes, np.float64)
            far = np.linalg.norm(box_center(others) - centre, axis=1) >= spec.min_center_distance
            if far.all() and (box_iou(np.asarray([box], np.float64), others) <= _MAX_BOX_IOU).all():
                break
        else:
            continue
        _paint(image, mask, rng)
        # A later object covers earlier ones: their visible pixels shrink (their boxes stay amodal).
        for m in masks:
            m[mask >= 128] = 0
        masks.append(mask)
        classes.append(cls)
        boxes.append(box)
    image = _add_noise(image, rng)
    annotations = []
    for mask, cls, box in zip(masks, classes, boxes):
        visible = int((mask >= 128).sum())
        if visible < 4:          # covered almost entirely by later objects: not annotated, and
            continue             # hardly visible (the IoU limit keeps this rare)
        annotations.append({"category_id": cls + 1, "bbox": [int(v) for v in xyxy_to_coco_xywh(np.asarray(box))],
                            "area": float(visible)})
    return image, annotations


def _shape_mask(rng, cls: int, w: int, h: int, spec: SyntheticDetectionSpec) -> np.ndarray:
    """Anti-aliased uint8 mask (0..255) of one shape of class ``cls`` placed in a ``w`` x ``h`` image."""
    if rng.random() < spec.small_object_prob:
        size = rng.uniform(spec.min_object_size, min(16.0, spec.max_object_size))
    else:
        size = math.exp(rng.uniform(math.log(16.0), math.log(spec.max_object_size)))
    size = min(size, 0.9 * min(w, h))
    if rng.random() < spec.truncation_prob:
        centre = rng.uniform([-0.25 * size, -0.25 * size], [w + 0.25 * size, h + 0.25 * size])
    else:
        centre = rng.uniform([size / 2, size / 2], [w - size / 2, h - size / 2])
    aspect = rng.uniform(0.75, 1.33)
    sx, sy = size / 2 * min(aspect, 1.0), size / 2 / max(aspect, 1.0)
    angle = rng.uniform(-15, 15)
    mask = np.zeros((h, w), np.uint8)
    shift = 4                                         # sub-pixel vertices for cv2 (1/16 pixel)
    scale = 1 << shift
    if cls == 0:                                      # disc (ellipse)
        cv2.ellipse(mask, (int(round(centre[0] * scale)), int(round(centre[1] * scale))),
                    (max(int(round(sx * scale)), 1), max(int(round(sy * scale)), 1)), angle, 0, 360, 255, -1,
                    cv2.LINE_AA, shift)
        return mask
    if cls == 1:                                      # square (rectangle)
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)
    elif cls == 2:                                    # triangle, pointing up
        pts = np.array([[0, -1], [1, 0.85], [-1, 0.85]], float)
    else:                                             # cross (plus sign), arm width a third of the size
        t = 1 / 3
        pts = np.array([[-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t], [t, 1], [-t, 1], [-t, t], [-1, t],
                        [-1, -t], [-t, -t]], float)
    a = math.radians(angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    poly = (pts * [sx, sy]) @ rot.T + centre
    cv2.fillPoly(mask, [np.round(poly * scale).astype(np.int32)], 255, cv2.LINE_AA, shift)
    return mask


def _tight_box(mask: np.ndarray) -> list[int] | None:
    """Inclusive pixel box of the pixels at least half covered, or None when fewer than 4 are."""
    ys, xs = np.nonzero(mask >= 128)
    if len(xs) < 4:
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def _paint(image: np.ndarray, mask: np.ndarray, rng) -> None:
    """Blend a colour (contrasting with the background under the shape) with a darker rim into ``image``."""
    alpha = mask.astype(np.float32)[..., None] / 255
    inside = mask >= 128
    under = image[inside].mean(0) if inside.any() else np.full(3, 128.0)
    colour = rng.integers(20, 236, 3).astype(np.float32)
    if np.abs(colour - under).max() < 80:
        colour = np.where(under > 127, under - 110, under + 110).clip(0, 255)
    shade = rng.uniform(0.75, 1.0)
    rim = cv2.erode(mask, np.ones((3, 3), np.uint8)) < 128
    fill = np.broadcast_to(colour, image.shape).copy()
    fill[rim] *= shade
    image[:] = (image * (1 - alpha) + fill * alpha).clip(0, 255).astype(np.uint8)


def _background(rng, w: int, h: int) -> np.ndarray:
    """Gradient + low-frequency noise + a stripe or checker texture + thin clutter lines."""
    c0, c1 = rng.integers(30, 226, 3).astype(np.float32), rng.integers(30, 226, 3).astype(np.float32)
    if rng.random() < 0.5:
        t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    else:
        t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = np.broadcast_to(c0 + (c1 - c0) * t, (h, w, 3)).copy()
    grid = rng.normal(0, 20, (5, 5, 3)).astype(np.float32)
    img += cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.random()
    if kind < 0.4:
        period, angle = rng.uniform(4, 14), rng.uniform(0, math.pi)
        phase = (xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period
        img += (np.sin(phase) * rng.uniform(5, 20))[..., None]
    elif kind < 0.7:
        cell = int(rng.integers(6, 20))
        img += ((((xx // cell) + (yy // cell)) % 2) * rng.uniform(5, 20) - 10)[..., None]
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(0, 6))):
        p = rng.uniform([0, 0], [w, h])
        q = p + rng.normal(0, max(w, h) / 3, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.line(img, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), colour, 1, cv2.LINE_AA)
    return img


def _add_noise(img: np.ndarray, rng) -> np.ndarray:
    out = img.astype(np.float32) + rng.normal(0, rng.uniform(2, 8), img.shape)
    if rng.random() < 0.3:
        out = cv2.GaussianBlur(out, (3, 3), 0)
    return np.clip(out, 0, 255).astype(np.uint8)
