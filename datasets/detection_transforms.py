"""Whole-image detection samples: one affine per sample moves the image and its boxes' pixel edges together.

Evaluation letterboxes the image into the model input (one scale that fits it, centred). Training draws,
per sample and from the sampler's seed, a zoom around that fit (zooming in crops the image), a shift of
the view and a horizontal flip, all composed into the same 2x3 matrix (datasets/affine.py). The matrix goes
to ``cv2.warpAffine`` for the pixels and to :func:`models.bbox.affine_boxes` for the boxes, which moves
their pixel edges (``x1 - 0.5``, ``x2 + 0.5``), so a box scaled by ``f`` is ``w * f`` wide.

A box that the crop cuts is clipped to the input; one that keeps less than ``min_visible_fraction`` of its
area (or none) is dropped, and the sample counts the drops. The loader ships uint8 images and raw padded
boxes; the CenterNet targets are built on the device (models/box_codec.py).

The small-data recipe of YOLOv5/v8, off by default: with ``mosaic_prob`` a sample becomes a mosaic of four
images on a canvas twice the input, seen through the same drawn view (:meth:`DetectionTransformDataset.mosaic_view`);
with ``mixup_prob`` it is blended with another sample (:func:`mixup`); both stop for the last ``close_mosaic``
fraction of the epochs, which the sampler tells the dataset (:class:`EpochSeededSampler`). Their draws come from
a stream of their own (:meth:`DetectionTransformDataset.mix_plan`), so a sample that draws neither is exactly
the sample of a run without them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.affine import crop_matrix, invert_affine
from datasets.coco_detection import DetectionImage, DetectionImages
from datasets.image_io import BAD_IMAGE_POLICIES, read_record_image
from datasets.sampler import SeededSampler
from datasets.topdown_augment import photometric_transform
from models.bbox import affine_boxes, box_area, box_is_empty, clip_boxes
from models.errors import ConfigError

log = logging.getLogger(__name__)

MIXUP_BETA = 32.0       # mixup's weight ~ Beta(32, 32), as in YOLOv5/v8: 0.5 give or take 0.06


@dataclass
class DetectionAugment:
    """Training-time geometry of the whole-image view, plus the photometric preset."""

    flip_prob: float = 0.5
    scale_range: list[float] = field(default_factory=lambda: [0.6, 1.4])   # zoom around the letterbox fit
    shift_fraction: float = 0.2         # max shift of the view centre, as a fraction of the view's size
    min_visible_fraction: float = 0.3   # a cut box keeping less of its area than this is dropped
    # Zoom in no further than the image's largest box fits, and move the view so that it stays whole: large
    # objects are then never cut (or dropped by min_visible_fraction); the draws (and seeds) are unchanged.
    # In a mosaic, every one of its four images' largest boxes stays whole (see mosaic_view).
    keep_largest_box: bool = False
    photometric: str = "light"          # one of datasets.topdown_augment.PHOTOMETRIC_PRESETS
    mosaic_prob: float = 0.0            # a sample becomes a mosaic of itself and 3 other images
    mixup_prob: float = 0.0             # a sample is blended with another one (weight ~ Beta(32, 32))
    close_mosaic: float = 0.0           # fraction of train.epochs, at the end, without mosaic and mixup


@dataclass
class DetectionView:
    """One training (or evaluation) view before the photometric step.

    ``image`` uint8 [H, W, 3] (the model input); ``boxes`` [M, 4] float64 inclusive xyxy in input pixels;
    ``labels`` int64 [M]; ``matrix`` [2, 3] the sample's own image -> input; ``image_size`` ``(w, h)`` of
    that image as read; ``dropped``: boxes removed.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    matrix: np.ndarray
    image_size: tuple[int, int]
    dropped: int


@dataclass(frozen=True)
class MixPlan:
    """What mosaic and mixup do to one sample (the defaults: nothing), drawn by
    :meth:`DetectionTransformDataset.mix_plan`.

    ``mosaic``: the four images' indices, the sample's first, for the top-left, top-right, bottom-left and
    bottom-right tiles (empty: no mosaic); ``centre``: where the tiles meet, in canvas pixel coordinates
    (a position between pixels, like an edge); ``mixup``: ``(index, seed)`` of the sample blended in (None:
    no mixup) and ``weight`` this sample's share of the blend.
    """

    mosaic: tuple[int, ...] = ()
    centre: tuple[float, float] = (0.0, 0.0)
    mixup: tuple[int, int] | None = None
    weight: float = 1.0


class EpochSeededSampler(SeededSampler):
    """A :class:`datasets.sampler.SeededSampler` whose items carry the epoch too: ``(index, sample_seed, epoch)``.

    The order and seeds are the parent's. Loader workers hold copies of the dataset (persistent workers keep
    theirs across epochs), so the epoch that the loop sets on the sampler in the main process reaches the
    dataset only inside the items; ``augment.close_mosaic`` needs it.
    """

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        epoch = self.epoch
        for index, seed in super().__iter__():
            yield index, seed, epoch


def closed_epochs(close_mosaic: float, epochs: int) -> int:
    """How many final epochs run without mosaic and mixup: ``close_mosaic * epochs`` to the nearest epoch
    (halves up): 0.1 of 100 epochs is 10, 0.1 of 15 is 2."""
    return int(math.floor(close_mosaic * epochs + 0.5))


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
                    min_visible_fraction: float = 0.0,
                    region: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Boxes [N, 4] of the image -> boxes in the input, clipped; returns ``(boxes [M, 4], keep [N] bool)``.

    ``region`` [4] (inclusive xyxy in input pixels, may be fractional), when given, is clipped to as well:
    a mosaic tile's part of the canvas. A box is kept when it is not empty after clipping and keeps at least
    ``min_visible_fraction`` of its transformed area.
    """
    moved = affine_boxes(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), matrix)
    clipped = moved
    if region is not None:
        region = np.asarray(region, dtype=np.float64)
        clipped = np.concatenate([np.maximum(moved[:, :2], region[:2]), np.minimum(moved[:, 2:], region[2:])], 1)
    clipped = clip_boxes(clipped, int(input_size[0]), int(input_size[1]))
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


def mosaic_layout(image_sizes: Sequence[Sequence[int]], input_size: Sequence[int],
                  centre: Sequence[float]) -> np.ndarray:
    """Where a mosaic's four images go on its canvas of twice the input, ``(2 w_in, 2 h_in)`` pixels.

    Each image is scaled by its letterbox fit (as large as the input holds it) and put with one corner at
    ``centre`` (canvas pixel coordinates; a position between pixels, like a box edge): the first image
    above-left of it, the second above-right, the third below-left, the fourth below-right, so that the
    tiles never overlap; what lies beyond the canvas (``-0.5 .. 2 w_in - 0.5``) is cut. Returns the
    image -> canvas matrices [4, 2, 3] (edges move: a tile is ``w * f`` wide, its edge at ``centre``).
    """
    cx, cy = float(centre[0]), float(centre[1])
    matrices = []
    for k, (w, h) in enumerate(image_sizes):
        f = letterbox_scale((w, h), input_size)
        left = cx if k % 2 else cx - w * f                 # the tile's left edge: right tiles start at the centre
        top = cy if k >= 2 else cy - h * f
        matrices.append([[f, 0.0, left + 0.5 * f], [0.0, f, top + 0.5 * f]])   # x -> left + (x + 0.5) f
    return np.array(matrices, dtype=np.float64)


def keep_boxes_on_canvas(image_sizes: Sequence[Sequence[int]], input_size: Sequence[int], centre: Sequence[float],
                         boxes: Sequence[np.ndarray | None]) -> np.ndarray:
    """The mosaic ``centre`` [2] moved as little as possible so that no box of ``boxes`` (one inclusive xyxy
    box in image pixels per tile of :func:`mosaic_layout`, or None) reaches beyond the canvas.

    A left tile ends at the centre, so its box's left edge stays on the canvas while ``cx >= tile width -
    box's left edge offset - 0.5``; a right tile starts there, so ``cx <= 2 w_in - 0.5 - box's right edge
    offset``. A tile is at most ``w_in`` wide, so every bound lets ``cx = w_in - 0.5`` (the canvas middle)
    through: the bounds always meet, and the clamped centre stays in the range it was drawn from.
    """
    centre = np.asarray(centre, dtype=np.float64)
    canvas = 2 * np.asarray(input_size, dtype=np.float64)
    low, high = np.full(2, -np.inf), np.full(2, np.inf)
    for k, (size, box) in enumerate(zip(image_sizes, boxes)):
        if box is None:
            continue
        f = letterbox_scale(size, input_size)
        tile = np.asarray(size, np.float64) * f
        near = np.array([box[0], box[1]]) * f                 # the box's edges from the tile's near edges
        far = (np.array([box[2], box[3]]) + 1) * f
        after = np.array([k % 2 == 1, k >= 2])                # the tile lies right of / below the centre
        low = np.where(after, low, np.maximum(low, tile - near - 0.5))
        high = np.where(after, np.minimum(high, canvas - 0.5 - far), high)
    return np.minimum(np.maximum(centre, low), high)


def mixup(a: DetectionView, b: DetectionView, weight: float) -> DetectionView:
    """``a`` blended with ``b``: the image ``weight * a + (1 - weight) * b`` rounded to the nearest uint8
    (computed in float64), the boxes and labels of both (``a``'s first), the drops of both and ``a``'s matrix."""
    w = float(weight)
    image = np.rint(a.image.astype(np.float64) * w + b.image.astype(np.float64) * (1.0 - w))
    return DetectionView(np.clip(image, 0, 255).astype(np.uint8), np.concatenate([a.boxes, b.boxes]),
                         np.concatenate([a.labels, b.labels]), a.matrix, a.image_size, a.dropped + b.dropped)


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The 2x3 affine ``outer`` after ``inner``."""
    return outer[:, :2] @ inner + np.array([[0.0, 0.0, outer[0, 2]], [0.0, 0.0, outer[1, 2]]])


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
        epochs: the run's number of epochs; needed (only) by ``augment.close_mosaic``.

    ``dataset[i]``, ``dataset[(i, seed)]`` (from :class:`datasets.sampler.SeededSampler`) or
    ``dataset[(i, seed, epoch)]`` (from :class:`EpochSeededSampler`; without the epoch, mosaic and mixup are
    never closed) returns a dict: ``image`` uint8 [3, H, W]; ``boxes`` float32 [n, 4] inclusive xyxy in input
    pixels; ``labels`` int64 [n]; ``input_to_image`` float32 [2, 3] (of the sample's own image, also in a
    mosaic); ``image_size`` int64 [2] (w, h); ``image_id``; ``index``; ``dropped`` (boxes the crop removed,
    of every image in the sample).
    """

    def __init__(self, images: Sequence[DetectionImage], input_size: Sequence[int], train: bool = False,
                 augment: DetectionAugment | None = None, on_bad_image: str = "error", epochs: int | None = None):
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ConfigError(f"on_bad_image={on_bad_image!r} is not one of {BAD_IMAGE_POLICIES}")
        self.images = DetectionImages.from_images(images)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.train = train
        self.augment = augment or DetectionAugment()
        aug = self.augment
        if len(aug.scale_range) != 2 or not 0 < aug.scale_range[0] <= aug.scale_range[1]:
            raise ConfigError(f"augment.scale_range must be [low, high] with 0 < low <= high, got "
                             f"{list(aug.scale_range)}")
        mixing = train and (aug.mosaic_prob > 0 or aug.mixup_prob > 0)
        if mixing and aug.close_mosaic > 0 and epochs is None:
            raise ConfigError("augment.close_mosaic is a fraction of the epochs: give the dataset epochs=")
        # Epochs from this one on run without mosaic and mixup (None: never closed).
        self.close_epoch = None if epochs is None else epochs - closed_epochs(aug.close_mosaic, epochs)
        self.mixing = mixing
        self.on_bad_image = on_bad_image
        self.photometric = photometric_transform(aug.photometric if train else "none")
        self._size_warned: set[int] = set()

    def __len__(self) -> int:
        return len(self.images)

    def draw_view(self, rng: np.random.Generator) -> tuple[float, np.ndarray, bool]:
        """The training view's ``(zoom, shift [2], flip)``, drawn from the sample's ``rng`` in this order."""
        aug = self.augment
        zoom = float(np.exp(rng.uniform(np.log(aug.scale_range[0]), np.log(aug.scale_range[1]))))
        shift = rng.uniform(-aug.shift_fraction, aug.shift_fraction, size=2)
        flip = bool(rng.random() < aug.flip_prob)
        return zoom, shift, flip

    def sample_matrix(self, image_size: Sequence[int], rng: np.random.Generator,
                      boxes: np.ndarray | None = None) -> np.ndarray:
        """The image -> input matrix of one sample (the letterbox at evaluation).

        ``boxes`` [N, 4] (image pixels, inclusive xyxy) are used only with ``augment.keep_largest_box``.
        """
        if not self.train:
            return view_matrix(image_size, self.input_size)
        return self._image_matrix(image_size, boxes, *self.draw_view(rng))

    def _image_matrix(self, image_size: Sequence[int], boxes: np.ndarray | None, zoom: float, shift: np.ndarray,
                      flip: bool) -> np.ndarray:
        if self.augment.keep_largest_box and boxes is not None and len(boxes):
            zoom, shift = keep_box_in_view(image_size, self.input_size, zoom, shift,
                                           boxes[int(np.argmax(box_area(boxes)))])
        return view_matrix(image_size, self.input_size, zoom, shift, flip)

    def mix_plan(self, index: int, seed: int | None, epoch: int | None = None, mixup: bool = True) -> MixPlan:
        """Whether sample ``index`` with ``seed`` at ``epoch`` is a mosaic, and with whom; whether (and with
        which sample and weight) it is blended. ``mixup=False`` for the sample blended in (no blend of blends).

        The draws come from a child stream of ``seed`` (``SeedSequence(seed).spawn``), not from the sample's
        own generator: the view, flip and photometric draws of a sample stay the same whatever this draws, so
        a sample without mosaic and mixup is exactly the sample of a run without them. The mosaic centre is
        uniform in the middle half of the canvas (YOLOv5/v8); the partners are any images, the sample too.
        """
        if not (self.mixing and (epoch is None or self.close_epoch is None or epoch < self.close_epoch)):
            return MixPlan()
        aug, n = self.augment, len(self)
        rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
        mosaic, centre = (), (0.0, 0.0)
        if rng.random() < aug.mosaic_prob:
            mosaic = (int(index), *(int(i) for i in rng.integers(n, size=3)))
            w, h = self.input_size
            c = rng.uniform([w / 2 - 0.5, h / 2 - 0.5], [1.5 * w - 0.5, 1.5 * h - 0.5])
            centre = (float(c[0]), float(c[1]))
        if not (mixup and rng.random() < aug.mixup_prob):
            return MixPlan(mosaic, centre)
        other = (int(rng.integers(n)), int(rng.integers(2**31)))
        return MixPlan(mosaic, centre, other, float(rng.beta(MIXUP_BETA, MIXUP_BETA)))

    def _read(self, index: int) -> np.ndarray | None:
        rec = self.images[index]
        return read_record_image(rec.image_path, rec.image_id, rec.image_size, self.on_bad_image, self._size_warned,
                                 "boxes")

    def mosaic_view(self, indices: Sequence[int], centre: Sequence[float], zoom: float, shift: Sequence[float],
                    flip: bool) -> DetectionView | None:
        """The mosaic of the images ``indices`` (4, the sample's first) meeting at ``centre`` on a canvas of
        ``(2 w_in, 2 h_in)`` (:func:`mosaic_layout`), seen through the view ``(zoom, shift, flip)`` of
        :meth:`draw_view` taken on the canvas, where ``zoom = 1`` shows canvas pixels at their own size (the
        canvas's letterbox fit times 2), so the drawn zooms mean what they mean for a plain sample; None when
        an image cannot be read.

        Each image goes straight to the input through its canvas matrix followed by the view (one resampling,
        not two), into the input pixels whose centres fall in its quadrant of the canvas; the rest (beyond the
        tiles or the canvas) is black, as the letterbox padding. Its boxes move through the same matrix and
        are clipped to the quadrant (the canvas) and to the input; ``min_visible_fraction`` drops them as in a
        plain view, measured against the whole transformed box.

        ``keep_largest_box``: no image's largest box is cut, by the canvas or by the view. The centre is first
        clamped so that each of these boxes lies on the canvas (:func:`keep_boxes_on_canvas`), then the view
        is kept around the box that encloses all of them (:func:`keep_box_in_view` on the canvas: the zoom
        capped where it fits, the view moved over it). Both always succeed (zooming out enough shows the whole
        canvas), so there is no fallback; large objects make the mosaic zoom out instead.
        """
        images = [self._read(i) for i in indices]
        if any(image is None for image in images):
            return None
        recs = [self.images[i] for i in indices]
        sizes = [(image.shape[1], image.shape[0]) for image in images]
        canvas = (2 * self.input_size[0], 2 * self.input_size[1])
        zoom, shift = 2.0 * zoom, np.asarray(shift, np.float64)
        largest = [rec.boxes[int(np.argmax(box_area(rec.boxes)))] if len(rec.boxes) else None for rec in recs]
        keep_largest = self.augment.keep_largest_box and any(b is not None for b in largest)
        if keep_largest:
            centre = keep_boxes_on_canvas(sizes, self.input_size, centre, largest)
        tiles = mosaic_layout(sizes, self.input_size, centre)
        if keep_largest:
            placed = np.concatenate([affine_boxes(b[None], m) for b, m in zip(largest, tiles) if b is not None])
            union = np.concatenate([placed[:, :2].min(0), placed[:, 2:].max(0)])
            zoom, shift = keep_box_in_view(canvas, self.input_size, zoom, shift, union)
        view = view_matrix(canvas, self.input_size, zoom, shift, flip)
        # The canvas's dividing lines (its edges and the centre) in input coordinates, computed once so that
        # neighbouring quadrants share their boundary exactly (the view neither rotates nor shears).
        xs = view[0, 0] * np.array([-0.5, centre[0], canvas[0] - 0.5]) + view[0, 2]
        ys = view[1, 1] * np.array([-0.5, centre[1], canvas[1] - 0.5]) + view[1, 2]
        w_in, h_in = self.input_size
        out = np.zeros((h_in, w_in, 3), np.uint8)
        boxes, labels, dropped = [], [], 0
        min_visible = self.augment.min_visible_fraction
        for k, (rec, image, tile) in enumerate(zip(recs, images, tiles)):
            x_lo, x_hi = sorted(xs[[k % 2, k % 2 + 1]])              # the quadrant's edges in the input
            y_lo, y_hi = sorted(ys[[k // 2, k // 2 + 1]])
            matrix = _compose(view, tile)
            kept, keep = transform_boxes(rec.boxes, matrix, self.input_size, min_visible,
                                         region=np.array([x_lo + 0.5, y_lo + 0.5, x_hi - 0.5, y_hi - 0.5]))
            boxes.append(kept)
            labels.append(rec.labels[keep].astype(np.int64))
            dropped += int((~keep).sum())
            # The input pixels whose centres u satisfy x_lo <= u < x_hi (half open: a pixel on a boundary
            # belongs to exactly one quadrant), warped alone (the matrix moved to the block's corner).
            x0, x1 = (int(np.clip(math.ceil(e), 0, w_in)) for e in (x_lo, x_hi))
            y0, y1 = (int(np.clip(math.ceil(e), 0, h_in)) for e in (y_lo, y_hi))
            if x1 > x0 and y1 > y0:
                block = matrix - np.array([[0.0, 0.0, x0], [0.0, 0.0, y0]])
                out[y0:y1, x0:x1] = cv2.warpAffine(image, block, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                                                   borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        return DetectionView(out, np.concatenate(boxes), np.concatenate(labels), _compose(view, tiles[0]), sizes[0],
                             dropped)

    def _view(self, index: int, rng: np.random.Generator, plan: MixPlan) -> DetectionView | None:
        """The sample ``index``'s view, drawn from ``rng``: its mosaic when ``plan`` has one, else plain."""
        zoom, shift, flip = self.draw_view(rng) if self.train else (1.0, np.zeros(2), False)
        if plan.mosaic:
            view = self.mosaic_view(plan.mosaic, plan.centre, zoom, shift, flip)
            if view is not None:
                return view       # else an image could not be read (on_bad_image=skip): the plain view
        image = self._read(index)
        if image is None:
            return None
        rec = self.images[index]
        size = (image.shape[1], image.shape[0])
        if self.train:
            matrix = self._image_matrix(size, rec.boxes, zoom, shift, flip)
        else:
            matrix = view_matrix(size, self.input_size)
        warped = cv2.warpAffine(image, matrix, self.input_size, flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        min_visible = self.augment.min_visible_fraction if self.train else 0.0
        boxes, keep = transform_boxes(rec.boxes, matrix, self.input_size, min_visible)
        return DetectionView(warped, boxes, rec.labels[keep].astype(np.int64), matrix, size, int((~keep).sum()))

    def __getitem__(self, item) -> dict | None:
        # i, (i, seed) or (i, seed, epoch): a missing seed draws afresh, a missing epoch never closes mosaic.
        index, seed, epoch = (tuple(item) + (None,))[:3] if isinstance(item, tuple) else (item, None, None)
        rng = np.random.default_rng(seed)
        plan = self.mix_plan(index, seed, epoch)
        view = self._view(index, rng, plan)
        if view is None:
            return None
        if plan.mixup is not None:
            other_index, other_seed = plan.mixup
            other = self._view(other_index, np.random.default_rng(other_seed),
                               self.mix_plan(other_index, other_seed, epoch, mixup=False))
            if other is not None:
                view = mixup(view, other, plan.weight)
        image = view.image
        if self.train and self.augment.photometric != "none":
            # After the blend: one photometric change for the whole sample, seeded as without mixing.
            self.photometric.set_random_seed(int(rng.integers(2**31)))
            image = self.photometric(image=image)["image"]
        rec = self.images[index]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "boxes": torch.from_numpy(view.boxes.astype(np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(view.labels),
            "input_to_image": torch.from_numpy(invert_affine(view.matrix).astype(np.float32)),
            "image_size": torch.tensor(view.image_size, dtype=torch.int64),
            "image_id": rec.image_id,
            "index": index,
            "dropped": view.dropped,
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
