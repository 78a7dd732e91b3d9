"""Boxes in the inclusive-pixel ``+1`` convention, and conversions to and from COCO.

The one place in the repository that holds box formulas.

Convention (see docs/conventions.md):

* A box ``[x1, y1, x2, y2]`` names the first and last pixel it covers, both included. Pixel ``i`` is
  centred at coordinate ``i``, so the box's pixel *edges* are ``x1 - 0.5`` and ``x2 + 0.5`` and its width
  is ``w = x2 - x1 + 1`` (pixels 0..9 are 10 pixels). A one-pixel box ``[0, 0, 0, 0]`` has area 1.
* A box is empty when ``x2 < x1`` or ``y2 < y1``; its area is then 0.
* COCO's ``[x, y, w, h]`` converts to ``[x, y, x + w - 1, y + h - 1]`` and back, exactly on integers.
* Geometric transforms move the edges, not the corner pixel centres: scaling a box by ``f`` gives width
  ``w * f``. :func:`scale_boxes` does that.

Every function accepts a ``torch.Tensor`` or a ``numpy.ndarray`` of shape ``[..., 4]`` and returns the
same type, so the data pipeline (numpy) and the models (tensors on any device) share these formulas. The
module imports nothing of ours (a leaf), so ``datasets`` and ``engine`` may use it freely.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision

Array = torch.Tensor | np.ndarray

# Default padding of a box before it is cropped for a top-down keypoint model (HRNet, MMPose use 1.25).
DEFAULT_CROP_PADDING = 1.25


def _stack(parts: list, like: Array) -> Array:
    if isinstance(like, torch.Tensor):
        return torch.stack(parts, dim=-1)
    return np.stack(parts, axis=-1)


def _as_float(boxes: Array) -> Array:
    if isinstance(boxes, torch.Tensor):
        return boxes if boxes.is_floating_point() else boxes.float()
    boxes = np.asarray(boxes)
    return boxes if np.issubdtype(boxes.dtype, np.floating) else boxes.astype(np.float64)


def _check_last_dim(boxes: Array, name: str = "boxes") -> None:
    if boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape [..., 4], got {tuple(boxes.shape)}")


def coco_xywh_to_xyxy(boxes: Array) -> Array:
    """COCO ``[x, y, w, h]`` -> inclusive ``[x1, y1, x2, y2]`` with ``x2 = x + w - 1``.

    boxes: [..., 4]. Returns [..., 4] of the same type and dtype (exact on integers).
    """
    _check_last_dim(boxes)
    x, y, w, h = (boxes[..., i] for i in range(4))
    return _stack([x, y, x + w - 1, y + h - 1], boxes)


def xyxy_to_coco_xywh(boxes: Array) -> Array:
    """Inclusive ``[x1, y1, x2, y2]`` -> COCO ``[x, y, w, h]`` with ``w = x2 - x1 + 1``.

    boxes: [..., 4]. Returns [..., 4] of the same type and dtype (exact on integers).
    """
    _check_last_dim(boxes)
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    return _stack([x1, y1, x2 - x1 + 1, y2 - y1 + 1], boxes)


def box_width_height(boxes: Array) -> tuple[Array, Array]:
    """Width and height ``(x2 - x1 + 1, y2 - y1 + 1)`` of [..., 4] boxes; may be <= 0 for empty boxes."""
    _check_last_dim(boxes)
    return boxes[..., 2] - boxes[..., 0] + 1, boxes[..., 3] - boxes[..., 1] + 1


def box_area(boxes: Array) -> Array:
    """Area of inclusive xyxy boxes, [..., 4] -> [...]; 0 for empty boxes (``x2 < x1`` or ``y2 < y1``)."""
    w, h = box_width_height(boxes)
    if isinstance(boxes, torch.Tensor):
        return w.clamp(min=0) * h.clamp(min=0)
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def box_is_empty(boxes: Array) -> Array:
    """True where ``x2 < x1`` or ``y2 < y1``. boxes: [..., 4] -> bool [...]."""
    _check_last_dim(boxes)
    return (boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])


def box_center(boxes: Array) -> Array:
    """Centre ``((x1 + x2) / 2, (y1 + y2) / 2)``; [..., 4] -> [..., 2]."""
    boxes = _as_float(boxes)
    cx = (boxes[..., 0] + boxes[..., 2]) / 2
    cy = (boxes[..., 1] + boxes[..., 3]) / 2
    return _stack([cx, cy], boxes)


def center_size_to_xyxy(center: Array, size: Array) -> Array:
    """Centre ``(cx, cy)`` and pixel size ``(w, h)`` -> inclusive xyxy: ``x1 = cx - (w - 1) / 2``.

    center, size: [..., 2]. Returns [..., 4].
    """
    center, size = _as_float(center), _as_float(size)
    half_w, half_h = (size[..., 0] - 1) / 2, (size[..., 1] - 1) / 2
    return _stack([center[..., 0] - half_w, center[..., 1] - half_h,
                   center[..., 0] + half_w, center[..., 1] + half_h], center)


def box_iou(a: Array, b: Array) -> Array:
    """Pairwise IoU of inclusive xyxy boxes.

    a: [N, 4], b: [M, 4]. Returns [N, M]; 0 where the union is empty.
    Intersection widths use the +1 convention: boxes [0, 0, 9, 9] and [9, 9, 18, 18] share one pixel.
    """
    _check_last_dim(a, "a")
    _check_last_dim(b, "b")
    a, b = _as_float(a), _as_float(b)
    lib_min, lib_max = (torch.minimum, torch.maximum) if isinstance(a, torch.Tensor) else (np.minimum, np.maximum)
    x1 = lib_max(a[:, None, 0], b[None, :, 0])
    y1 = lib_max(a[:, None, 1], b[None, :, 1])
    x2 = lib_min(a[:, None, 2], b[None, :, 2])
    y2 = lib_min(a[:, None, 3], b[None, :, 3])
    inter = box_area(_stack([x1, y1, x2, y2], a))
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    if isinstance(a, torch.Tensor):
        return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def clip_boxes(boxes: Array, width: int, height: int) -> Array:
    """Clip inclusive xyxy boxes to an image of ``width`` x ``height`` pixels (pixels 0..W-1, 0..H-1).

    A box entirely outside becomes empty (``x2 < x1`` or ``y2 < y1``); check with :func:`box_is_empty`.
    """
    _check_last_dim(boxes)
    boxes = _as_float(boxes)
    if isinstance(boxes, torch.Tensor):
        x1 = boxes[..., 0].clamp(min=0)
        y1 = boxes[..., 1].clamp(min=0)
        x2 = boxes[..., 2].clamp(max=width - 1)
        y2 = boxes[..., 3].clamp(max=height - 1)
    else:
        x1 = np.maximum(boxes[..., 0], 0)
        y1 = np.maximum(boxes[..., 1], 0)
        x2 = np.minimum(boxes[..., 2], width - 1)
        y2 = np.minimum(boxes[..., 3], height - 1)
    return _stack([x1, y1, x2, y2], boxes)


def scale_boxes(boxes: Array, fx: float, fy: float) -> Array:
    """Scale boxes by an image resize of ``(fx, fy)``, moving pixel edges (``x1 - 0.5``, ``x2 + 0.5``).

    A pixel-index coordinate maps as ``x -> (x + 0.5) * f - 0.5``; applied to the edges, the width becomes
    ``w * f`` exactly (not ``(w - 1) * f + 1``).
    """
    _check_last_dim(boxes)
    boxes = _as_float(boxes)
    # Left edge x1 - 0.5 maps to x1 * f - 0.5, so the first covered pixel is centred at x1 * f; right edge
    # x2 + 0.5 maps to (x2 + 1) * f - 0.5, so the last covered pixel is centred at (x2 + 1) * f - 1.
    return _stack([boxes[..., 0] * fx, boxes[..., 1] * fy,
                   (boxes[..., 2] + 1) * fx - 1, (boxes[..., 3] + 1) * fy - 1], boxes)


def flip_boxes_horizontal(boxes: Array, image_width: int) -> Array:
    """Mirror inclusive xyxy boxes in an image of ``image_width`` pixels: ``x -> W - 1 - x``."""
    _check_last_dim(boxes)
    return _stack([image_width - 1 - boxes[..., 2], boxes[..., 1],
                   image_width - 1 - boxes[..., 0], boxes[..., 3]], boxes)


def to_torchvision_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """Inclusive xyxy -> the continuous ``x2 + 1`` boxes torchvision.ops expects.

    torchvision computes widths as ``x2 - x1``; shifting x2 and y2 by +1 makes its areas and
    intersections equal ours, so its IoU (and NMS) equals the +1 IoU exactly.
    """
    _check_last_dim(boxes)
    shift = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=boxes.dtype, device=boxes.device)
    return boxes + shift


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Non-maximum suppression with the +1 IoU, through ``torchvision.ops.nms``.

    boxes: [N, 4] inclusive xyxy, scores: [N]. Returns int64 indices of kept boxes, by decreasing score.
    """
    return torchvision.ops.nms(to_torchvision_boxes(_as_float(boxes)), scores, iou_threshold)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor,
                iou_threshold: float) -> torch.Tensor:
    """Class-wise NMS (boxes of different ``classes`` never suppress each other), +1 IoU.

    boxes: [N, 4] inclusive xyxy, scores: [N], classes: [N] int. Returns kept indices by decreasing score.
    """
    return torchvision.ops.batched_nms(to_torchvision_boxes(_as_float(boxes)), scores, classes, iou_threshold)


def box_to_center_size(box: Array, aspect_ratio: float, padding: float = DEFAULT_CROP_PADDING) -> tuple:
    """The crop a top-down model takes around a box: centre and edge-to-edge size at the model's aspect.

    box: [4] inclusive xyxy. aspect_ratio: the model input's ``width / height``.
    Returns ``(center [2], size [2])`` as float64 numpy arrays: ``center`` is the box centre
    ``((x1 + x2) / 2, (y1 + y2) / 2)`` and ``size`` the crop's extent in image pixels (edge to edge): the
    box's ``(w, h)`` grown along one axis to ``aspect_ratio``, then multiplied by ``padding``.
    """
    box = np.asarray(box, dtype=np.float64)
    _check_last_dim(box, "box")
    if box_is_empty(box):
        raise ValueError(f"cannot crop an empty box {box.tolist()} (x2 < x1 or y2 < y1)")
    if aspect_ratio <= 0 or padding <= 0:
        raise ValueError(f"aspect_ratio and padding must be > 0, got {aspect_ratio} and {padding}")
    w, h = box_width_height(box)
    center = box_center(box)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    else:
        w = h * aspect_ratio
    return center, np.array([w, h], dtype=np.float64) * padding


def affine_boxes(boxes: Array, matrix: Array) -> Array:
    """Move inclusive xyxy boxes by a 2x3 affine matrix through their pixel edges.

    The matrix acts on pixel-index coordinates (the convention of ``cv2.warpAffine`` and
    ``datasets.affine``). The four corners of the box's edge rectangle (``x1 - 0.5 .. x2 + 0.5``) are
    mapped and the enclosing edge rectangle is turned back into inclusive pixels. For a scale by ``f``
    the width becomes ``w * f`` exactly (as :func:`scale_boxes`), a mirror ``x -> W - 1 - x`` gives
    :func:`flip_boxes_horizontal`; under a rotation the result is the enclosing axis-aligned box.

    boxes: [..., 4]; matrix: [2, 3], or [B, 2, 3] with boxes [B, N, 4]. Returns [..., 4] of the boxes' type.
    """
    _check_last_dim(boxes)
    boxes = _as_float(boxes)
    if isinstance(boxes, torch.Tensor):
        m = torch.as_tensor(matrix, dtype=boxes.dtype, device=boxes.device)
    else:
        m = np.asarray(matrix, dtype=boxes.dtype)
    if m.shape[-2:] != (2, 3):
        raise ValueError(f"matrix must be [2, 3] or [B, 2, 3], got {tuple(m.shape)}")
    if m.ndim == 3:
        m = m[:, None]            # [B, 1, 2, 3]: one matrix per image, broadcast over its N boxes
    ex = [boxes[..., 0] - 0.5, boxes[..., 2] + 0.5]
    ey = [boxes[..., 1] - 0.5, boxes[..., 3] + 0.5]
    xs = [m[..., 0, 0] * x + m[..., 0, 1] * y + m[..., 0, 2] for x in ex for y in ey]
    ys = [m[..., 1, 0] * x + m[..., 1, 1] * y + m[..., 1, 2] for x in ex for y in ey]
    if isinstance(boxes, torch.Tensor):
        xs, ys = torch.stack(xs, -1), torch.stack(ys, -1)
        lo_x, hi_x, lo_y, hi_y = xs.amin(-1), xs.amax(-1), ys.amin(-1), ys.amax(-1)
    else:
        xs, ys = np.stack(xs, -1), np.stack(ys, -1)
        lo_x, hi_x, lo_y, hi_y = xs.min(-1), xs.max(-1), ys.min(-1), ys.max(-1)
    return _stack([lo_x + 0.5, lo_y + 0.5, hi_x - 0.5, hi_y - 0.5], boxes)


def aligned_box_giou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Generalised IoU (Rezatofighi et al., 2019) of matching pairs of inclusive xyxy boxes, +1 widths.

    a, b: [..., 4] tensors. Returns [...] in [-1, 1]: ``IoU - (hull - union) / hull``, where ``hull`` is
    the area of the smallest box enclosing both. Equals ``torchvision.ops.generalized_box_iou`` on the
    ``x2 + 1`` boxes. ``eps`` keeps the divisions finite for empty boxes.
    """
    _check_last_dim(a, "a")
    _check_last_dim(b, "b")
    inter = box_area(torch.stack([torch.maximum(a[..., 0], b[..., 0]), torch.maximum(a[..., 1], b[..., 1]),
                                  torch.minimum(a[..., 2], b[..., 2]), torch.minimum(a[..., 3], b[..., 3])], -1))
    union = box_area(a) + box_area(b) - inter
    hull = box_area(torch.stack([torch.minimum(a[..., 0], b[..., 0]), torch.minimum(a[..., 1], b[..., 1]),
                                 torch.maximum(a[..., 2], b[..., 2]), torch.maximum(a[..., 3], b[..., 3])], -1))
    iou = inter / union.clamp(min=eps)
    return iou - (hull - union) / hull.clamp(min=eps)


def keypoints_tight_box(points: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Inclusive xyxy boxes [N, 4] of keypoints [N, K, 2]: the box whose COCO extent spans the points
    (``x1 = min x``, ``w = max x - min x``, so ``x2 = max x - 1``; how landmark sets such as 300-W write their
    boxes). Rows whose points span less than 2 pixels on a side, or are not finite, keep ``fallback`` [N, 4]."""
    lo, hi = points.min(axis=1), points.max(axis=1)
    boxes = np.concatenate([lo, hi - 1], axis=1)
    ok = np.isfinite(boxes).all(axis=1) & ((hi - lo) >= 2).all(axis=1)
    return np.where(ok[:, None], boxes, fallback)
