"""Affine geometry of top-down crops: one 2x3 matrix moves both the pixels and the keypoints.

Convention (docs/conventions.md): pixel ``i`` is centred at coordinate ``i``. ``cv2.warpAffine`` uses the
same convention (it samples output pixel ``(u, v)`` at the inverse-mapped point of its centre), so the
matrix built here goes unchanged to ``cv2.warpAffine`` and to :func:`apply_affine`.

The crop maps the crop centre to the output centre ``((w_out - 1) / 2, (h_out - 1) / 2)`` and the crop's
edge-to-edge extent ``size`` to ``w_out`` x ``h_out`` pixels.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from models.bbox import box_to_center_size


def crop_matrix(center, size, output_size, rotation_deg: float = 0.0, flip: bool = False) -> np.ndarray:
    """Image -> crop affine matrix [2, 3] (float64).

    Args:
        center: ``(cx, cy)`` crop centre in image pixel coordinates.
        size: ``(w, h)`` crop extent in image pixels, edge to edge.
        output_size: ``(w_out, h_out)`` of the crop in pixels.
        rotation_deg: counter-clockwise rotation of the crop window's content, in degrees (the image is
            rotated by this angle about ``center`` before cropping).
        flip: mirror the crop horizontally after everything else (``u -> w_out - 1 - u``).
    """
    cx, cy = float(center[0]), float(center[1])
    w, h = float(size[0]), float(size[1])
    w_out, h_out = int(output_size[0]), int(output_size[1])
    if w <= 0 or h <= 0:
        raise ValueError(f"crop size must be positive, got {(w, h)}")
    sx, sy = w_out / w, h_out / h
    a = math.radians(rotation_deg)
    cos, sin = math.cos(a), math.sin(a)
    # y points down in images, so a counter-clockwise rotation on screen is [[cos, sin], [-sin, cos]].
    linear = np.array([[sx * cos, sx * sin], [-sy * sin, sy * cos]])
    out_center = np.array([(w_out - 1) / 2, (h_out - 1) / 2])
    translation = out_center - linear @ np.array([cx, cy])
    m = np.concatenate([linear, translation[:, None]], axis=1)
    if flip:
        m = np.array([[-1.0, 0.0, w_out - 1], [0.0, 1.0, 0.0]]) @ np.vstack([m, [0.0, 0.0, 1.0]])
    return m


def invert_affine(m: np.ndarray) -> np.ndarray:
    """Inverse of a [2, 3] affine matrix (float64)."""
    full = np.vstack([np.asarray(m, dtype=np.float64), [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def apply_affine(points, m):
    """Apply [..., 2, 3] affine matrices to points [..., N, 2]; numpy or torch (batched on its device).

    Returns points of the same type and shape.
    """
    if isinstance(points, torch.Tensor):
        m = torch.as_tensor(m, dtype=points.dtype, device=points.device)
        return points @ m[..., :2].transpose(-1, -2) + m[..., None, :, 2]
    m = np.asarray(m)
    return points @ np.swapaxes(m[..., :2], -1, -2) + m[..., None, :, 2]


def crop_box(image: np.ndarray, box, output_size, padding: float) -> tuple[np.ndarray, np.ndarray]:
    """The top-down crop of one inclusive-xyxy ``box`` of an RGB uint8 image [H, W, 3], as training and
    evaluation take it: the box padded to the output's aspect (``models.bbox.box_to_center_size``), warped to
    ``output_size`` (w, h) with zeros outside the image. Returns ``(crop [h, w, 3] uint8, crop_to_image [2, 3])``."""
    w_out, h_out = int(output_size[0]), int(output_size[1])
    center, size = box_to_center_size(box, w_out / h_out, padding)
    m = crop_matrix(center, size, (w_out, h_out))
    crop = cv2.warpAffine(image, m, (w_out, h_out), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(0, 0, 0))
    return crop, invert_affine(m)
