"""Reading images from disk, and the one report for an image that cannot be read (all datasets and tools).

Images come back as RGB uint8 ``[H, W, 3]`` on the stored pixel grid (EXIF orientation ignored, as the
annotations' width/height refer to the stored grid).
"""

from __future__ import annotations

import logging
import warnings

import cv2
import numpy as np

log = logging.getLogger(__name__)
BAD_IMAGE_POLICIES = ("error", "skip")


def read_image_rgb(path: str) -> np.ndarray | None:
    """RGB uint8 [H, W, 3], or None when the file is missing or cannot be decoded.

    EXIF orientation is ignored: annotations refer to the stored pixel grid (as the json's width/height do).
    """
    img = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        return None
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def report_unreadable_image(description: str, on_bad_image: str) -> None:
    """A missing or corrupt image: raise (``data.on_bad_image=error``) or warn that it is skipped (``skip``).

    ``description`` names the file and what is known of it, e.g. ``"a.jpg (missing or corrupt; image_id 3)"``.
    """
    msg = f"cannot read image {description}"
    if on_bad_image == "error":
        raise OSError(msg + "; set data.on_bad_image=skip to skip such files")
    warnings.warn(msg + "; skipped", stacklevel=3)


def read_record_image(path: str, image_id, recorded_size: tuple[int, int], on_bad_image: str, warned: set,
                      what: str) -> np.ndarray | None:
    """The RGB image of an annotation record, or None (reported as :func:`report_unreadable_image` says) when
    it cannot be read. An image whose size differs from the record's ``(width, height)`` is warned about once
    per image id (``warned`` keeps the ids), naming ``what`` (boxes, keypoints) may not match it."""
    image = read_image_rgb(path)
    if image is None:
        report_unreadable_image(f"{path} (missing or corrupt; image_id {image_id})", on_bad_image)
        return None
    size = (image.shape[1], image.shape[0])
    if size != tuple(recorded_size) and image_id not in warned:
        warned.add(image_id)
        log.warning("%s is %dx%d but its json record says %dx%d (EXIF rotation?); %s may not match", path, *size,
                    *recorded_size, what)
    return image
