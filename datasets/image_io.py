"""Reading images from disk, and the one report for an image that cannot be read (all datasets and tools).

Every reader (training, inference, drawing) goes through :func:`read_image` and gets RGB uint8 ``[H, W, 3]``,
whatever the file holds (docs/formats.md, "Image files"):

* **orientation** (EXIF Orientation 2-8, what phones write instead of turning the pixels): the training
  readers take the *stored* pixel grid, because a COCO json's labels and width/height refer to it;
  ``upright=True`` (inference and drawing) turns the picture the way a viewer shows it. The map between the
  two grids is one exact 2x3 matrix (:func:`orientation_matrix`); the converters write upright copies where a
  labelling tool labelled the upright picture (datasets/formats/common.py).
* **16 bits per sample** (PNG, TIFF): scaled to 8 bits by ``round(v * 255 / 65535)``, so that 65535 is 255 (a
  shift by 8 bits would map 65280 to 255 already).
* **alpha** (RGBA, grey + alpha, palette with transparency): composited on black. The colour under a
  transparent pixel is whatever the editor left there; black makes it one value everywhere.
* **CMYK** JPEGs: converted to RGB by the decoder (libjpeg's inverted-CMYK rule, the same as Pillow's).
* **colour profiles** (ICC) are not applied: the stored values are used, as by OpenCV, Pillow's ``convert``
  and the usual training pipelines. A wide-gamut (Display P3) photo reaches the model a little less saturated
  than a colour-managed viewer shows it; positions are unaffected.
* **several frames** (multi-page TIFF, animated GIF / WebP / PNG): the first frame, with a warning once per file.
* 32-bit integer or float samples: not read (:func:`image_problem` says to save the file as 8 or 16 bits).

A truncated file is unreadable too. libjpeg decodes a JPEG that ends early without failing: the missing
rows come out grey and the only trace is a "Premature end of JPEG file" line on stderr, without a file
name. So every read also checks that the file ends the way its format says it must (a JPEG's end-of-image
marker ``FF D9``, a PNG's ``IEND`` chunk); that costs two small reads, not a second decode.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from models.errors import DataError

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("error", "skip")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")   # what the readers list
_TAIL_BYTES = 4096        # encoders may pad a few bytes after the end marker; EXIF thumbnails sit at the start
EXIF_ORIENTATION_TAG = 0x0112
# How a viewer shows a file of each EXIF orientation (the stored grid turned so): for messages and the docs.
ORIENTATION_NAMES = {1: "as stored", 2: "mirrored left-right", 3: "turned 180°", 4: "mirrored top-bottom",
                     5: "transposed (mirrored along the main diagonal)", 6: "turned 90° clockwise",
                     7: "transversed (mirrored along the other diagonal)", 8: "turned 90° counter-clockwise"}
# The orientation that undoes each one: 6 and 8 undo each other, the others undo themselves.
_INVERSE_ORIENTATION = {6: 8, 8: 6}
# Pillow modes of 8 bits per sample, converted by Pillow (CMYK by the same inverted-CMYK rule as libjpeg's).
_EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV")
_PIL_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError)
_warned_frames: set[str] = set()      # files already warned about having several frames (once per process)


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says, read without decoding its pixels.

    size: ``(width, height)`` of the stored pixel grid. orientation: the EXIF Orientation tag, 1..8 (1 when
    absent or out of range). frames: pages or frames in the file (1 for a still image). mode: Pillow's name of
    the pixel layout (``"RGB"``, ``"L"``, ``"I;16"``, ``"RGBA"``, ``"CMYK"``, ``"P"`` ...). format: Pillow's name
    of the file format (``"JPEG"``, ``"PNG"``, ``"TIFF"`` ...).
    """

    size: tuple[int, int]
    orientation: int = 1
    frames: int = 1
    mode: str = "RGB"
    format: str = ""

    @property
    def upright_size(self) -> tuple[int, int]:
        """``(width, height)`` as a viewer shows it: orientations 5-8 swap the two."""
        return (self.size[1], self.size[0]) if self.orientation >= 5 else self.size

    @property
    def turned(self) -> bool:
        """Whether a viewer shows the picture other than as stored."""
        return self.orientation != 1

    def describe(self) -> str:
        """E.g. ``"stored 640x480, EXIF orientation 6 (turned 90° clockwise): upright 480x640"``."""
        text = f"stored {self.size[0]}x{self.size[1]}"
        if self.turned:
            text += (f", EXIF orientation {self.orientation} ({ORIENTATION_NAMES[self.orientation]}): upright "
                     f"{self.upright_size[0]}x{self.upright_size[1]}")
        return text


def read_header(source) -> ImageHeader | None:
    """The :class:`ImageHeader` of a file path or a binary file object, or None when no decoder knows it."""
    try:
        with Image.open(source) as im:
            orientation = int(im.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
            frames = int(getattr(im, "n_frames", 1) or 1)
            size = (int(im.size[0]), int(im.size[1]))
            if im.format == "TIFF":   # Pillow reports an oriented TIFF's upright size; the raster's is in its tags
                size = (int(im.tag_v2.get(256, size[0])), int(im.tag_v2.get(257, size[1])))
            return ImageHeader(size, orientation if 1 <= orientation <= 8 else 1, frames, str(im.mode),
                               str(im.format or ""))
    except _PIL_ERRORS + (TypeError,):
        return None


def orientation_matrix(orientation: int, width: int, height: int) -> np.ndarray:
    """The [2, 3] float64 matrix that takes a pixel-index point of the stored grid (``width`` x ``height``) to
    the upright grid a viewer shows for EXIF ``orientation``. Exact: pixel centres go to pixel centres, e.g.
    orientation 6 (turned 90° clockwise) maps ``(x, y)`` to ``(H - 1 - y, x)``, a mirror maps ``x`` to
    ``W - 1 - x`` (docs/conventions.md). Use with ``datasets.affine.apply_affine`` / ``models.bbox.affine_boxes``;
    ``datasets.affine.invert_affine`` gives the way back."""
    w1, h1 = float(width - 1), float(height - 1)
    rows = {1: ((1, 0, 0), (0, 1, 0)), 2: ((-1, 0, w1), (0, 1, 0)), 3: ((-1, 0, w1), (0, -1, h1)),
            4: ((1, 0, 0), (0, -1, h1)), 5: ((0, 1, 0), (1, 0, 0)), 6: ((0, -1, h1), (1, 0, 0)),
            7: ((0, -1, h1), (-1, 0, w1)), 8: ((0, 1, 0), (-1, 0, w1))}
    if orientation not in rows:
        raise ValueError(f"EXIF orientation must be 1..8, got {orientation}")
    return np.array(rows[orientation], dtype=np.float64)


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """The stored ``image`` ([H, W, ...]) turned upright as EXIF ``orientation`` says (contiguous; the same
    pixels :func:`orientation_matrix` maps, and what Pillow's ``ImageOps.exif_transpose`` gives)."""
    swapped = np.swapaxes(image, 0, 1)
    turned = {1: image, 2: image[:, ::-1], 3: image[::-1, ::-1], 4: image[::-1], 5: swapped,
              6: swapped[:, ::-1], 7: swapped[::-1, ::-1], 8: swapped[::-1]}
    if orientation not in turned:
        raise ValueError(f"EXIF orientation must be 1..8, got {orientation}")
    return np.ascontiguousarray(turned[orientation])


def undo_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """The upright ``image`` back on the stored grid (the inverse of :func:`apply_orientation`)."""
    return apply_orientation(image, _INVERSE_ORIENTATION.get(orientation, orientation))


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
    JPEG ..."``, ``"float32 samples ..."``), or None when it can be read. For the message of
    :func:`report_unreadable_image`."""
    if not os.path.isfile(path):
        return "missing" if not os.path.lexists(path) else "a broken link or not a file"
    problem = truncation_problem(path)
    if problem:
        return problem
    raw = _decode(path, read_header(path))
    if raw is None:
        return "not a decodable image"
    if raw.dtype not in (np.uint8, np.uint16):
        return f"{raw.dtype} samples (only 8- and 16-bit images are read); save it as an 8- or 16-bit image"
    return None


def read_image(path: str, upright: bool = False) -> tuple[np.ndarray | None, ImageHeader | None]:
    """``(RGB uint8 [H, W, 3], header)`` of an image file; the image is None when the file is missing, cannot
    be decoded, is truncated or holds samples other than 8 or 16 bits (:func:`image_problem` says which).

    ``upright=False`` (the training readers): the stored pixel grid, which a COCO json's labels refer to.
    ``upright=True`` (inference, drawing): turned as the EXIF orientation says, as a viewer shows it; map
    coordinates between the two with :func:`orientation_matrix` of ``header``. The header is None when only
    OpenCV knows the format (then there is no orientation to apply).
    """
    header = read_header(path)
    raw = _decode(path, header)
    if raw is None or truncation_problem(path):
        return None, header
    image = _to_rgb8(raw)
    if image is None:
        return None, header
    if header is not None and header.frames > 1 and path not in _warned_frames:
        _warned_frames.add(path)
        log.warning("%s holds %d frames (a multi-page TIFF or an animated image); only the first is read. Save "
                    "the frame you mean as its own file to silence this", path, header.frames)
    if upright and header is not None and header.turned:
        image = apply_orientation(image, header.orientation)
    return image, header


def read_image_rgb(path: str, upright: bool = False) -> np.ndarray | None:
    """RGB uint8 [H, W, 3], or None when the file cannot be read (:func:`read_image`, without the header).

    By default the stored pixel grid (EXIF orientation not applied): annotations refer to it, as the json's
    width/height do. ``upright=True`` turns it as a viewer shows it.
    """
    return read_image(path, upright)[0]


def _decode(path: str, header: ImageHeader | None) -> np.ndarray | None:
    """The first frame's samples as stored: [H, W] or [H, W, C] in OpenCV's channel order (BGR, BGRA), any
    depth; None when neither OpenCV nor Pillow decodes it. ``IMREAD_UNCHANGED`` keeps 16 bits and alpha and
    does not apply a JPEG's, PNG's or WebP's EXIF orientation; Pillow takes over where this OpenCV build gives up
    (a GIF before 4.11) and for TIFFs with an orientation tag, which OpenCV's TIFF decoder turns (2-4) or
    fails on (5-8)."""
    tiff_turned = header is not None and header.turned and header.format == "TIFF"
    raw = None if tiff_turned else cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if raw is not None:
        return raw
    try:
        with Image.open(path) as im:
            im.seek(0)
            im.load()
            if im.mode in _EIGHT_BIT_MODES:
                keep_alpha = "A" in im.mode or "transparency" in im.info
                array = np.asarray(im.convert("RGBA" if keep_alpha else "RGB"))
                array = cv2.cvtColor(array, cv2.COLOR_RGBA2BGRA if keep_alpha else cv2.COLOR_RGB2BGR)
            else:
                array = np.asarray(im)
                if im.mode == "I" and array.size and 0 <= array.min() and array.max() <= 65535:
                    array = array.astype(np.uint16)    # Pillow's 32-bit mode of many 16-bit greyscale files
                if array.dtype.byteorder == ">":
                    array = array.astype(array.dtype.newbyteorder("="))
            # Pillow turns an oriented TIFF upright while loading it (and then drops the tag): back to the raster.
            if tiff_turned and EXIF_ORIENTATION_TAG not in im.getexif():
                array = undo_orientation(array, header.orientation)
            return array
    except _PIL_ERRORS:
        return None


def _to_rgb8(raw: np.ndarray) -> np.ndarray | None:
    """RGB uint8 [H, W, 3] of decoded samples (BGR / BGRA / grey / grey + alpha, 8 or 16 bits); None for other
    sample types. 16 bits: ``round(v * 255 / 65535)``. Alpha: composited on black."""
    if raw.dtype == np.uint16:
        raw = ((raw.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif raw.dtype != np.uint8:
        return None
    if raw.ndim == 2:
        raw = raw[:, :, None]
    channels = raw.shape[2]
    if channels in (2, 4):
        colour, alpha = raw[:, :, :-1], raw[:, :, -1:].astype(np.uint16)
        raw = ((colour.astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)
        channels -= 1
    if channels == 1:
        return cv2.cvtColor(raw, cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)
    return None


def stored_image_size(path: str) -> tuple[int, int] | None:
    """``(width, height)`` of the stored pixel grid from the file's header (no decode), or None when the
    header cannot be read. EXIF orientation is ignored, as in :func:`read_image_rgb`."""
    header = read_header(path)
    return header.size if header is not None else None


def probe_image_header(path: str) -> tuple[ImageHeader | None, str | None]:
    """``(header, None)`` for a complete image file, or ``(None, why)``: missing, truncated, or a header that
    no decoder reads. Cheap (the header and the last few KiB, no decode)."""
    if not os.path.isfile(path):
        return None, "missing" if not os.path.lexists(path) else "a broken link or not a file"
    problem = truncation_problem(path)
    if problem:
        return None, problem
    header = read_header(path)
    return (header, None) if header is not None else (None, "not a decodable image")


def probe_image(path: str) -> tuple[tuple[int, int] | None, str | None]:
    """``((width, height), None)`` for a complete image file, or ``(None, why)``: missing, truncated, or a
    header that no decoder reads. Cheap (the header and the last few KiB, no decode): once per image, when
    an annotation file is read, so that ``data.on_bad_image`` applies before anything is trained on."""
    header, problem = probe_image_header(path)
    return (header.size, None) if header is not None else (None, problem)


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
    """The RGB image of an annotation record (the stored pixel grid), or None (reported as
    :func:`report_unreadable_image` says) when it cannot be read. An image whose size differs from the
    record's ``(width, height)`` is warned about once per image id (``warned`` keeps the ids), naming ``what``
    (boxes, keypoints) may not match it."""
    image = read_image_rgb(path)
    if image is None:
        report_unreadable_image(f"{path} ({image_problem(path) or 'corrupt'}; image_id {image_id})", on_bad_image)
        return None
    size = (image.shape[1], image.shape[0])
    if size != tuple(recorded_size) and image_id not in warned:
        warned.add(image_id)
        log.warning("%s is %dx%d but its json record says %dx%d (replaced or resized since labelling?); %s may "
                    "not match", path, *size, *recorded_size, what)
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

    A COCO json's labels refer to the stored pixel grid. A record whose width/height are the *upright* size of
    a file that an EXIF orientation shows turned by 90° (stored 640x480, record 480x640) was labelled on the
    upright picture: read on the stored grid its points would be misplaced, so it is an error too (or skipped).
    """
    sizes: dict[int, tuple[int, int]] = {}
    unreadable: dict[int, str] = {}
    resized: list[int] = []
    turned: list[int] = []
    for image_id, path in sorted(paths.items()):
        header, problem = probe_image_header(path)
        if problem:
            unreadable[image_id] = problem
            continue
        rec = records[image_id]
        recorded = (int(rec["width"]), int(rec["height"]))
        if header.size != recorded and header.upright_size == recorded:
            turned.append(image_id)
            unreadable[image_id] = f"labelled upright: json {recorded[0]}x{recorded[1]}, file {header.describe()}"
            continue
        sizes[image_id] = header.size
        if header.size != recorded:
            resized.append(image_id)
    if turned:
        i = turned[0]
        msg = (f"{ann_file}: {len(turned)} images have the width/height of their file turned upright by its EXIF "
               f"orientation, e.g. image {i} {paths[i]} ({unreadable[i]}); COCO labels refer to the stored pixel "
               f"grid, so these points would be misplaced: save those images upright (Pillow's "
               f"ImageOps.exif_transpose, or mogrify -auto-orient) and keep the json")
        if on_bad_image == "error":
            raise DataError(msg + ", or set data.on_bad_image=skip to drop them")
        log.warning("%s; skipped (data.on_bad_image=skip)", msg)
    if len(unreadable) > len(turned):
        bad = {i: why for i, why in unreadable.items() if i not in turned}
        examples = [f"{paths[i]} ({why})" for i, why in list(bad.items())[:3]]
        if on_bad_image == "error":
            raise DataError(f"{ann_file}: {len(bad)} image files cannot be read, e.g. {examples}; fix "
                            f"image_root or the files, or set data.on_bad_image=skip to drop them")
        log.warning("%s: skipping %d images that cannot be read (data.on_bad_image=skip), e.g. %s", ann_file,
                    len(bad), examples)
    if resized:
        i = resized[0]
        log.warning("%s: %d images are not the size their json record says, e.g. image %d: json %dx%d, file %dx%d; "
                    "the file's size is used", ann_file, len(resized), i, int(records[i]["width"]),
                    int(records[i]["height"]), *sizes[i])
    return sizes, unreadable, resized
