"""DeepLabCut projects -> COCO keypoints.

A project folder holds ``config.yaml`` (``bodyparts``, or ``multianimalbodyparts`` + ``individuals`` when
``multianimalproject`` is true; ``skeleton`` as pairs of names) and ``labeled-data/<video>/CollectedData_<scorer>
.csv`` (and ``.h5``, the same table written by pandas). The CSV has a header of three rows, ``scorer`` /
``bodyparts`` / ``coords``, or four with ``individuals`` after ``scorer`` in multi-animal projects; then one row
per labelled frame: the image path (one column, ``labeled-data/<video>/img0001.png``, or three in newer
versions: ``labeled-data``, ``<video>``, ``img0001.png``) and ``x, y`` per (individual,) bodypart, empty or
``NaN`` where the point is not labelled.

Coordinates: DeepLabCut labels on an image shown with pixel centres at integers (matplotlib / napari), so
``x, y`` are taken as they are (pixel-index convention); every labelled point gets ``v = 2``. One image entry per
frame, ``file_name`` relative to the project folder (the image root); one instance per individual with at least
two labelled points at different positions, its box the padded keypoint box (``common.BOX_PADDING``, at least
``common.MIN_BOX_SIZE`` across, clipped to the image). Unique bodyparts of multi-animal projects (individual
``single``) belong to no animal and are left out (counted). DeepLabCut has no flip map; ``tools.make_config``
infers one from the names.

The picture: DeepLabCut's frames are extracted from videos (no EXIF orientation) and its labelling GUIs show
the array as decoded, without turning it; a frame that does carry an orientation is labelled on its stored
grid, which is what the COCO json refers to anyway (counted, nothing to write).
"""

from __future__ import annotations

import csv
import glob
import math
import os

import numpy as np
import yaml

from datasets.formats.common import (
    CocoBuilder,
    Conversion,
    Problems,
    outside_image,
    require_dir,
    require_file,
    source_header,
)
from models.errors import DataError, InputError

_HEADER_NAMES = ("scorer", "individuals", "bodyparts", "coords")
_COORDS = ("x", "y", "likelihood")


def convert_dlc(project: str, skip_bad: bool = False) -> Conversion:
    """Read a DeepLabCut project folder (see the module docstring). Raises DataError naming every problem
    (file and line) unless ``skip_bad``, which leaves the bad items out and counts them."""
    require_dir(project, "DeepLabCut project folder")
    cfg, config_path = _read_config(project)
    multi = bool(cfg.get("multianimalproject"))
    names = _bodypart_names(cfg, multi, config_path)
    unique = set(cfg.get("uniquebodyparts") or []) if multi else set()
    builder = CocoBuilder(names, category=str(cfg.get("Task") or "animal"), skeleton=_skeleton(cfg, names))
    problems = Problems(project)
    counts = {"frames": 0, "instances": 0, "unique_bodypart_columns": 0, "frames_with_exif_orientation": 0}
    for folder in _labelled_folders(project):
        table = _read_table(folder)
        if table is not None:
            _add_table(project, table, multi, unique, builder, problems, counts)
    problems.raise_if_any(skip_bad)
    counts.update({"unlabelled_instances": 0, **builder.counts})
    counts.update({f"skipped: {k}": n for k, n in problems.counts().items()})
    return Conversion(builder.to_dict(), os.path.abspath(project), counts)


def _read_config(project: str) -> tuple[dict, str]:
    """The project's parsed ``config.yaml`` and its path."""
    config_path = os.path.join(project, "config.yaml")
    require_file(config_path, "DeepLabCut config.yaml (the project folder must hold it)")
    with open(config_path) as f:
        return yaml.safe_load(f) or {}, config_path


def _bodypart_names(cfg: dict, multi: bool, config_path: str) -> list[str]:
    names = list(cfg.get("multianimalbodyparts") if multi else cfg.get("bodyparts") or [])
    if not names:
        key = "multianimalbodyparts" if multi else "bodyparts"
        raise DataError(f"{config_path}: no {key!r} list; add the bodypart names to the config")
    return names


def _skeleton(cfg: dict, names: list[str]) -> list[tuple[int, int]]:
    """The config's skeleton as zero-based index pairs; links naming an unknown bodypart are left out."""
    index = {n: i for i, n in enumerate(names)}
    skeleton = []
    for pair in cfg.get("skeleton") or []:
        if len(pair) == 2 and pair[0] in index and pair[1] in index:
            skeleton.append((index[pair[0]], index[pair[1]]))
    return skeleton


def _labelled_folders(project: str) -> list[str]:
    folders = sorted(d for d in glob.glob(os.path.join(project, "labeled-data", "*")) if os.path.isdir(d))
    if not folders:
        raise DataError(f"{project}: no labeled-data/<video> folders; label frames in DeepLabCut first (or check "
                        f"the project path)")
    return folders


def _add_table(project: str, table, multi: bool, unique: set[str], builder: CocoBuilder, problems: Problems,
               counts: dict) -> None:
    """Add the frames of one CollectedData table (see :func:`_read_table`)."""
    path, columns, rows = table
    by_individual = _point_columns(path, columns, builder.names, multi, unique, problems, counts)
    for row in rows:
        _add_frame(project, path, row, len(columns), by_individual, builder, problems, counts)


def _point_columns(path: str, columns: list[tuple[str, str, str]], names: list[str], multi: bool, unique: set[str],
                   problems: Problems, counts: dict) -> dict[str, list[tuple[int, int, int]]]:
    """Individual -> ``(keypoint index, x column, y column)`` of its bodyparts in the table's header. Unique
    bodyparts of multi-animal projects are counted and left out; unknown or incomplete ones are problems."""
    index = {n: i for i, n in enumerate(names)}
    by_individual: dict[str, list[tuple[int, int, int]]] = {}
    seen: dict[tuple[str, str], dict[str, int]] = {}
    for j, (individual, part, coord) in enumerate(columns):
        if coord in ("x", "y"):
            seen.setdefault((individual, part), {})[coord] = j
    for (individual, part), cols in seen.items():
        if multi and (individual == "single" or part in unique):
            counts["unique_bodypart_columns"] += 1
            continue
        if part not in index:
            problems.add("unknown bodypart", f"{path}: header", f"bodypart {part!r} is not in config.yaml's "
                         f"{'multianimalbodyparts' if multi else 'bodyparts'} {names}")
            continue
        if "x" not in cols or "y" not in cols:
            problems.add("incomplete header", f"{path}: header", f"bodypart {part!r} lacks an x or y column")
            continue
        by_individual.setdefault(individual, []).append((index[part], cols["x"], cols["y"]))
    return by_individual


def _add_frame(project: str, path: str, row: tuple[int, str, list], num_columns: int,
               by_individual: dict[str, list[tuple[int, int, int]]], builder: CocoBuilder, problems: Problems,
               counts: dict) -> None:
    """Add one table row ``(line, image path, values)``: its image, and one instance per individual with at
    least two labelled points."""
    line, rel, values = row
    names = builder.names
    if len(values) != num_columns:
        problems.add("wrong number of columns", f"{path}: line {line}",
                     f"{len(values)} values, the header has {num_columns}")
        return
    image_path = os.path.join(project, rel)
    if not os.path.isfile(image_path):
        problems.add("missing image", f"{path}: line {line}", f"image {rel} not found under {project}")
        return
    header = source_header(image_path, problems, f"{path}: line {line}")
    if header is None:
        return
    width, height = header.size        # the stored grid, as DeepLabCut's GUIs show it (module docstring)
    counts["frames_with_exif_orientation"] += header.turned
    image_id = builder.add_image(rel, width, height)
    counts["frames"] += 1
    for individual, parts in by_individual.items():
        kp = np.zeros((len(names), 3))
        for k, jx, jy in parts:
            point = _read_point(values[jx], values[jy], f"{path}: line {line}", rel, individual, names[k], width,
                                height, problems)
            if point is not None:
                kp[k] = (*point, 2.0)
        counts["instances"] += builder.add_instance(image_id, kp)


def _read_point(x_cell, y_cell, where: str, rel: str, individual: str, name: str, width: int, height: int,
                problems: Problems) -> tuple[float, float] | None:
    """The pixel-index ``(x, y)`` of one labelled point, or None when it is unlabelled (empty or NaN) or a
    problem (not a number, outside the image)."""
    x, y = _number(x_cell), _number(y_cell)
    if x is None or y is None:
        problems.add("bad number", where, f"{name} has x={x_cell!r}, y={y_cell!r}; use numbers or leave empty")
        return None
    if math.isnan(x) or math.isnan(y):
        return None
    if outside_image(x, y, width, height):
        problems.add("point outside the image", where, f"{individual + ' ' if individual else ''}{name} at "
                     f"({x:g}, {y:g}) is outside {rel} ({width}x{height})")
        return None
    return x, y


def _number(cell) -> float | None:
    if isinstance(cell, (int, float)):
        return float(cell)
    text = str(cell).strip()
    if text == "" or text.lower() == "nan":
        return math.nan
    try:
        return float(text)
    except ValueError:
        return None


def _read_table(folder: str):
    """(path, columns [(individual, bodypart, coord)], rows [(line, image path, values)]) of the folder's
    CollectedData file: the CSV when there is one, else the .h5 (needs pandas and PyTables)."""
    csvs = sorted(glob.glob(os.path.join(folder, "CollectedData_*.csv")))
    if csvs:
        return _read_csv(csvs[0])
    h5s = sorted(glob.glob(os.path.join(folder, "CollectedData_*.h5")))
    if h5s:
        return _read_h5(h5s[0])
    return None


def _read_csv(path: str):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header = []
    while len(header) < len(rows) and rows[len(header)] and rows[len(header)][0].strip() in _HEADER_NAMES:
        header.append(rows[len(header)])
    kinds = [h[0].strip() for h in header]
    if "bodyparts" not in kinds or "coords" not in kinds:
        raise DataError(f"{path}: the header must have the rows scorer, (individuals,) bodyparts and coords; found "
                        f"first cells {kinds}. Save the labels again from DeepLabCut")
    coords_row = header[kinds.index("coords")]
    n_index = next((j for j, c in enumerate(coords_row) if j > 0 and c.strip() in _COORDS), None)
    if n_index is None:
        raise DataError(f"{path}: the coords row names no x/y column")
    width = len(coords_row)
    columns = []
    for j in range(n_index, width):
        individual = header[kinds.index("individuals")][j] if "individuals" in kinds else ""
        columns.append((individual, header[kinds.index("bodyparts")][j], coords_row[j].strip()))
    data = []
    for i, row in enumerate(rows[len(header):], start=len(header) + 1):
        if not any(c.strip() for c in row):
            continue
        rel = "/".join(c.strip() for c in row[:n_index] if c.strip()).replace("\\", "/")
        data.append((i, rel, row[n_index:]))
    return path, columns, data


def _read_h5(path: str):
    try:
        import pandas as pd
    except ImportError:
        raise InputError(f"{path}: reading DeepLabCut's .h5 labels needs pandas and PyTables (pip install pandas "
                         f"tables); or save the labels as CSV from DeepLabCut (it writes both), then convert "
                         f"again") from None
    try:
        df = pd.read_hdf(path)
    except ImportError as err:
        raise InputError(f"{path}: pandas cannot read HDF5 without PyTables ({err}); pip install tables, or use "
                         f"the CSV DeepLabCut writes beside it") from None
    names = list(df.columns.names)
    columns = []
    for col in df.columns:
        parts = dict(zip(names, col))
        columns.append((str(parts.get("individuals", "")), str(parts["bodyparts"]), str(parts["coords"])))
    data = []
    for i, (idx, values) in enumerate(zip(df.index, df.to_numpy(dtype=float)), start=1):
        rel = "/".join(str(p) for p in idx) if isinstance(idx, tuple) else str(idx)
        data.append((i, rel.replace("\\", "/"), list(values)))
    return path, columns, data
