"""What the format readers share: the COCO builder, the list of problems found, the keypoint box, which pixel
grid a tool labelled on, the images a conversion must write, and the atomic json writer.

Coordinates written are in this repository's pixel-index convention (the centre of pixel ``i`` is at ``i``,
an image of width ``W`` spans ``[-0.5, W - 0.5]``; docs/conventions.md). Each reader says how its format's
coordinates map onto it (docs/formats.md has the table).

Pixel grids: a COCO json's labels refer to the stored pixel grid of its files (datasets/image_io.py). A tool
that showed its user the picture turned upright by the file's EXIF orientation (LabelMe, CVAT 2.1+,
Ultralytics) labelled the upright grid; for such a file the reader asks for an upright copy
(:class:`ImageToWrite`), which :func:`write_images` writes beside the output json, so that the stored grid of
every file the json names is the grid its labels were made on, for this repository and any other reader.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from datasets.image_io import ImageHeader, read_header, read_image
from models.bbox import clip_boxes, coco_xywh_to_xyxy, xyxy_to_coco_xywh
from models.errors import DataError, InputError

# Sets without boxes get the tight box of the labelled keypoints, grown by this fraction of its width and
# height on each side (the shared COCO sets built from the same sources used 10 %).
BOX_PADDING = 0.1
# The least width and height of a padded keypoint box, in pixels. Points on one line (all on one x or one y:
# a mouse's snout and tail base straight above each other) span no width; the box still needs one to be a box
# (non-empty, an area for OKS and COCO's area ranges). The top-down crop grows the short side to the model's
# aspect ratio anyway (docs/conventions.md), so the value does not change the crop; 16 px is small next to any
# subject worth a keypoint model and keeps the area from collapsing to a sliver.
MIN_BOX_SIZE = 16.0
# JPEG quality of the upright copies of JPEG files (others are written as PNG, losslessly).
UPRIGHT_JPEG_QUALITY = 95
# How many problems a DataError lists before it says "and N more".
_SHOWN_PROBLEMS = 5


@dataclass
class Conversion:
    """What a reader returns.

    coco: the COCO keypoint dict (``images``, ``annotations``, ``categories``); ``file_name``s are relative to
        ``image_root``.
    image_root: the folder to pass as ``image_root`` / ``--image-root``.
    counts: what was read and what was skipped (``images``, ``instances``, ``skipped_*``).
    notes: lines worth printing (choices the reader made, e.g. a flip map it wrote).
    images_to_write: images the json names that :func:`write_images` must write before the json is usable
        (their ``file_name``s do not resolve against ``image_root`` until then).
    """

    coco: dict
    image_root: str
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    images_to_write: list[ImageToWrite] = field(default_factory=list)


@dataclass(frozen=True)
class ImageToWrite:
    """An image the COCO file names but the source does not hold as a file of the right grid: written by
    :func:`write_images` into the folder beside the output json (never into the source folder).

    file_name: the image's ``file_name`` in the conversion's COCO dict. source: the original image file, or
    the LabelMe json whose ``imageData`` holds it (``image_data``). orientation: the EXIF orientation to apply
    (1: write the picture as it is stored).
    """

    file_name: str
    source: str
    orientation: int = 1
    image_data: bool = False


class Problems:
    """Bad input found while reading, collected so that one error names every kind and counts them.

    ``add(kind, where, what)``; ``raise_if_any(skip_bad)`` raises one DataError listing the counts per kind and
    the first few problems (each with its file and line or element), unless ``skip_bad`` (then the caller has
    dropped the bad items and the counts go into the conversion's report).
    """

    def __init__(self, source: str):
        self.source = source
        self.items: list[tuple[str, str]] = []

    def add(self, kind: str, where: str, what: str) -> None:
        self.items.append((kind, f"{where}: {what}"))

    def counts(self) -> dict[str, int]:
        return dict(Counter(kind for kind, _ in self.items))

    def raise_if_any(self, skip_bad: bool) -> None:
        if not self.items or skip_bad:
            return
        counts = ", ".join(f"{n} {kind}" for kind, n in self.counts().items())
        shown = "; ".join(msg for _, msg in self.items[:_SHOWN_PROBLEMS])
        more = f"; and {len(self.items) - _SHOWN_PROBLEMS} more" if len(self.items) > _SHOWN_PROBLEMS else ""
        raise DataError(f"{self.source}: {len(self.items)} problems ({counts}): {shown}{more}. Nothing was "
                        f"written; fix these, or pass --skip-bad to leave the bad items out (they are counted)")


def labelled_grid(header: ImageHeader, claimed: tuple[int, int] | None, shows_upright: bool) -> str | None:
    """Which pixel grid a tool's labels of one image refer to: ``"upright"`` (the picture turned as its EXIF
    orientation says) or ``"stored"``; None when the label file's size ``claimed`` (width, height) is neither
    (the labels cannot be placed on this file).

    ``shows_upright``: whether the tool turns pictures upright (then the two grids, when they have the same
    size, are taken as upright). ``claimed`` None: the format records no size; the tool's habit decides.
    """
    if claimed is None or (claimed == header.size and claimed == header.upright_size):
        return "upright" if shows_upright else "stored"
    if claimed == header.upright_size:
        return "upright"
    if claimed == header.size:
        return "stored"
    return None


def source_header(path: str, problems: Problems, where: str) -> ImageHeader | None:
    """The header of a source image (size, EXIF orientation), or None after adding a problem."""
    header = read_header(path)
    if header is None:
        problems.add("unreadable image", where, f"{path} is not an image any decoder here reads; re-save it as "
                     f"PNG or JPEG")
    return header


def add_image_in_grid(builder: CocoBuilder, images_to_write: list[ImageToWrite], file_name: str, path: str,
                      header: ImageHeader, grid: str, split: str | None = None) -> tuple[int, tuple[int, int]]:
    """Add an image record in the grid its labels refer to (:func:`labelled_grid`); for upright labels on a
    file with an EXIF orientation, ask for an upright copy and record the upright size. Returns ``(image id,
    (width, height) of that grid)``: the size the reader checks the points against."""
    if grid == "upright" and header.turned:
        images_to_write.append(ImageToWrite(file_name, path, header.orientation))
        size = header.upright_size
    else:
        size = header.size
    return builder.add_image(file_name, *size, split=split), size


def size_mismatch(header: ImageHeader, claimed: tuple[int, int], image: str, fix: str) -> str:
    """The one line saying that a label file's image size fits neither grid of ``image`` (for Problems.add)."""
    return (f"says {claimed[0]}x{claimed[1]}, but {image} is {header.describe()}; its points would be misplaced: "
            f"{fix}")


def keypoint_box(keypoints: np.ndarray, padding: float = BOX_PADDING,
                 image_size: tuple[int, int] | None = None) -> list[float] | None:
    """COCO ``[x, y, w, h]`` of the labelled keypoints' tight box grown by ``padding`` of its extent on each
    side and to at least :data:`MIN_BOX_SIZE` pixels across (about the points' centre), clipped to the image
    when ``image_size`` (width, height) is given; None when fewer than two distinct positions are labelled (a
    single point gives no scale for a crop). keypoints: [K, 3] (x, y, v), pixel-index coordinates.

    The tight box's corners are taken as the box's edge-to-edge extent (the padding covers the half pixel).
    """
    pts = keypoints[keypoints[:, 2] > 0, :2]
    if len(np.unique(pts, axis=0)) < 2:
        return None
    lo, hi = pts.min(0), pts.max(0)
    size = np.maximum((hi - lo) * (1 + 2 * padding), MIN_BOX_SIZE)
    x, y = (lo + hi) / 2 - size / 2
    box = [float(x), float(y), float(size[0]), float(size[1])]
    return clip_box(box, *image_size) if image_size is not None else box


def clip_box(box: list[float], width: int, height: int) -> list[float]:
    """A COCO ``[x, y, w, h]`` cut to the image (its pixels 0..W-1: edges ``-0.5`` and ``W - 0.5``, i.e.
    ``0 <= x`` and ``x + w <= W``, the ``+1`` convention of models/bbox.py); ``w`` or ``h`` <= 0 when the box
    lies entirely outside."""
    xyxy = clip_boxes(coco_xywh_to_xyxy(np.asarray(box, dtype=np.float64)), width, height)
    return [float(v) for v in xyxy_to_coco_xywh(xyxy)]


class CocoBuilder:
    """Collects images and instances into a COCO keypoint dict with consecutive ids (from 1).

    Args:
        keypoint_names: the K names, in the order the keypoints are stored.
        category: the category's name.
        skeleton: zero-based index pairs (stored one-based, as COCO does), or None.
        flip_index: ``flip[i]`` = the keypoint that i becomes under a horizontal flip, or None when the format
            does not say (stored in the category as ``flip_index``; tools.make_config reads it).
    """

    def __init__(self, keypoint_names: list[str], category: str = "object",
                 skeleton: list[tuple[int, int]] | None = None, flip_index: list[int] | None = None):
        self.names = list(keypoint_names)
        self.categories: list[dict] = []
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        # What add_instance did besides adding (instances left out, boxes replaced), by why: each reader adds
        # these to its counts, so that nothing is dropped unseen.
        self.counts: Counter = Counter()
        self.add_category(category, skeleton, flip_index)

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    def add_category(self, name: str, skeleton: list[tuple[int, int]] | None = None,
                     flip_index: list[int] | None = None) -> int:
        cat = {"id": len(self.categories) + 1, "name": name, "supercategory": name, "keypoints": list(self.names),
               "skeleton": [[int(a) + 1, int(b) + 1] for a, b in (skeleton or [])]}
        if flip_index is not None:
            if sorted(flip_index) != list(range(len(self.names))):
                raise ValueError(f"flip_index {flip_index} is not a permutation of 0..{len(self.names) - 1}")
            cat["flip_index"] = [int(i) for i in flip_index]
        self.categories.append(cat)
        return cat["id"]

    def add_image(self, file_name: str, width: int, height: int, split: str | None = None) -> int:
        image_id = len(self.images) + 1
        record = {"id": image_id, "file_name": file_name.replace(os.sep, "/"), "width": int(width),
                  "height": int(height)}
        if split is not None:
            record["split"] = split
        self.images.append(record)
        return image_id

    def add_instance(self, image_id: int, keypoints: np.ndarray, bbox: list[float] | None = None,
                     category_id: int = 1) -> bool:
        """keypoints: [K, 3] (x, y, v) in pixel-index coordinates, v in {0, 1, 2}; unlabelled points are
        written as (0, 0, 0). bbox: COCO [x, y, w, h], or None (or empty) for the padded keypoint box; either is
        clipped to the image. Returns False (adds nothing, and counts why in ``counts``) for an instance without
        a labelled keypoint, one whose labelled keypoints are one position, or one whose box lies entirely
        outside its image."""
        kp = np.asarray(keypoints, dtype=np.float64).reshape(self.num_keypoints, 3).copy()
        kp[kp[:, 2] <= 0] = 0.0
        num = int((kp[:, 2] > 0).sum())
        if num == 0:
            self.counts["unlabelled_instances"] += 1
            return False
        record = self.images[int(image_id) - 1]
        size = (int(record["width"]), int(record["height"]))
        if bbox is not None and (bbox[2] <= 0 or bbox[3] <= 0):
            self.counts["empty_boxes_replaced_by_the_keypoint_box"] += 1   # e.g. a click without a drag
            bbox = None
        if bbox is None:
            bbox = keypoint_box(kp, image_size=size)
            if bbox is None:
                self.counts["instances_with_one_point"] += 1
                return False
        else:
            bbox = clip_box(bbox, *size)
        if bbox[2] <= 0 or bbox[3] <= 0:
            self.counts["instances_outside_the_image"] += 1
            return False
        self.annotations.append({
            "id": len(self.annotations) + 1, "image_id": int(image_id), "category_id": int(category_id),
            "iscrowd": 0, "keypoints": [float(v) for v in kp.reshape(-1)], "num_keypoints": num,
            "bbox": [float(v) for v in bbox], "area": float(bbox[2] * bbox[3]),
        })
        return True

    def to_dict(self) -> dict:
        return {"images": self.images, "annotations": self.annotations, "categories": self.categories}


def outside_image(x: float, y: float, width: int, height: int) -> bool:
    """Whether a pixel-index point lies outside the image's area ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``."""
    eps = 1e-6
    return not (-0.5 - eps <= x <= width - 0.5 + eps and -0.5 - eps <= y <= height - 0.5 + eps)


def relative_to(root: str, path: str) -> str:
    return os.path.relpath(os.path.abspath(path), os.path.abspath(root)).replace(os.sep, "/")


def require_file(path: str, what: str, flag: str = "SOURCE") -> None:
    if not os.path.isfile(path):
        raise InputError(f"{what} not found: {path} ({flag}); check the path")


def require_dir(path: str, what: str, flag: str = "SOURCE") -> None:
    if not os.path.isdir(path):
        raise InputError(f"{what} not found: {path} ({flag}); check the path")


def write_coco_json(path: str, coco: dict) -> None:
    """Write ``coco`` to ``path`` atomically: a temporary file in the same folder, then a rename, so ``path``
    is never half-written (an interrupted run leaves the old file or none)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(coco, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def images_folder(output_json: str) -> str:
    """The folder beside ``output_json`` that :func:`write_images` fills: ``data/x.json`` -> ``data/x_images``."""
    return os.path.splitext(os.path.abspath(output_json))[0] + "_images"


def write_images(conversion: Conversion, output_json: str) -> Conversion:
    """Write the images a conversion asked for (:class:`ImageToWrite`) beside ``output_json``; returns the
    conversion with its image root moved there (unchanged when it asked for none).

    The folder (:func:`images_folder`) mirrors the source's layout: each asked-for image is written (upright
    copies: JPEG at :data:`UPRIGHT_JPEG_QUALITY` for JPEG files, else PNG, the name then ending ``.png``;
    ``imageData``: its bytes as they are), every other image is a symbolic link to its original (a copy where
    links cannot be made), so that one image root serves the whole json. ``..`` in a ``file_name`` becomes
    ``_up_`` (nothing is written outside the folder). The source folder is only read.
    """
    if not conversion.images_to_write:
        return conversion
    folder = images_folder(output_json)
    todo = {item.file_name: item for item in conversion.images_to_write}
    images = []
    written = linked = 0
    for record in conversion.coco["images"]:
        record = dict(record)
        item = todo.get(record["file_name"])
        name = _safe_name(record["file_name"], upright_copy=item is not None and item.orientation != 1)
        target = os.path.join(folder, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if item is not None:
            _write_one_image(item, target)
            written += 1
        else:
            _link_or_copy(os.path.join(conversion.image_root, record["file_name"]), target)
            linked += 1
        record["file_name"] = name
        images.append(record)
    coco = {**conversion.coco, "images": images}
    turned = sum(item.orientation != 1 for item in conversion.images_to_write)
    decoded = sum(item.image_data for item in conversion.images_to_write)
    note = (f"wrote {written} images under {folder} ({turned} turned upright as their EXIF orientation says, "
            f"{decoded} decoded from LabelMe imageData) and linked the other {linked}; that folder is the image root")
    return Conversion(coco, folder, dict(conversion.counts), [*conversion.notes, note], [])


def _safe_name(file_name: str, upright_copy: bool) -> str:
    parts = ["_up_" if p == ".." else p for p in os.path.normpath(file_name).replace(os.sep, "/").split("/")
             if p not in ("", ".")]
    name = "/".join(parts)
    if upright_copy and not name.lower().endswith((".jpg", ".jpeg", ".png")):
        name += ".png"      # the copy is a PNG: say so in its name (a .tif holding PNG bytes would mislead)
    return name


def _write_one_image(item: ImageToWrite, target: str) -> None:
    """Write one :class:`ImageToWrite` to ``target`` atomically (a temporary file, then a rename)."""
    tmp = target + ".tmp"
    try:
        if item.image_data:
            with open(item.source) as f:
                data = base64.b64decode(json.load(f)["imageData"])
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
            if item.orientation == 1:
                return
            source = target
        else:
            source = item.source
        image, _ = read_image(source, upright=True)
        if image is None:
            raise DataError(f"{item.source}: the image cannot be read any more (changed during the conversion?); "
                            f"convert again")
        save_without_orientation(image, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_without_orientation(image: np.ndarray, target: str) -> None:
    """Write an RGB uint8 [H, W, 3] image to ``target`` without EXIF, so that its stored grid is the grid every
    reader shows: JPEG at :data:`UPRIGHT_JPEG_QUALITY` (no chroma subsampling) when the name ends .jpg/.jpeg,
    else PNG. Atomic (a temporary file, then a rename)."""
    jpeg = target.lower().endswith((".jpg", ".jpeg"))
    options = {"quality": UPRIGHT_JPEG_QUALITY, "subsampling": 0} if jpeg else {}
    tmp = target + ".tmp"
    try:
        Image.fromarray(image).save(tmp, format="JPEG" if jpeg else "PNG", **options)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _link_or_copy(source: str, target: str) -> None:
    if os.path.lexists(target):
        os.remove(target)
    try:
        os.symlink(os.path.abspath(source), target)
    except OSError:        # e.g. Windows without the right to make links
        shutil.copy2(source, target)
