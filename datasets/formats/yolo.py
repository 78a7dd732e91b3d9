"""Ultralytics YOLO-pose <-> COCO keypoints.

A YOLO-pose set is a ``data.yaml`` (``path``: the root, relative to the yaml's folder here; ``train`` / ``val``
/ ``test``: image folders or .txt lists of images, relative to the root; ``kpt_shape: [K, 2 or 3]``;
``flip_idx``; ``names``; optionally ``kpt_names``) and one ``labels/.../<stem>.txt`` per image (the image path
with its last ``/images/`` replaced by ``/labels/``), one line per instance:
``cls cx cy w h x1 y1 [v1] ... xK yK [vK]``, every coordinate divided by the image's width or height.

Coordinates: Ultralytics measures from the image's corner (its horizontal flip is ``x -> W - x``), so a
normalised ``nx`` is the pixel-index ``x = nx * W - 0.5`` (and back, ``nx = (x + 0.5) / W``); the box's corners
map to COCO's ``[x, y, w, h] = [(cx - w/2) W, (cy - h/2) H, w W, h H]`` (COCO's box edges sit at ``x - 0.5``
in pixel-index terms, docs/conventions.md). With 2 values per point every point is visible (``v = 2``) except
``0 0``, which Ultralytics' own converters write for unlabelled points (``v = 0``). Splits are the yaml's keys.
Boxes are clipped to the image.

The picture: Ultralytics reads images turned upright by their EXIF orientation (``cv2.imread``, and
``exif_size`` when it checks the labels), so the normalised values refer to the upright picture: they are
scaled by the upright size, and a file with an orientation gets an upright copy beside the output json
(``common.ImageToWrite``). ``coco_to_yolo`` writes files whose stored grid is the labels' grid.
"""

from __future__ import annotations

import glob
import os
import shutil
from dataclasses import dataclass

import numpy as np
import yaml

from datasets.formats.common import (
    CocoBuilder,
    Conversion,
    ImageToWrite,
    Problems,
    add_image_in_grid,
    outside_image,
    relative_to,
    require_file,
    save_without_orientation,
    source_header,
)
from datasets.formats.names import flip_index_from_names
from datasets.image_io import IMAGE_EXTENSIONS, image_problem, read_header, read_image_rgb
from models.errors import DataError, InputError

SPLIT_KEYS = ("train", "val", "test")


@dataclass(frozen=True)
class _Layout:
    """What every label line must match: ``kpt_shape`` as the yaml writes it, K keypoints of ``dims`` values
    (2: x y, 3: x y v) and the class names."""

    kpt_shape: list
    num_k: int
    dims: int
    class_names: list[str]

    @property
    def columns(self) -> int:
        return 5 + self.num_k * self.dims


def convert_yolo(data_yaml: str, skip_bad: bool = False) -> Conversion:
    """Read a YOLO-pose set from its ``data.yaml`` (see the module docstring). Raises DataError naming every
    problem (file and line) unless ``skip_bad``, which leaves the bad items out and counts them."""
    require_file(data_yaml, "YOLO data.yaml")
    with open(data_yaml) as f:
        cfg = yaml.safe_load(f) or {}
    layout = _layout(cfg, data_yaml)
    kpt_names = _keypoint_names(cfg.get("kpt_names"), layout.num_k, data_yaml)
    flip = _flip_index(cfg.get("flip_idx"), layout.num_k, data_yaml)
    root = _dataset_root(cfg, data_yaml)
    builder = CocoBuilder(kpt_names, category=layout.class_names[0], flip_index=flip)
    for name in layout.class_names[1:]:
        builder.add_category(name, flip_index=flip)
    problems = Problems(data_yaml)
    counts = {"images": 0, "instances": 0, "images_without_labels": 0}
    to_write: list[ImageToWrite] = []
    for split in _split_keys(cfg, data_yaml):
        images, label_dirs = _split_images(root, cfg[split], split, data_yaml)
        _check_orphan_labels(images, label_dirs, problems)
        for image_path in images:
            _add_image(image_path, root, split, layout, builder, problems, counts, to_write)
    problems.raise_if_any(skip_bad)
    counts.update(builder.counts)
    counts.update({f"skipped: {k}": n for k, n in problems.counts().items()})
    return Conversion(builder.to_dict(), os.path.abspath(root), counts, images_to_write=to_write)


def _layout(cfg: dict, data_yaml: str) -> _Layout:
    kpt_shape = cfg.get("kpt_shape")
    if not (isinstance(kpt_shape, list) and len(kpt_shape) == 2 and kpt_shape[1] in (2, 3)):
        raise DataError(f"{data_yaml}: kpt_shape must be [K, 2] or [K, 3] (keypoints, values per point); got "
                        f"{kpt_shape!r}")
    return _Layout(kpt_shape, int(kpt_shape[0]), int(kpt_shape[1]), _class_names(cfg.get("names"), data_yaml))


def _flip_index(flip, num_k: int, data_yaml: str) -> list | None:
    if flip is not None and sorted(int(i) for i in flip) != list(range(num_k)):
        raise DataError(f"{data_yaml}: flip_idx {flip} is not a permutation of 0..{num_k - 1}")
    return flip


def _dataset_root(cfg: dict, data_yaml: str) -> str:
    """The yaml's ``path``, relative to the yaml's folder unless absolute."""
    root = cfg.get("path") or "."
    return os.path.normpath(root if os.path.isabs(root) else os.path.join(os.path.dirname(data_yaml) or ".", root))


def _split_keys(cfg: dict, data_yaml: str) -> list[str]:
    splits = [k for k in SPLIT_KEYS if cfg.get(k)]
    if not splits:
        raise DataError(f"{data_yaml}: no train/val/test entry; name the image folders (e.g. train: images/train)")
    return splits


def _check_orphan_labels(images: list[str], label_dirs: list[str], problems: Problems) -> None:
    """A problem for each label file whose image is gone."""
    stems = {os.path.splitext(p)[0] for p in images}
    for label_dir in label_dirs:
        for txt in sorted(glob.glob(os.path.join(label_dir, "**", "*.txt"), recursive=True)):
            if _image_path_stem(txt) not in stems:
                problems.add("label file without its image", txt, "no image with this name in the images "
                             "folder; add the image or delete the label file")


def _add_image(image_path: str, root: str, split: str, layout: _Layout, builder: CocoBuilder, problems: Problems,
               counts: dict, to_write: list[ImageToWrite]) -> None:
    """Add one image (in the upright grid Ultralytics labels on) and the instances of its label file (an image
    without one has no instances)."""
    label_path = _label_path(image_path)
    header = source_header(image_path, problems, image_path)
    if header is None:
        return
    image_id, (width, height) = add_image_in_grid(builder, to_write, relative_to(root, image_path), image_path,
                                                  header, "upright", split)
    counts["images"] += 1
    if not os.path.isfile(label_path):
        counts["images_without_labels"] += 1
        return
    with open(label_path) as f:
        lines = f.read().splitlines()
    for line_no, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        instance = _read_instance(parts, f"{label_path}: line {line_no}", layout, width, height, problems)
        if instance is None:
            continue
        cls, bbox, kp = instance
        counts["instances"] += builder.add_instance(image_id, kp, bbox=bbox, category_id=cls + 1)


def _read_instance(parts: list[str], where: str, layout: _Layout, width: int, height: int,
                   problems: Problems) -> tuple[int, list[float], np.ndarray] | None:
    """``(class index, COCO bbox [x, y, w, h], keypoints [K, 3])`` of one label line (pixel-index points), or
    None after adding a problem. A bad point is a problem but leaves the rest of the instance."""
    if len(parts) != layout.columns:
        problems.add("wrong number of columns", where, f"{len(parts)} values; kpt_shape {layout.kpt_shape} "
                     f"needs 5 + {layout.num_k} x {layout.dims} = {layout.columns}")
        return None
    try:
        values = [float(p) for p in parts]
    except ValueError:
        problems.add("bad number", where, "a value is not a number")
        return None
    cls = int(values[0])
    if cls != values[0] or not 0 <= cls < len(layout.class_names):
        problems.add("unknown class", where, f"class {parts[0]} is not in names {layout.class_names}")
        return None
    cx, cy, w, h = values[1:5]
    bbox = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
    pts = np.array(values[5:]).reshape(layout.num_k, layout.dims)
    return cls, bbox, _read_points(pts, where, width, height, problems)


def _read_points(pts: np.ndarray, where: str, width: int, height: int, problems: Problems) -> np.ndarray:
    """[K, 3] pixel-index (x, y, v) of a line's normalised points ``pts`` ([K, 2] or [K, 3]); a point with a
    bad visibility or outside the image is a problem and stays unlabelled."""
    num_k, dims = pts.shape
    kp = np.zeros((num_k, 3))
    for k in range(num_k):
        nx, ny = pts[k, 0], pts[k, 1]
        v = pts[k, 2] if dims == 3 else (0.0 if nx == 0 and ny == 0 else 2.0)
        if v not in (0, 1, 2):
            problems.add("bad visibility", where, f"point {k} has visibility {v:g}; use 0, 1 or 2")
            continue
        if v == 0:
            continue
        x, y = nx * width - 0.5, ny * height - 0.5
        if outside_image(x, y, width, height):
            problems.add("point outside the image", where, f"point {k} at normalised ({nx:g}, {ny:g}) "
                         f"is outside [0, 1]")
            continue
        kp[k] = (x, y, v)
    return kp


def coco_to_yolo(coco: dict, image_root: str, output_dir: str, copy_images: bool = False,
                 default_split: str = "train") -> str:
    """Write a COCO dict as a YOLO set under ``output_dir``; returns the data.yaml's path.

    A COCO keypoint file gives a YOLO-pose set; a COCO detection file (no category with ``keypoints``) gives
    a YOLO detection set (``class cx cy w h`` per object, normalised by the image's size; the +1 box
    ``[x, y, w, h]`` spans the pixel edges ``x - 0.5`` to ``x + w - 0.5``, which are ``x / W`` to
    ``(x + w) / W`` in YOLO's normalised edge coordinates).

    ``images/<split>/<file>`` link to the originals (copies with ``copy_images``; a file with an EXIF orientation
    gets a copy of its stored grid without it, as Ultralytics would turn it), ``labels/<split>/<stem>.txt``
    hold the instances (3 values per point, so visibility survives), and ``data.yaml`` names the splits,
    the classes (``names``) and for pose ``kpt_shape``, ``flip_idx`` (the category's, else inferred from the
    names) and ``kpt_names``. Each image goes to its ``"split"`` (``default_split`` when it has none). Crowd
    annotations are left out. Reading a pose result back with :func:`convert_yolo` gives the same keypoints and
    boxes to float precision.
    """
    cats = [c for c in coco.get("categories", []) if c.get("keypoints")]
    pose = bool(cats)
    if not pose:            # a detection file: every category is a class, in id order
        cats = sorted(coco.get("categories", []), key=lambda c: int(c["id"]))
        if not cats:
            raise DataError("the COCO file has no categories; YOLO needs the classes")
    names = list(cats[0]["keypoints"]) if pose else []
    if pose and any(list(c["keypoints"]) != names for c in cats):
        raise DataError("the COCO file's keypoint categories have different keypoint lists; YOLO-pose has one "
                        "kpt_shape for all classes")
    class_of = {int(c["id"]): i for i, c in enumerate(cats)}
    flip = (cats[0].get("flip_index") or flip_index_from_names(names)[0]) if pose else []
    lines: dict[int, list[str]] = {}
    sizes = {int(img["id"]): (int(img["width"]), int(img["height"])) for img in coco["images"]}
    for ann in coco["annotations"]:
        if ann.get("iscrowd") or int(ann.get("category_id", -1)) not in class_of:
            continue
        width, height = sizes[int(ann["image_id"])]
        x, y, w, h = (float(v) for v in ann["bbox"])
        values = [class_of[int(ann["category_id"])], (x + w / 2) / width, (y + h / 2) / height, w / width, h / height]
        kp = np.asarray(ann["keypoints"], dtype=float).reshape(-1, 3) if pose else np.zeros((0, 3))
        for px, py, v in kp:
            values += [(px + 0.5) / width, (py + 0.5) / height, int(v)] if v > 0 else [0.0, 0.0, 0]
        # repr of a Python float is the shortest text that reads back to the same float: an exact round trip
        text = " ".join(str(v) if isinstance(v, int) else repr(float(v)) for v in values)
        lines.setdefault(int(ann["image_id"]), []).append(text)
    splits = set()
    for img in coco["images"]:
        split = str(img.get("split") or default_split)
        splits.add(split)
        rel = path_within_split(img["file_name"], split)
        src = os.path.join(image_root, img["file_name"])
        if not os.path.isfile(src):
            raise InputError(f"image {src} not found (file_name {img['file_name']!r} under --image-root "
                             f"{image_root}); give the image root the COCO file's names resolve against")
        dst = os.path.join(output_dir, "images", split, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.lexists(dst):
            os.remove(dst)
        header = read_header(src)
        if header is not None and header.turned:
            # COCO labels refer to the stored grid, Ultralytics would turn the file upright: write the stored
            # grid without the orientation (PNG unless the name says JPEG).
            image = read_image_rgb(src)
            if image is None:
                raise InputError(f"image {src} cannot be read ({image_problem(src)}); fix or remove it")
            save_without_orientation(image, dst)
        elif copy_images:
            shutil.copy2(src, dst)
        else:
            os.symlink(os.path.abspath(src), dst)
        label = os.path.join(output_dir, "labels", split, os.path.splitext(rel)[0] + ".txt")
        os.makedirs(os.path.dirname(label), exist_ok=True)
        with open(label, "w") as f:
            f.write("".join(line + "\n" for line in lines.get(int(img["id"]), [])))
    data = {"path": os.path.abspath(output_dir), **{s: f"images/{s}" for s in sorted(splits)}}
    if pose:
        data.update({"kpt_shape": [len(names), 3], "flip_idx": [int(i) for i in flip]})
    data["names"] = {i: c["name"] for i, c in enumerate(cats)}
    if pose:
        data["kpt_names"] = {0: names}
    path = os.path.join(output_dir, "data.yaml")
    with open(path + ".tmp", "w") as f:   # last, and atomically: a data.yaml means a complete set
        yaml.safe_dump(data, f, sort_keys=False)
    os.replace(path + ".tmp", path)
    return path


def path_within_split(file_name: str, split: str) -> str:
    """Where ``coco_to_yolo`` puts an image under ``images/<split>/``: its ``file_name`` less a leading
    ``images/<split>/``."""
    prefix = f"images/{split}/"
    return file_name[len(prefix):] if file_name.startswith(prefix) else file_name


def _class_names(names, data_yaml: str) -> list[str]:
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names, key=int)]
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    raise DataError(f"{data_yaml}: names must list the classes (e.g. names: {{0: person}})")


def _keypoint_names(kpt_names, num_k: int, data_yaml: str) -> list[str]:
    if isinstance(kpt_names, dict) and kpt_names:
        kpt_names = kpt_names[sorted(kpt_names, key=int)[0]]
    if kpt_names is None:
        return [f"kp{i}" for i in range(num_k)]
    if len(kpt_names) != num_k:
        raise DataError(f"{data_yaml}: kpt_names has {len(kpt_names)} names, kpt_shape says {num_k}")
    return [str(n) for n in kpt_names]


def _split_images(root: str, entry, split: str, data_yaml: str) -> tuple[list[str], list[str]]:
    """The images of one split entry (a folder, a .txt list, or a list of either) and their label folders."""
    images, label_dirs = [], []
    for item in entry if isinstance(entry, list) else [entry]:
        path = item if os.path.isabs(item) else os.path.join(root, item)
        if os.path.isdir(path):
            found = sorted(p for p in glob.glob(os.path.join(path, "**", "*"), recursive=True)
                           if p.lower().endswith(IMAGE_EXTENSIONS))
            images += found
            label_dir = _label_path(os.path.join(path, "x.jpg"))
            if os.path.isdir(os.path.dirname(label_dir)):
                label_dirs.append(os.path.dirname(label_dir))
        elif os.path.isfile(path) and path.endswith(".txt"):
            with open(path) as f:
                for line in f.read().splitlines():
                    if line.strip():
                        p = line.strip()
                        images.append(p if os.path.isabs(p) else os.path.normpath(os.path.join(root, p)))
        else:
            raise DataError(f"{data_yaml}: {split}: {item!r} is neither an image folder nor a .txt list under the "
                            f"root {root}; fix the path (relative to 'path')")
    missing = [p for p in images if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{data_yaml}: {split}: {len(missing)} listed images are missing, e.g. {missing[0]}")
    return images, label_dirs


def _label_path(image_path: str) -> str:
    """Ultralytics' rule: the last ``/images/`` of the path becomes ``/labels/``, the extension ``.txt``."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    head, sep, tail = image_path.rpartition(sa)
    path = head + sb + tail if sep else image_path
    return os.path.splitext(path)[0] + ".txt"


def _image_path_stem(label_path: str) -> str:
    sa, sb = f"{os.sep}labels{os.sep}", f"{os.sep}images{os.sep}"
    head, sep, tail = label_path.rpartition(sa)
    return os.path.splitext(head + sb + tail if sep else label_path)[0]
