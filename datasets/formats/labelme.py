"""LabelMe json files -> COCO keypoints.

A LabelMe file (one per image) holds ``imagePath`` (relative to the json's folder), ``imageWidth``,
``imageHeight`` and ``shapes``: ``{"label", "points": [[x, y], ...], "group_id": int or null, "shape_type":
"point" | "rectangle" | ..., "flags": {...}}``. Here a ``point`` shape is a keypoint named by its label, a
``rectangle`` (two opposite corners) is the instance's box, and shapes with the same ``group_id`` belong to one
instance (shapes without one form a single instance per image). A point whose shape flags have
``occluded: true`` gets ``v = 1``, others ``v = 2``; other shape types are ignored (counted). Instances without
a rectangle get the padded keypoint box. Files in a top folder named ``train``, ``val``, ``valid``,
``validation`` or ``test`` carry that split.

Coordinates: LabelMe's canvas puts pixel ``i`` on ``[i, i + 1)`` (coordinates measured from the image's
corner), so a point's pixel-index coordinate is the stored value minus 0.5; a rectangle's corners are COCO's box
edges as they are: ``[x, y, w, h] = [min x, min y, |dx|, |dy|]``, clipped to the image.

The picture: LabelMe shows the image turned upright by its EXIF orientation (``utils.apply_exif_orientation``)
and writes that upright size as ``imageWidth`` / ``imageHeight``, so the points refer to the upright picture.
For a file with an orientation the reader asks for an upright copy (``common.ImageToWrite``, written beside
the output json by ``tools.convert``), so the json's labels and its files' stored grids agree. A file whose
sizes are the stored grid's (a LabelMe before 3.x, which did not turn pictures) keeps the stored grid; sizes
that fit neither grid are a problem (the points cannot be placed). A file without its image but with
``imageData`` (base64, "Save With Image Data") has that image decoded and written beside the output json.

Keypoint names: ``keypoint_names`` in the order given (any other point label is an error), or else every point
label in the order first met (files sorted by name); pass the order to get a stable one.
"""

from __future__ import annotations

import base64
import binascii
import glob
import io
import json
import os

import numpy as np

from datasets.formats.common import (
    CocoBuilder,
    Conversion,
    ImageToWrite,
    Problems,
    add_image_in_grid,
    labelled_grid,
    outside_image,
    relative_to,
    require_dir,
    size_mismatch,
    source_header,
)
from datasets.image_io import ImageHeader, read_header
from models.errors import InputError

LABELME_ORIGIN = 0.5     # subtracted from stored points: corner-origin -> pixel-index
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def convert_labelme(folder: str, keypoint_names: list[str] | None = None, skip_bad: bool = False) -> Conversion:
    """Read every LabelMe json under ``folder`` (recursively). Raises DataError naming every problem (file
    and shape) unless ``skip_bad``, which leaves the bad items out and counts them."""
    require_dir(folder, "folder of LabelMe json files")
    problems = Problems(folder)
    docs = _read_labelme_files(folder, problems)
    names = list(keypoint_names) if keypoint_names else _names_in_order(docs)
    builder = CocoBuilder(names, category=_category(docs))
    counts = {"images": 0, "instances": 0, "ignored_shapes": 0}
    to_write: list[ImageToWrite] = []
    for path, doc in docs:
        _add_image(folder, path, doc, builder, problems, counts, to_write)
    problems.raise_if_any(skip_bad)
    counts.update(builder.counts)
    counts.update({f"skipped: {k}": n for k, n in problems.counts().items()})
    notes = [] if keypoint_names else [f"keypoint order (first met): {names}; pass --keypoints to set it"]
    return Conversion(builder.to_dict(), os.path.abspath(folder), counts, notes, to_write)


def _read_labelme_files(folder: str, problems: Problems) -> list[tuple[str, dict]]:
    """``(path, parsed json)`` of each LabelMe file under ``folder``, by path; other json files are passed over."""
    docs = []
    for path in sorted(glob.glob(os.path.join(folder, "**", "*.json"), recursive=True)):
        try:
            with open(path) as f:
                doc = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            problems.add("not valid JSON", path, str(err))
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list) or "imagePath" not in doc:
            continue   # another json in the folder (not a LabelMe file)
        docs.append((path, doc))
    if not docs:
        raise InputError(f"no LabelMe json files (with 'shapes' and 'imagePath') under {folder} (SOURCE)")
    return docs


def _category(docs: list[tuple[str, dict]]) -> str:
    """The label of the first rectangle met, else ``"object"``."""
    category = next((s.get("label") for _, d in docs for s in d["shapes"] if s.get("shape_type") == "rectangle"),
                    None) or "object"
    return str(category)


def _add_image(folder: str, path: str, doc: dict, builder: CocoBuilder, problems: Problems, counts: dict,
               to_write: list[ImageToWrite]) -> None:
    """Add the image of one LabelMe file (in the grid its points refer to) and an instance per shape group."""
    found = _find_image(path, doc, problems)
    if found is None:
        return
    image_path, header, from_image_data = found
    claimed = _claimed_size(doc)
    grid = labelled_grid(header, claimed, shows_upright=True)
    if grid is None:
        problems.add("image size mismatch", f"{path}: imageWidth/imageHeight", size_mismatch(
            header, claimed, "imageData" if from_image_data else image_path,
            "put back the image it was labelled on, or open the file in LabelMe, check the points and save again"))
        return
    rel = relative_to(folder, image_path)
    split = SPLIT_FOLDERS.get(rel.split("/")[0].lower()) if "/" in rel else None
    if from_image_data:
        # decoded by common.write_images; turned too when the embedded picture carries an orientation
        to_write.append(ImageToWrite(rel, path, header.orientation if grid == "upright" else 1, image_data=True))
        size = header.upright_size if grid == "upright" else header.size
        image_id = builder.add_image(rel, *size, split=split)
    else:
        image_id, size = add_image_in_grid(builder, to_write, rel, image_path, header, grid, split)
    counts["images"] += 1
    groups = _shape_groups(path, doc["shapes"], builder.names, *size, problems, counts)
    for group in groups.values():
        if (group["kp"][:, 2] > 0).any() or group["box"] is not None:
            counts["instances"] += builder.add_instance(image_id, group["kp"], bbox=group["box"])


def _find_image(path: str, doc: dict, problems: Problems) -> tuple[str, ImageHeader, bool] | None:
    """``(image path, header, from imageData)`` of one LabelMe file's picture: the file at ``imagePath``, else
    the base64 ``imageData`` (its path then names the file to write); None after adding a problem."""
    image_ref = str(doc.get("imagePath") or "").replace("\\", "/")
    image_path = os.path.normpath(os.path.join(os.path.dirname(path), image_ref)) if image_ref else ""
    if image_ref and os.path.isfile(image_path):
        header = source_header(image_path, problems, f"{path}: imagePath")
        return (image_path, header, False) if header is not None else None
    data = doc.get("imageData")
    if not data:
        problems.add("missing image", f"{path}: imagePath", f"{image_ref!r} not found ({image_path or 'no path'}) "
                     f"and no imageData; put the image there, or save the file in LabelMe with 'Save With Image Data'")
        return None
    try:
        header = read_header(io.BytesIO(base64.b64decode(data, validate=True)))
    except (binascii.Error, ValueError):
        header = None
    if header is None:
        problems.add("bad imageData", f"{path}: imageData", "not a base64-encoded image; open the file in LabelMe "
                     "with its image beside it and save again")
        return None
    if not image_ref:     # name the picture after the json: a.json -> a.png
        image_path = os.path.splitext(path)[0] + "." + (header.format or "png").lower().replace("jpeg", "jpg")
    return image_path, header, True


def _claimed_size(doc: dict) -> tuple[int, int] | None:
    """``(imageWidth, imageHeight)`` of a LabelMe file, or None when it does not record them."""
    w, h = doc.get("imageWidth"), doc.get("imageHeight")
    if isinstance(w, (int, float)) and isinstance(h, (int, float)) and w > 0 and h > 0:
        return int(w), int(h)
    return None


def _shape_groups(path: str, shapes: list, names: list[str], width: int, height: int, problems: Problems,
                  counts: dict) -> dict[object, dict]:
    """group_id -> ``{"kp": [K, 3] pixel-index (x, y, v), "box": COCO [x, y, w, h] or None}`` of one file's
    shapes; shapes other than points and rectangles are counted as ignored."""
    index = {n: i for i, n in enumerate(names)}
    groups: dict[object, dict] = {}
    for s_i, shape in enumerate(shapes):
        kind, label, pts = shape.get("shape_type", "polygon"), str(shape.get("label")), shape.get("points") or []
        group = groups.setdefault(shape.get("group_id"), {"kp": np.zeros((len(names), 3)), "box": None})
        where = f"{path}: shape {s_i} ({label!r})"
        if kind == "rectangle" and len(pts) == 2:
            (x1, y1), (x2, y2) = pts
            group["box"] = [min(x1, x2), min(y1, y2), abs(x2 - x1), abs(y2 - y1)]
        elif kind == "point" and len(pts) == 1:
            if label not in index:
                problems.add("unknown bodypart", where, f"label {label!r} is not one of the keypoints {names}")
                continue
            k = index[label]
            if group["kp"][k, 2] > 0:
                problems.add("repeated keypoint", where, f"{label!r} twice in group {shape.get('group_id')}; "
                             f"give each instance its own group_id")
                continue
            x, y = float(pts[0][0]) - LABELME_ORIGIN, float(pts[0][1]) - LABELME_ORIGIN
            if outside_image(x, y, width, height):
                problems.add("point outside the image", where, f"({pts[0][0]}, {pts[0][1]}) is outside "
                             f"{width}x{height}")
                continue
            occluded = bool((shape.get("flags") or {}).get("occluded"))
            group["kp"][k] = (x, y, 1.0 if occluded else 2.0)
        else:
            counts["ignored_shapes"] += 1
    return groups


def _names_in_order(docs) -> list[str]:
    names: list[str] = []
    for _, doc in docs:
        for shape in doc["shapes"]:
            if shape.get("shape_type") == "point" and str(shape.get("label")) not in names:
                names.append(str(shape.get("label")))
    return names
