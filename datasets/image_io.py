"""Reading images from disk, and the one report for an image that cannot be read (all datasets and tools).

Images come back as RGB uint8 ``[H, W, 3]`` on the stored pixel grid (EXIF orientation ignored, as the
annotations' width/height refer to the stored grid).

A truncated file is unreadable too. libjpeg decodes a JPEG that ends early without failing: the missing
rows come out grey and the only trace is a "Premature end of JPEG file" line on stderr, without a file
name. So every read also checks that the file ends the way its format says it must (a JPEG's end-of-image
marker ``FF D9``, a PNG's ``IEND`` chunk); that costs two small reads, not a second decode.
"""

from __future__ import annotations

import logging
import os
import warnings

import cv2
import numpy as np

from models.errors import DataError

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("error", "skip")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")   # what the readers list
_TAIL_BYTES = 4096        # encoders may pad a few bytes after the end marker; EXIF thumbnails sit at the start


def truncation_problem(path: str) -> str | None:
    """Why the file at ``path`` is cut short, or None (complete, or a format without an end marker).

    JPEG: the end-of-image marker ``FF D9`` must be in the last few KiB (inside compressed data ``FF`` is
    always followed by ``00`` or a restart marker, so the pair cannot appear by chance). PNG: the ``IEND``
    chunk must be there.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(max(0, size - _TAIL_BYTES))
            tail = f.read()
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if head[:3] == b"\xff\xd8\xff":
        if b"\xff\xd9" not in tail:
            return f"truncated JPEG: no end-of-image marker (the file ends early, {size} bytes)"
    elif head == b"\x89PNG\r\n\x1a\n":
        if b"IEND" not in tail:
            return f"truncated PNG: no IEND chunk (the file ends early, {size} bytes)"
    return None


def image_problem(path: str) -> str | None:
    """What makes ``path`` unreadable, in words (``"missing"``, ``"not a decodable image"``, ``"truncated
    JPEG ..."``), or None when it can be read. For the message of :func:`report_unreadable_image`."""
    if not os.path.isfile(path):
        return "missing" if not os.path.lexists(path) else "a broken link or not a file"
    problem = truncation_problem(path)
    if problem:
        return problem
    return None if cv2.imread(path, cv2.IMREAD_REDUCED_GRAYSCALE_8) is not None else "not a decodable image"


def read_image_rgb(path: str) -> np.ndarray | None:
    """RGB uint8 [H, W, 3], or None when the file is missing, cannot be decoded, or is truncated.

    EXIF orientation is ignored: annotations refer to the stored pixel grid (as the json's width/height do).
    """
    img = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None or truncation_problem(path):
        return None
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def stored_image_size(path: str) -> tuple[int, int] | None:
    """``(width, height)`` of the stored pixel grid from the file's header (no decode), or None when the
    header cannot be read. EXIF orientation is ignored, as in :func:`read_image_rgb`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except (OSError, UnidentifiedImageError, ValueError):
        return None


def probe_image(path: str) -> tuple[tuple[int, int] | None, str | None]:
    """``((width, height), None)`` for a complete image file, or ``(None, why)``: missing, truncated, or a
    header that no decoder reads. Cheap (the header and the last few KiB, no decode): once per image, when
    an annotation file is read, so that ``data.on_bad_image`` applies before anything is trained on."""
    if not os.path.isfile(path):
        return None, "missing" if not os.path.lexists(path) else "a broken link or not a file"
    problem = truncation_problem(path)
    if problem:
        return None, problem
    size = stored_image_size(path)
    return (size, None) if size is not None else (None, "not a decodable image")


def report_unreadable_image(description: str, on_bad_image: str) -> None:
    """A missing, corrupt or truncated image: raise (``data.on_bad_image=error``) or warn that it is skipped.

    ``description`` names the file and what is known of it, e.g. ``"a.jpg (truncated JPEG ...; image_id 3)"``.
    """
    msg = f"cannot read image {description}"
    if on_bad_image == "error":
        raise DataError(msg + "; replace the file, or set data.on_bad_image=skip to skip such files")
    warnings.warn(msg + "; skipped", stacklevel=3)


def read_record_image(path: str, image_id, recorded_size: tuple[int, int], on_bad_image: str, warned: set,
                      what: str) -> np.ndarray | None:
    """The RGB image of an annotation record, or None (reported as :func:`report_unreadable_image` says) when
    it cannot be read. An image whose size differs from the record's ``(width, height)`` is warned about once
    per image id (``warned`` keeps the ids), naming ``what`` (boxes, keypoints) may not match it."""
    image = read_image_rgb(path)
    if image is None:
        report_unreadable_image(f"{path} ({image_problem(path) or 'corrupt'}; image_id {image_id})", on_bad_image)
        return None
    size = (image.shape[1], image.shape[0])
    if size != tuple(recorded_size) and image_id not in warned:
        warned.add(image_id)
        log.warning("%s is %dx%d but its json record says %dx%d (EXIF rotation?); %s may not match", path, *size,
                    *recorded_size, what)
    return image


def probe_image_files(paths: dict[int, str], records: dict[int, dict], ann_file: str,
                      on_bad_image: str) -> tuple[dict[int, tuple[int, int]], dict[int, str], list[int]]:
    """Check each image file once (exists, complete, header readable) and read its stored size.

    Args:
        paths: image id -> resolved path, for the images a split uses.
        records: image id -> json image record (for the json's width/height).
        on_bad_image: ``"error"`` raises a :class:`DataError` listing the unreadable files; ``"skip"`` warns.

    Returns ``(sizes, unreadable, resized)``: image id -> (width, height) of the file (the decoded size wins
    over the json's: the outside-the-image masking and clipping depend on it); image id -> why it cannot be
    read (only under ``skip``); the ids whose json width/height differ from the file.
    """
    sizes: dict[int, tuple[int, int]] = {}
    unreadable: dict[int, str] = {}
    resized: list[int] = []
    for image_id, path in sorted(paths.items()):
        size, problem = probe_image(path)
        if problem:
            unreadable[image_id] = problem
            continue
        sizes[image_id] = size
        rec = records[image_id]
        if size != (int(rec["width"]), int(rec["height"])):
            resized.append(image_id)
    if unreadable:
        examples = [f"{paths[i]} ({why})" for i, why in list(unreadable.items())[:3]]
        if on_bad_image == "error":
            raise DataError(f"{ann_file}: {len(unreadable)} image files cannot be read, e.g. {examples}; fix "
                            f"image_root or the files, or set data.on_bad_image=skip to drop them")
        log.warning("%s: skipping %d images that cannot be read (data.on_bad_image=skip), e.g. %s", ann_file,
                    len(unreadable), examples)
    if resized:
        i = resized[0]
        log.warning("%s: %d images are not the size their json record says, e.g. image %d: json %dx%d, file %dx%d; "
                    "the file's size is used", ann_file, len(resized), i, int(records[i]["width"]),
                    int(records[i]["height"]), *sizes[i])
    return sizes, unreadable, resized
