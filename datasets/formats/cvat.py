"""CVAT for images 1.1 (XML) -> COCO keypoints.

The export is one ``annotations.xml``: ``<meta>`` lists the labels (a skeleton label has ``<type>skeleton
</type>`` and an ``<svg>`` template whose ``<circle data-node-id data-label-name>`` are its points and whose
``<line data-node-from data-node-to>`` are its edges; its points are labels with ``<parent>`` = the skeleton),
then one ``<image name width height [subset]>`` per image holding the shapes:

- ``<skeleton label="person">`` with one ``<points label="nose" outside="0|1" occluded="0|1" points="x,y">`` per
  element: one instance (``outside`` -> unlabelled, ``occluded`` -> ``v = 1``, else ``v = 2``);
- or, for tasks labelled with plain points, ``<points label="nose" points="x,y" group_id="3">``: the points of
  one ``group_id`` are one instance (points without a group form one instance per image);
- ``<box xtl ytl xbr ybr>`` with the instance's ``group_id``: its box (else the padded keypoint box).

Coordinates: CVAT measures from the image's corner (pixel ``i`` covers ``[i, i + 1)``), so a point's
pixel-index coordinate is the value minus 0.5 and a box's corners are COCO's edges: ``[xtl, ytl, xbr - xtl,
ybr - ytl]`` (clipped to the image). ``subset`` becomes the image's ``split``. The image root is the xml's
folder's ``images/`` when it exists (CVAT's export layout), else the xml's folder.

The picture: CVAT 2.1 and later (2022, cvat-ai/cvat#4529) show images turned upright by their EXIF orientation
and export that upright ``width`` / ``height``; older versions showed and exported the stored grid. The
``<image>`` size tells the two apart for 90° turns; when both grids have the same size (mirrors, 180°) the
labels are taken as upright (current CVAT). Upright labels on a file with an orientation get an upright copy
beside the output json (``common.ImageToWrite``); a size that fits neither grid is a problem.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET

import numpy as np

from datasets.formats.common import (
    CocoBuilder,
    Conversion,
    ImageToWrite,
    Problems,
    add_image_in_grid,
    labelled_grid,
    outside_image,
    require_file,
    size_mismatch,
    source_header,
)
from models.errors import DataError

CVAT_ORIGIN = 0.5   # subtracted from stored points: corner-origin -> pixel-index
_ATTR = re.compile(r'([\w-]+)="([^"]*)"')


def convert_cvat(xml_path: str, image_root: str | None = None, skeleton: str | None = None,
                 skip_bad: bool = False) -> Conversion:
    """Read a CVAT for images 1.1 xml (see the module docstring). ``skeleton`` picks one skeleton label when
    the task has several. Raises DataError naming every problem (image and element) unless ``skip_bad``."""
    require_file(xml_path, "CVAT annotations xml")
    root = _parse_xml(xml_path)
    if image_root is None:
        image_root = _default_image_root(xml_path)
    labels = _labels(root)
    skeleton = _pick_skeleton(labels, skeleton, xml_path)
    names, edges, category = _keypoints(root, labels, skeleton, xml_path)
    builder = CocoBuilder(names, category=str(category), skeleton=edges)
    problems = Problems(xml_path)
    counts = {"images": 0, "instances": 0}
    to_write: list[ImageToWrite] = []
    for image in root.iter("image"):
        _add_image(image, image_root, skeleton, builder, problems, counts, to_write)
    problems.raise_if_any(skip_bad)
    counts.update(builder.counts)
    counts.update({f"skipped: {k}": n for k, n in problems.counts().items()})
    return Conversion(builder.to_dict(), os.path.abspath(image_root), counts, images_to_write=to_write)


def _parse_xml(xml_path: str) -> ET.Element:
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as err:
        raise DataError(f"{xml_path}: not valid XML ({err}); export the task again as 'CVAT for images 1.1'") from None
    if root.tag != "annotations":
        raise DataError(f"{xml_path}: the root element is <{root.tag}>, not <annotations>; export as 'CVAT for "
                        f"images 1.1' (not 'for video')")
    return root


def _default_image_root(xml_path: str) -> str:
    """``images/`` beside the xml when it exists (CVAT's export layout), else the xml's folder."""
    folder = os.path.dirname(os.path.abspath(xml_path))
    return os.path.join(folder, "images") if os.path.isdir(os.path.join(folder, "images")) else folder


def _pick_skeleton(labels: dict[str, dict], skeleton: str | None, xml_path: str) -> str | None:
    """The skeleton label to read: the one asked for, else the task's only one; None when it has none."""
    skeletons = [n for n, lab in labels.items() if lab["type"] == "skeleton"]
    if skeleton is not None and skeleton not in skeletons:
        raise DataError(f"{xml_path}: no skeleton label {skeleton!r}; the task has {skeletons}")
    if len(skeletons) > 1 and skeleton is None:
        raise DataError(f"{xml_path}: several skeleton labels {skeletons}; pick one with --skeleton NAME")
    return skeleton or (skeletons[0] if skeletons else None)


def _keypoints(root: ET.Element, labels: dict[str, dict], skeleton: str | None,
               xml_path: str) -> tuple[list[str], list[tuple[int, int]], str]:
    """``(keypoint names, zero-based skeleton edges, category name)``: the skeleton's points, or, without a
    skeleton, the task's point labels."""
    if skeleton:
        names = [n for n, lab in labels.items() if lab["parent"] == skeleton]
        node_names = _svg_nodes(labels[skeleton]["svg"])
        if not names:
            names = [node_names[k] for k in sorted(node_names, key=int)]
        edges = _svg_edges(labels[skeleton]["svg"], node_names, names)
        category = skeleton
    else:
        names = [n for n, lab in labels.items() if lab["type"] == "points" and not lab["parent"]]
        if not names:   # old exports list no types: every label used by a <points> element, in first-met order
            names = list(dict.fromkeys(p.get("label") for p in root.iter("points")))
        edges = []
        category = next((b.get("label") for b in root.iter("box")), None) or "object"
    if not names:
        raise DataError(f"{xml_path}: no keypoint labels (no skeleton and no points) in the task")
    return names, edges, category


def _add_image(image: ET.Element, image_root: str, skeleton: str | None, builder: CocoBuilder, problems: Problems,
               counts: dict, to_write: list[ImageToWrite]) -> None:
    """Add one ``<image>`` (in the grid its labels refer to) and its instances (see the module docstring)."""
    name = image.get("name", "")
    where = f"<image id={image.get('id')} name={name!r}>"
    claimed = (int(float(image.get("width"))), int(float(image.get("height")))) \
        if image.get("width") and image.get("height") else None
    path = os.path.join(image_root, name)
    if not os.path.isfile(path):
        problems.add("missing image", where, f"not found under the image root {image_root} (--image-root)")
        return
    header = source_header(path, problems, where)
    if header is None:
        return
    grid = labelled_grid(header, claimed, shows_upright=True)
    if grid is None:
        problems.add("image size mismatch", f"{where} width/height", size_mismatch(
            header, claimed, path, "give the images the task was made from (--image-root), or export again"))
        return
    subset = image.get("subset")
    image_id, (width, height) = add_image_in_grid(builder, to_write, name, path, header, grid,
                                                  subset.lower() if subset else None)
    counts["images"] += 1
    boxes = {b.get("group_id"): b for b in image.findall("box")}
    for elements, group in _instances(image, skeleton):
        kp = _read_points(elements, name, builder.names, width, height, problems)
        box = boxes.get(group) if group is not None else None
        bbox = None
        if box is not None:
            xtl, ytl, xbr, ybr = (float(box.get(k)) for k in ("xtl", "ytl", "xbr", "ybr"))
            bbox = [xtl, ytl, xbr - xtl, ybr - ytl]
        counts["instances"] += builder.add_instance(image_id, kp, bbox=bbox)


def _instances(image: ET.Element, skeleton: str | None) -> list[tuple[list, object]]:
    """``(points elements, group id)`` of each instance of an image: its skeletons of the label ``skeleton``,
    or without a skeleton its points grouped by ``group_id``."""
    if skeleton:
        return [(list(s.findall("points")), s.get("group_id")) for s in image.findall("skeleton")
                if s.get("label") == skeleton]
    groups: dict[object, list] = {}
    for p in image.findall("points"):
        groups.setdefault(p.get("group_id"), []).append(p)
    return [(pts, g) for g, pts in groups.items()]


def _read_points(elements: list, name: str, names: list[str], width: int, height: int,
                 problems: Problems) -> np.ndarray:
    """[K, 3] pixel-index (x, y, v) of one instance's ``<points>`` elements; a bad element is a problem and
    leaves its keypoint unlabelled."""
    index = {n: i for i, n in enumerate(names)}
    kp = np.zeros((len(names), 3))
    for p in elements:
        where = f"<image name={name!r}> <points label={p.get('label')!r}>"
        label = p.get("label")
        if label not in index:
            problems.add("unknown bodypart", where, f"not one of the keypoints {names}")
            continue
        if p.get("outside") == "1":
            continue
        coords = [c for c in (p.get("points") or "").split(";") if c]
        if len(coords) != 1:
            problems.add("not one point", where, f"{len(coords)} points; a keypoint label needs exactly one")
            continue
        x, y = (float(v) - CVAT_ORIGIN for v in coords[0].split(","))
        if outside_image(x, y, width, height):
            problems.add("point outside the image", where, f"{coords[0]} is outside {width}x{height}")
            continue
        kp[index[label]] = (x, y, 1.0 if p.get("occluded") == "1" else 2.0)
    return kp


def _labels(root: ET.Element) -> dict[str, dict]:
    """Label name -> {type, parent, svg}, in the meta's order (task or project exports)."""
    out = {}
    meta = root.find("meta")
    if meta is None:
        return out
    for label in meta.iter("label"):
        name = label.findtext("name")
        if name:
            out[name] = {"type": (label.findtext("type") or "").strip(),
                         "parent": (label.findtext("parent") or "").strip(), "svg": label.findtext("svg") or ""}
    return out


def _svg_nodes(svg: str) -> dict[str, str]:
    """Node id -> point label name, from the skeleton template's circles."""
    nodes = {}
    for tag in re.findall(r"<circle\b[^>]*>", svg):
        attrs = dict(_ATTR.findall(tag))
        if "data-node-id" in attrs and "data-label-name" in attrs:
            nodes[attrs["data-node-id"]] = attrs["data-label-name"]
    return nodes


def _svg_edges(svg: str, nodes: dict[str, str], names: list[str]) -> list[tuple[int, int]]:
    index = {n: i for i, n in enumerate(names)}
    edges = []
    for tag in re.findall(r"<line\b[^>]*>", svg):
        attrs = dict(_ATTR.findall(tag))
        a, b = nodes.get(attrs.get("data-node-from", "")), nodes.get(attrs.get("data-node-to", ""))
        if a in index and b in index:
            edges.append((index[a], index[b]))
    return edges
