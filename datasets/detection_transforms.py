"""Whole-image detection samples: one affine per sample moves the image and its boxes' pixel edges together.

Evaluation letterboxes the image into the model input (one scale that fits it, centred). Training draws,
per sample and from the sampler's seed, a zoom around that fit (zooming in crops the image), a shift of
the view and a horizontal flip, all composed into the same 2x3 matrix (datasets/affine.py). The matrix goes
to ``cv2.warpAffine`` for the pixels and to :func:`models.bbox.affine_boxes` for the boxes, which moves
their pixel edges (``x1 - 0.5``, ``x2 + 0.5``), so a box scaled by ``f`` is ``w * f`` wide.

A box that the crop cuts is clipped to the input; one that keeps less than ``min_visible_fraction`` of its
area (or none) is dropped, and the sample counts the drops. The loader ships uint8 images and raw padded
boxes; the CenterNet targets are built on the device (models/box_codec.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.affine import crop_matrix, invert_affine
from datasets.coco_detection import DetectionImage, DetectionImages
from datasets.image_io import BAD_IMAGE_POLICIES, read_record_image
from datasets.topdown_augment import photometric_transform
from models.bbox import affine_boxes, box_area, box_is_empty, clip_boxes
from models.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class DetectionAugment:
    """Training-time geometry of the whole-image view, plus the photometric preset."""

    flip_prob: float = 0.5
    scale_range: list[float] = field(default_factory=lambda: [0.6, 1.4])   # zoom around the letterbox fit
    shift_fraction: float = 0.2         # max shift of the view centre, as a fraction of the view's size
    min_visible_fraction: float = 0.3   # a cut box keeping less of its area than this is dropped
    # Zoom in no further than the image's largest box fits, and move the view so that it stays whole: large
    # objects are then never cut (or dropped by min_visible_fraction); the draws (and seeds) are unchanged.
    keep_largest_box: bool = False
    photometric: str = "light"          # one of datasets.topdown_augment.PHOTOMETRIC_PRESETS


def letterbox_scale(image_size: Sequence[int], input_size: Sequence[int]) -> float:
    """The one scale that fits an image of ``(w, h)`` into the input ``(w_in, h_in)``, edge to edge."""
    return min(input_size[0] / image_size[0], input_size[1] / image_size[1])


def view_matrix(image_size: Sequence[int], input_size: Sequence[int], zoom: float = 1.0,
                shift: Sequence[float] = (0.0, 0.0), flip: bool = False) -> np.ndarray:
    """Image -> input affine [2, 3]: letterbox fit times ``zoom``, centre moved by ``shift`` (fractions of
    the view's size, in image pixels), then an optional mirror. ``zoom=1`` and no shift is the evaluation view.
    """
    f = letterbox_scale(image_size, input_size) * zoom
    view = np.array([input_size[0] / f, input_size[1] / f])
    center = np.array([(image_size[0] - 1) / 2, (image_size[1] - 1) / 2]) + np.asarray(shift, float) * view
    return crop_matrix(center, view, input_size, 0.0, flip)


def transform_boxes(boxes: np.ndarray, matrix: np.ndarray, input_size: Sequence[int],
                    min_visible_fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Boxes [N, 4] of the image -> boxes in the input, clipped; returns ``(boxes [M, 4], keep [N] bool)``.

    A box is kept when it is not empty after clipping and keeps at least ``min_visible_fraction`` of its
    transformed area.
    """
    moved = affine_boxes(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), matrix)
    clipped = clip_boxes(moved, int(input_size[0]), int(input_size[1]))
    full = box_area(moved)
    with np.errstate(divide="ignore", invalid="ignore"):
        visible = np.where(full > 0, box_area(clipped) / np.maximum(full, 1e-12), 0.0)
    keep = ~box_is_empty(clipped) & (visible >= min_visible_fraction) & (full > 0)
    return clipped[keep], keep


def keep_box_in_view(image_size: Sequence[int], input_size: Sequence[int], zoom: float, shift: np.ndarray,
                     box: np.ndarray) -> tuple[float, np.ndarray]:
    """``(zoom, shift)`` of :func:`view_matrix` changed as little as possible so that ``box`` (inclusive xyxy,
    image pixels) lies whole inside the view: the zoom capped where the box's edge-to-edge extent fills the
    input, then the view centre clamped to the range that keeps both box edges in view."""
    fit = letterbox_scale(image_size, input_size)
    extent = np.array([box[2] - box[0] + 1, box[3] - box[1] + 1], dtype=np.float64)
    zoom = float(min(zoom, *(np.asarray(input_size, np.float64) / (fit * np.maximum(extent, 1e-6)))))
    view = np.asarray(input_size, np.float64) / (fit * zoom)
    middle = np.array([(image_size[0] - 1) / 2, (image_size[1] - 1) / 2])
    centre = middle + np.asarray(shift, np.float64) * view
    low = np.array([box[2], box[3]]) + 0.5 - view / 2            # the box's far edges at the view's far side
    high = np.array([box[0], box[1]]) - 0.5 + view / 2           # its near edges at the view's near side
    centre = np.clip(centre, np.minimum(low, high), np.maximum(low, high))
    return zoom, (centre - middle) / view


class DetectionTransformDataset(Dataset):
    """Whole images letterboxed (and, for training, augmented) into the model input.

    Args:
        images: from :func:`datasets.coco_detection.load_coco_detection` (a :class:`DetectionImages`), or any
            sequence of :class:`DetectionImage`, which is packed into one (arrays, not per-image objects:
            forked loader workers then share it instead of copying it as they touch it).
        input_size: model input ``(width, height)``.
        train: apply ``augment``; otherwise the plain letterbox.
        augment: geometry and photometric settings.
        on_bad_image: ``"error"`` stops with the file's name; ``"skip"`` warns and drops the sample.

    ``dataset[i]`` or ``dataset[(i, seed)]`` (from :class:`datasets.sampler.SeededSampler`) returns a dict:
    ``image`` uint8 [3, H, W]; ``boxes`` float32 [n, 4] inclusive xyxy in input pixels; ``labels`` int64 [n];
    ``input_to_image`` float32 [2, 3]; ``image_size`` int64 [2] (w, h); ``image_id``; ``index``;
    ``dropped`` (boxes the crop removed).
    """

    def __init__(self, images: Sequence[DetectionImage], input_size: Sequence[int], train: bool = False,
                 augment: DetectionAugment | None = None, on_bad_image: str = "error"):
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ConfigError(f"on_bad_image={on_bad_image!r} is not one of {BAD_IMAGE_POLICIES}")
        self.images = DetectionImages.from_images(images)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.train = train
        self.augment = augment or DetectionAugment()
        if len(self.augment.scale_range) != 2 or not 0 < self.augment.scale_range[0] <= self.augment.scale_range[1]:
            raise ConfigError(f"augment.scale_range must be [low, high] with 0 < low <= high, got "
                             f"{list(self.augment.scale_range)}")
        self.on_bad_image = on_bad_image
        self.photometric = photometric_transform(self.augment.photometric if train else "none")
        self._size_warned: set[int] = set()

    def __len__(self) -> int:
        return len(self.images)

    def sample_matrix(self, image_size: Sequence[int], rng: np.random.Generator,
                      boxes: np.ndarray | None = None) -> np.ndarray:
        """The image -> input matrix of one sample (the letterbox at evaluation).

        ``boxes`` [N, 4] (image pixels, inclusive xyxy) are used only with ``augment.keep_largest_box``.
        """
        if not self.train:
            return view_matrix(image_size, self.input_size)
        aug = self.augment
        zoom = float(np.exp(rng.uniform(np.log(aug.scale_range[0]), np.log(aug.scale_range[1]))))
        shift = rng.uniform(-aug.shift_fraction, aug.shift_fraction, size=2)
        flip = bool(rng.random() < aug.flip_prob)
        if aug.keep_largest_box and boxes is not None and len(boxes):
            zoom, shift = keep_box_in_view(image_size, self.input_size, zoom, shift,
                                           boxes[int(np.argmax(box_area(boxes)))])
        return view_matrix(image_size, self.input_size, zoom, shift, flip)

    def __getitem__(self, item) -> dict | None:
        index, seed = item if isinstance(item, tuple) else (item, None)
        rec = self.images[index]
        image = read_record_image(rec.image_path, rec.image_id, rec.image_size, self.on_bad_image, self._size_warned,
                                  "boxes")
        if image is None:
            return None
        size = (image.shape[1], image.shape[0])
        rng = np.random.default_rng(seed)
        matrix = self.sample_matrix(size, rng, rec.boxes)
        warped = cv2.warpAffine(image, matrix, self.input_size, flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        min_visible = self.augment.min_visible_fraction if self.train else 0.0
        boxes, keep = transform_boxes(rec.boxes, matrix, self.input_size, min_visible)
        if self.train and self.augment.photometric != "none":
            self.photometric.set_random_seed(int(rng.integers(2**31)))
            warped = self.photometric(image=warped)["image"]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(warped.transpose(2, 0, 1))),
            "boxes": torch.from_numpy(boxes.astype(np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(rec.labels[keep].astype(np.int64)),
            "input_to_image": torch.from_numpy(invert_affine(matrix).astype(np.float32)),
            "image_size": torch.tensor(size, dtype=torch.int64),
            "image_id": rec.image_id,
            "index": index,
            "dropped": int((~keep).sum()),
        }


def collate_detection(batch: list, max_objects: int | None = None) -> dict | None:
    """Stack samples and pad their boxes to one ``N`` per batch (the batch's largest count, at least 1).

    Returns ``image`` [B, 3, H, W] uint8, ``boxes`` [B, N, 4], ``labels`` [B, N], ``mask`` [B, N] bool and
    the per-sample fields stacked; ``None`` when every sample was a skipped bad image. With ``max_objects``
    an image keeps its first ``max_objects`` boxes (``truncated`` counts the rest).
    """
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    counts = [len(b["boxes"]) for b in batch]
    n = max(max(counts), 1)
    truncated = 0
    if max_objects is not None and n > max_objects:
        truncated = sum(max(c - max_objects, 0) for c in counts)
        n = max_objects
    boxes = torch.zeros(len(batch), n, 4, dtype=torch.float32)
    labels = torch.zeros(len(batch), n, dtype=torch.int64)
    mask = torch.zeros(len(batch), n, dtype=torch.bool)
    for i, b in enumerate(batch):
        k = min(len(b["boxes"]), n)
        boxes[i, :k] = b["boxes"][:k]
        labels[i, :k] = b["labels"][:k]
        mask[i, :k] = True
    return {"image": torch.stack([b["image"] for b in batch]), "boxes": boxes, "labels": labels, "mask": mask,
            "input_to_image": torch.stack([b["input_to_image"] for b in batch]),
            "image_size": torch.stack([b["image_size"] for b in batch]),
            "image_id": torch.tensor([b["image_id"] for b in batch], dtype=torch.int64),
            "index": torch.tensor([b["index"] for b in batch], dtype=torch.int64),
            "dropped": int(sum(b["dropped"] for b in batch)), "truncated": truncated}


def detection_collate_fn(max_objects: int | None = None):
    """A picklable collate function for DataLoader workers."""
    return partial(collate_detection, max_objects=max_objects)
