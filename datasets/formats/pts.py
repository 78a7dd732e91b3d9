"""300-W / iBUG ``.pts`` landmark files -> COCO keypoints.

A folder of images, each face's points in ``<stem>.pts`` beside its image ``<stem>.jpg`` (or .png ...). When
no image has the stem, the stem without a trailing ``_<n>`` names the photo (several faces of one photo:
``photo_1.pts``, ``photo_2.pts`` -> ``photo.jpg``). A file is either the iBUG layout::

    version: 1
    n_points: 68
    {
    x1 y1
    ...
    }

or the bare ``x y`` lines without the header and braces. iBUG's values are 1-based (Matlab: the first pixel's
centre is at 1), so the pixel-index coordinate is the value minus 1; every point is visible (``v = 2``). The
box is the padded keypoint box (``common.BOX_PADDING``, clipped to the image). The points refer to the stored
pixel grid (Matlab's ``imread`` does not turn pictures by their EXIF orientation; files that carry one are
counted). The 68-point layout's flip map is written into the
category; other layouts get none (``tools.make_config`` then infers one from names, or uses the identity).
"""

from __future__ import annotations

import glob
import os
import re

import numpy as np

from datasets.formats.common import CocoBuilder, Conversion, Problems, outside_image, require_dir, source_header
from datasets.image_io import IMAGE_EXTENSIONS
from models.errors import InputError

# flip[i]: the point that i becomes under a horizontal flip, for the 68-point (Multi-PIE) layout, zero-based:
# jaw 0..16 reversed, brows 17..26 reversed, nose bridge 27..30 fixed, nostrils 31..35 reversed, eyes
# 36..41 <-> 45..42 / 47, 46, outer mouth 48..54 and 55..59 reversed, inner mouth 60..64 and 65..67 reversed.
FLIP_68 = (list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + list(range(35, 30, -1))
           + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
           + list(range(54, 47, -1)) + list(range(59, 54, -1)) + list(range(64, 59, -1)) + [67, 66, 65])
# iBUG's values are 1-based; this is subtracted to reach the pixel-index convention.
IBUG_ORIGIN = 1.0


def convert_pts(folder: str, skip_bad: bool = False) -> Conversion:
    """Read every ``.pts`` under ``folder`` (recursively) with its image. Raises DataError naming every
    problem (file and line) unless ``skip_bad``, which leaves the bad files out and counts them."""
    require_dir(folder, "folder of images and .pts files")
    problems = Problems(folder)
    faces = _same_point_count(_read_faces(folder, problems), problems)
    num_k = len(faces[0][1]) if faces else 68
    flip = FLIP_68 if num_k == 68 else None
    builder = CocoBuilder([f"p{i}" for i in range(num_k)], category="face", flip_index=flip)
    image_ids: dict[str, tuple[int, int, int]] = {}
    counts = {"faces": 0, "images": 0, "images_with_exif_orientation": 0}
    for path, p in faces:
        _add_face(folder, path, p, builder, image_ids, problems, counts)
    problems.raise_if_any(skip_bad)
    counts.update(builder.counts)
    counts.update({f"skipped: {k}": n for k, n in problems.counts().items()})
    notes = ([f"{num_k}-point layout: no known flip map written"] if flip is None else [])
    return Conversion(builder.to_dict(), os.path.abspath(folder), counts, notes)


def _read_faces(folder: str, problems: Problems) -> list[tuple[str, np.ndarray]]:
    """``(path, [N, 2] raw values)`` of each readable ``.pts`` under ``folder``, by path."""
    files = sorted(glob.glob(os.path.join(folder, "**", "*.pts"), recursive=True))
    if not files:
        raise InputError(f"no .pts files under {folder} (SOURCE); give the folder that holds the images and "
                         f"their .pts files")
    faces = []
    for path in files:
        pts = _read_pts(path, problems)
        if pts is not None:
            faces.append((path, pts))
    return faces


def _same_point_count(faces: list[tuple[str, np.ndarray]], problems: Problems) -> list[tuple[str, np.ndarray]]:
    """The faces with the most common number of points; each other one is a problem."""
    sizes = {len(p) for _, p in faces}
    if len(sizes) <= 1:
        return faces
    common = max(sizes, key=lambda n: sum(len(p) == n for _, p in faces))
    for path, p in faces:
        if len(p) != common:
            problems.add("different number of points", path, f"{len(p)} points; most files have {common}")
    return [(path, p) for path, p in faces if len(p) == common]


def _add_face(folder: str, path: str, p: np.ndarray, builder: CocoBuilder, image_ids: dict[str, tuple[int, int, int]],
              problems: Problems, counts: dict) -> None:
    """Add the face of one ``.pts`` (raw values ``p``, [N, 2]), and its image the first time it is met
    (``image_ids``: image path -> (image id, width, height))."""
    image = _find_image(path)
    if image is None:
        problems.add("missing image", path, "no image with this stem (or the stem without _<n>) beside it")
        return
    if image not in image_ids:
        header = source_header(image, problems, path)
        if header is None:
            return
        width, height = header.size        # the stored grid (module docstring)
        counts["images_with_exif_orientation"] += header.turned
        rel = os.path.relpath(image, folder).replace(os.sep, "/")
        image_ids[image] = (builder.add_image(rel, width, height), width, height)
        counts["images"] += 1
    image_id, width, height = image_ids[image]
    xy = p - IBUG_ORIGIN
    bad = [i for i, (x, y) in enumerate(xy) if outside_image(x, y, width, height)]
    if bad:
        problems.add("point outside the image", path, f"{len(bad)} points outside {os.path.basename(image)} "
                     f"({width}x{height}), the first is point {bad[0]} (zero-based) at "
                     f"({p[bad[0], 0]:g}, {p[bad[0], 1]:g})")
        return
    kp = np.concatenate([xy, np.full((len(xy), 1), 2.0)], axis=1)
    counts["faces"] += builder.add_instance(image_id, kp)


def _read_pts(path: str, problems: Problems) -> np.ndarray | None:
    """[N, 2] raw (1-based) values of one file, or None after adding a problem."""
    with open(path) as f:
        lines = [(i, line.strip()) for i, line in enumerate(f.read().splitlines(), start=1)]
    declared = None
    points = []
    for i, line in lines:
        if not line or line in ("{", "}") or line.lower().startswith("version"):
            continue
        if line.lower().startswith("n_points"):
            match = re.search(r"\d+", line)
            declared = int(match.group()) if match else None
            continue
        parts = line.split()
        if len(parts) != 2:
            problems.add("wrong number of columns", f"{path}: line {i}", f"{len(parts)} values, expected 'x y'")
            return None
        try:
            points.append((float(parts[0]), float(parts[1])))
        except ValueError:
            problems.add("bad number", f"{path}: line {i}", f"{line!r} is not two numbers")
            return None
    if not points:
        problems.add("no points", path, "the file holds no 'x y' lines")
        return None
    if declared is not None and declared != len(points):
        problems.add("wrong number of points", path, f"n_points says {declared}, the file has {len(points)}")
        return None
    return np.asarray(points, dtype=np.float64)


def _find_image(pts_path: str) -> str | None:
    stem = os.path.splitext(pts_path)[0]
    for candidate in (stem, re.sub(r"_\d+$", "", stem)):
        for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
            if os.path.isfile(candidate + ext):
                return candidate + ext
    return None
