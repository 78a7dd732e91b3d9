"""Inference over image files: the COCO image id of each input, and the per-image loop (read, boxes, poses).

``tools.infer`` takes images (listed by :func:`engine.video.frames.split_inputs`); results files name images
by COCO id, so each input gets one: from a COCO json's ``images`` (``--image-info``), else from a numeric
file name (``000000000785.jpg`` is id 785). With a detection-results file the id decides which boxes an
image gets, so an input whose id cannot be told is an error there; otherwise it gets a made-up id above the
largest known one. :func:`run_on_images` then takes each image's boxes from a box source and, with a
keypoint model, its poses from the two-stage pipeline (``tools.infer`` and ``tools.eval`` on detected
boxes alike).

Two pixel grids (datasets/image_io.py): a photo whose EXIF orientation says "turn me" is shown turned by every
viewer. The model sees it upright, as the person who took it does, and the drawings are upright (the points
land where the person sees the subject). Every coordinate written to a file (keypoint and detection results)
refers to the *stored* pixel grid, as a COCO json's labels and a detection file's boxes do, so that
``tools.eval`` scores them against the ground truth and one rule holds for every file; the log names the
images that were turned.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from datasets.affine import apply_affine, invert_affine
from datasets.image_io import (
    ORIENTATION_NAMES,
    ImageHeader,
    image_problem,
    orientation_matrix,
    read_image,
    undo_orientation,
)
from engine.inference.box_sources import DetectionFileBoxes, DetectorBoxes
from engine.inference.pipeline import TwoStagePipeline
from models.bbox import affine_boxes
from models.errors import DataError, InputError

log = logging.getLogger(__name__)


def image_ids_for(files: list[str], image_info: str | None) -> list[int | None]:
    """Id of each file: from ``image_info``'s file names (the longest matching path suffix), else from a
    numeric stem, else None."""
    if image_info:
        with open(image_info) as f:
            images = json.load(f).get("images")
        if not isinstance(images, list):
            raise InputError(f"--image-info {image_info} has no 'images' list; give the images' COCO json")
        by_name = {}
        for im in images:
            by_name[im["file_name"]] = int(im["id"])
            by_name.setdefault(os.path.basename(im["file_name"]), int(im["id"]))
        out = []
        for path in files:
            rel = [k for k in by_name if path.replace(os.sep, "/").endswith("/" + k) or path == k]
            out.append(by_name[max(rel, key=len)] if rel else None)
        return out
    return [int(stem) if (stem := os.path.splitext(os.path.basename(p))[0]).isdigit() else None for p in files]


def resolve_image_ids(files: list[str], ids: list[int | None], boxes: str | None,
                      image_info: str | None) -> list[int]:
    """Every file's id. With ``boxes`` (a detection file) an unknown id is an error (a made-up id could be
    another image's and take its boxes); without, files get made-up ids above the largest known one, in
    file order."""
    unresolved = [f for f, i in zip(files, ids) if i is None]
    if unresolved and boxes:
        why = (f"--image-info {image_info} does not list them" if image_info else
               "their names are not numbers and no --image-info was given")
        raise InputError(f"--boxes {boxes}: cannot tell the image id of {len(unresolved)} input files, e.g. "
                         f"{unresolved[:3]} ({why}); pass --image-info ann.json, the COCO json of these images whose "
                         f"'images' give each file_name its id, so that each image gets its own boxes")
    next_id = max((i for i in ids if i is not None), default=0) + 1
    out = []
    for i in ids:
        if i is None:
            i, next_id = next_id, next_id + 1
        out.append(i)
    return out


def inputs_with_ids(files: list[str], image_info: str | None, boxes: str | None,
                    max_images: int | None = None) -> tuple[list[tuple[str, int]], list[int | None]]:
    """``([(path, id)] of the first ``max_images`` of ``files``, the ids known for every file)``: only the
    images processed need an id, but a detection file's ids are checked against every input's."""
    ids = image_ids_for(files, image_info)
    n = max_images or len(files)
    used = resolve_image_ids(files[:n], ids[:n], boxes, image_info)
    return list(zip(files[:n], used)), used + ids[n:]


def category_names_of(image_info: str | None) -> dict[int, str]:
    """{category id: name} of a COCO json's ``categories`` (empty without one)."""
    if not image_info:
        return {}
    with open(image_info) as f:
        cats = json.load(f).get("categories") or []
    return {int(c["id"]): str(c["name"]) for c in cats if isinstance(c, dict) and "id" in c and "name" in c}


@dataclass
class ImageResult:
    """One image's outcome: its boxes and, with a keypoint pipeline, the poses kept (records as
    :meth:`TwoStagePipeline.run` returns them); with a detector, its full detections (all classes).

    Coordinates are those of the image :func:`run_on_images` hands to ``on_image`` (upright: EXIF orientation
    applied), so that drawing needs no mapping; ``orientation`` is that EXIF orientation (1: stored = upright).
    The records in :class:`TwoStageRun` are mapped back to the stored grid.
    """

    path: str
    image_id: int
    boxes: np.ndarray
    box_scores: np.ndarray
    poses: list[dict] = field(default_factory=list)
    detections: dict | None = None
    orientation: int = 1


@dataclass
class TwoStageRun:
    """What :func:`run_on_images` did: pose records of every image, detections (with a detector), the number
    of boxes used, the images that could not be read, and the box source's counts."""

    records: list[dict] = field(default_factory=list)
    detections: list[dict] = field(default_factory=list)
    num_boxes: int = 0
    num_images: int = 0
    unreadable: list[str] = field(default_factory=list)
    box_stats: dict = field(default_factory=dict)
    turned: dict[str, int] = field(default_factory=dict)    # path -> EXIF orientation, for images shown turned



def run_on_images(images: Sequence[tuple[str, int]], source, pipeline: TwoStagePipeline | None = None,
                  on_bad_image: str = "skip", progress: bool = True,
                  on_image: Callable[[np.ndarray, ImageResult], None] | None = None) -> TwoStageRun:
    """Boxes from ``source``, then poses from ``pipeline`` (when given), for every ``(path, image_id)``.

    Each image is read upright (EXIF orientation applied, the module docstring says why); a detection file's
    boxes, which refer to the stored grid, are turned with it. ``on_image(image, result)`` sees each upright
    image and its result in that grid (to draw it, say); ``records`` and ``detections`` of the returned run are
    in the stored grid. An unreadable image is skipped with a warning (``on_bad_image="skip"``) or raises
    ``DataError`` (``"error"``).
    """
    run = TwoStageRun()
    for path, image_id in tqdm(list(images), desc="two-stage", disable=not progress, leave=False):
        image, header = read_image(path, upright=True)
        if image is None:
            why = image_problem(path) or "corrupt"
            if on_bad_image == "error":
                raise DataError(f"cannot read image {path} ({why}); fix or remove it, or skip such images "
                                f"(--on-bad-image skip)")
            log.warning("cannot read image %s (%s); skipped", path, why)
            run.unreadable.append(path)
            continue
        grid = _Grid(header)
        if isinstance(source, DetectionFileBoxes):
            # the file's boxes refer to the stored grid: clip them there, then turn them with the picture
            boxes, scores = source.boxes_for(image_id, grid.stored_view(image))
            boxes = grid.boxes_to_upright(boxes)
        else:
            boxes, scores = source.boxes_for(image_id, image)
        result = ImageResult(path, int(image_id), boxes, scores, orientation=grid.orientation)
        if isinstance(source, DetectorBoxes):
            result.detections = {"image_id": int(image_id), **source.last}
            run.detections.append(grid.detections_to_stored(result.detections))
        if pipeline is not None:
            result.poses = pipeline.run(image, image_id, boxes, scores)
            run.records.extend(grid.pose_to_stored(r) for r in result.poses)
        if grid.orientation != 1:
            run.turned[path] = grid.orientation
        run.num_boxes += len(boxes)
        run.num_images += 1
        if on_image is not None:
            on_image(image, result)
    run.box_stats = source.log_summary()
    if run.unreadable:
        log.warning("%d images could not be read and have no predictions, e.g. %s", len(run.unreadable),
                    run.unreadable[:3])
    if run.turned:
        path, code = next(iter(run.turned.items()))
        log.info("%d images carry an EXIF orientation and were read turned as viewers show them, e.g. %s (%d: %s); "
                 "drawings are upright, coordinates in the results files refer to the stored pixel grid "
                 "(docs/formats.md, 'Image files')", len(run.turned), path, code, ORIENTATION_NAMES[code])
    return run


class _Grid:
    """The stored <-> upright map of one image (identity without an EXIF orientation): boxes inclusive xyxy
    [N, 4], keypoints [..., K, 2], pixel-index coordinates."""

    def __init__(self, header: ImageHeader | None):
        self.orientation = header.orientation if header is not None else 1
        if self.orientation != 1:
            self.to_upright = orientation_matrix(header.orientation, *header.size)
            self.to_stored = invert_affine(self.to_upright)

    def stored_view(self, image: np.ndarray) -> np.ndarray:
        return image if self.orientation == 1 else undo_orientation(image, self.orientation)

    def boxes_to_upright(self, boxes: np.ndarray) -> np.ndarray:
        return boxes if self.orientation == 1 else affine_boxes(np.asarray(boxes, np.float64), self.to_upright)

    def pose_to_stored(self, record: dict) -> dict:
        if self.orientation == 1:
            return record
        return {**record, "bbox": affine_boxes(np.asarray(record["bbox"], np.float64), self.to_stored),
                "keypoints": apply_affine(np.asarray(record["keypoints"], np.float64), self.to_stored)}

    def detections_to_stored(self, detections: dict) -> dict:
        if self.orientation == 1:
            return detections
        return {**detections, "boxes": affine_boxes(np.asarray(detections["boxes"], np.float64).reshape(-1, 4),
                                                    self.to_stored)}

