"""The one check of a COCO annotation file, shared by both readers and by the ground truth given to COCOeval.

A number that is NaN, infinite or a string, an id that is not an integer or appears twice, a category or an
image that does not exist, a visibility outside {0, 1, 2}: each would turn into a silently wrong target or a
silently wrong AP (pycocotools accepts all of them). :func:`validate_coco` finds them before anything is
trained or scored and either refuses the file with a :class:`models.errors.DataError` naming the file, the
annotation id and the field, or (``data.on_bad_annotation=skip``) drops the instance and counts it by reason.

What is always an error, whatever the policy: a file whose structure is wrong (not the three lists, an image
or category record without a usable id, file name or size), duplicate image, category or annotation ids
(an annotation would be paired with the wrong image, or COCOeval would match the wrong instance).

What the policy decides, per annotation: a missing or malformed ``id``/``image_id``/``category_id``/
``bbox``/``keypoints``/``area``/``iscrowd`` field, a non-finite or huge number, a visibility outside
{0, 1, 2}, a keypoint list of the wrong length, an ``image_id`` that is not among the images.

An annotation of a category that is not in ``categories`` is not malformed, but it is never used: it is
counted (``unknown_category``), never silently dropped.
"""

from __future__ import annotations

import logging
import math
from collections import Counter

from models.errors import DataError

log = logging.getLogger(__name__)

BAD_ANNOTATION_POLICIES = ("error", "skip")
KINDS = ("keypoints", "detection")
# No image is a million pixels wide; a coordinate beyond this is a unit or export bug, and its products
# (areas, affine maps) would overflow to Inf further on.
MAX_COORDINATE = 1e6
SKIP_HINT = "fix or remove the annotation, or set data.on_bad_annotation=skip to drop such instances"


class _BadAnnotation(Exception):
    """One annotation's problem: ``reason`` is the counted key, the text says what and which field."""

    def __init__(self, reason: str, text: str):
        super().__init__(text)
        self.reason = reason


def is_int(value) -> bool:
    """A JSON integer (``True``/``False`` and integral floats such as ``3.0`` are not ids)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A JSON number that is finite (bools and strings are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_coco_layout(data, source: str, kind: str) -> None:
    """A COCO file's top level: a JSON object whose ``images``, ``annotations`` and ``categories`` are lists."""
    if not isinstance(data, dict):
        raise DataError(f"{source}: the top level is a {type(data).__name__}, not a JSON object with images, "
                        f"annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{source}: missing or non-list field {key!r} (a COCO {kind} file has images, "
                            f"annotations and categories)")


def validate_coco(data, source: str, kind: str, on_bad_annotation: str = "error") -> tuple[dict, Counter]:
    """Check a parsed COCO file; return ``(clean, dropped)``.

    Args:
        data: the parsed json (a dict with ``images``, ``annotations``, ``categories``).
        source: the file's name (or a description), put first in every message.
        kind: ``"keypoints"`` (annotations of a category with keypoint names need ``keypoints`` of 3 x K finite
            numbers with visibility in {0, 1, 2}) or ``"detection"`` (boxes only).
        on_bad_annotation: ``"error"`` raises at the first bad annotation; ``"skip"`` drops it and counts it.

    Returns:
        clean: ``{"images", "annotations", "categories"}`` with copies of the good annotations, completed
            the way COCOeval needs them (``iscrowd`` 0 when absent, ``area`` = box w x h when absent, and for
            keypoints ``num_keypoints`` = labelled points when absent). Safe to hand to pycocotools.
        dropped: ``Counter`` of the annotations left out, by reason (``bad_<field>``, ``unknown_category``).
    """
    if on_bad_annotation not in BAD_ANNOTATION_POLICIES:
        raise DataError(f"data.on_bad_annotation={on_bad_annotation!r} is not one of {BAD_ANNOTATION_POLICIES}")
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {KINDS}")
    check_coco_layout(data, source, kind)
    categories = _check_categories(data["categories"], source, kind)
    images = _check_images(data["images"], source)
    _check_unique_annotation_ids(data["annotations"], source)

    num_k = {cid: len(c["keypoints"]) for cid, c in categories.items() if c.get("keypoints")}
    dropped: Counter = Counter()
    kept = []
    for index, ann in enumerate(data["annotations"]):
        try:
            kept.append(_check_annotation(ann, images, categories, num_k, kind))
        except _BadAnnotation as bad:
            ann_id = ann.get("id", f"#{index}") if isinstance(ann, dict) else f"#{index}"
            if bad.reason == "unknown_category":
                dropped[bad.reason] += 1
                continue
            if on_bad_annotation == "error":
                raise DataError(f"{source}: annotation {ann_id}{bad}; {SKIP_HINT}") from None
            dropped[bad.reason] += 1
    if dropped.get("unknown_category"):
        known = sorted(categories)
        log.warning("%s: %d annotations have a category_id that is not in categories %s; they are left out",
                    source, dropped["unknown_category"], known)
    bad_count = sum(v for k, v in dropped.items() if k != "unknown_category")
    if bad_count:
        log.warning("%s: dropped %d malformed annotations (data.on_bad_annotation=skip): %s", source, bad_count,
                    ", ".join(f"{k} {v}" for k, v in sorted(dropped.items()) if k != "unknown_category"))
    clean = {"images": list(data["images"]), "annotations": kept, "categories": list(data["categories"])}
    return clean, dropped


def _check_categories(categories: list, source: str, kind: str) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for index, cat in enumerate(categories):
        if not isinstance(cat, dict) or not is_int(cat.get("id")):
            raise DataError(f"{source}: category #{index} has no integer 'id' (got "
                            f"{cat.get('id') if isinstance(cat, dict) else cat!r}); every category needs one")
        cid = cat["id"]
        if cid in out:
            raise DataError(f"{source}: category id {cid} appears twice in categories; ids must be unique")
        names = cat.get("keypoints")
        if kind == "keypoints" and names is not None and (
                not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
            raise DataError(f"{source}: category {cid} field 'keypoints' must be a list of keypoint names "
                            f"(strings), got {names!r}")
        skeleton = cat.get("skeleton")
        if kind == "keypoints" and skeleton is not None and not (
                isinstance(skeleton, list) and all(isinstance(p, list) and len(p) == 2 and all(is_int(i) for i in p)
                                                   for p in skeleton)):
            raise DataError(f"{source}: category {cid} field 'skeleton' must be a list of [i, j] integer pairs "
                            f"(one-based keypoint indices)")
        out[cid] = cat
    return out


def _check_images(images: list, source: str) -> dict[int, dict]:
    out: dict[int, dict] = {}
    duplicates: list[int] = []
    for index, img in enumerate(images):
        if not isinstance(img, dict):
            raise DataError(f"{source}: image record #{index} is a {type(img).__name__}, not an object")
        for key in ("id", "file_name", "width", "height"):
            if key not in img:
                raise DataError(f"{source}: image record {img.get('id', '#' + str(index))} lacks {key!r}")
        iid = img["id"]
        if not is_int(iid):
            raise DataError(f"{source}: image record #{index} has id {iid!r}, not an integer")
        if not isinstance(img["file_name"], str) or not img["file_name"]:
            raise DataError(f"{source}: image {iid} has file_name {img['file_name']!r}, not a file name")
        for key in ("width", "height"):
            value = img[key]
            if not is_number(value) or value != int(value) or value < 1 or value > MAX_COORDINATE:
                raise DataError(f"{source}: image {iid} has {key} {value!r}; it must be a positive whole number "
                                f"of pixels")
        if iid in out:
            duplicates.append(iid)
        out[iid] = img
    if duplicates:
        raise DataError(f"{source}: image ids {sorted(set(duplicates))[:10]} appear more than once in images; "
                        f"annotations would be paired with the wrong image. Give every image a unique id")
    return out


def _check_unique_annotation_ids(annotations: list, source: str) -> None:
    seen: Counter = Counter(a.get("id") for a in annotations if isinstance(a, dict) and is_int(a.get("id")))
    duplicates = sorted(i for i, n in seen.items() if n > 1)
    if duplicates:
        raise DataError(f"{source}: annotation ids {duplicates[:10]} appear more than once"
                        f"{' (' + str(len(duplicates)) + ' ids in all)' if len(duplicates) > 10 else ''}; COCOeval "
                        f"matches instances by id, so every annotation needs a unique id")


def _check_annotation(ann, images: dict, categories: dict, num_k: dict, kind: str) -> dict:
    if not isinstance(ann, dict):
        raise _BadAnnotation("bad_record", f" is a {type(ann).__name__}, not an object")
    for key in ("id", "image_id", "category_id"):
        if not is_int(ann.get(key)):
            raise _BadAnnotation(f"bad_{key}", f": field {key!r} is {ann.get(key)!r}, not an integer")
    if ann["image_id"] not in images:
        raise _BadAnnotation("bad_image_id", f" refers to image_id {ann['image_id']}, which is not in images")
    if ann["category_id"] not in categories:
        raise _BadAnnotation("unknown_category", f" has category_id {ann['category_id']}, not in categories")
    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1) or isinstance(crowd, float):
        raise _BadAnnotation("bad_iscrowd", f": field 'iscrowd' is {crowd!r}; use 0 or 1")
    bbox = ann.get("bbox")
    _check_numbers(bbox, "bbox", 4)
    if bbox[2] < 0 or bbox[3] < 0:
        raise _BadAnnotation("bad_bbox", f": field 'bbox' {bbox} has a negative width or height")
    clean = dict(ann)
    clean["iscrowd"] = int(crowd)
    if "area" in ann:
        area = ann["area"]
        if not is_number(area) or area < 0:
            raise _BadAnnotation("bad_area", f": field 'area' is {area!r}; it must be a finite number >= 0")
    else:
        clean["area"] = float(bbox[2]) * float(bbox[3])
    k = num_k.get(ann["category_id"])
    if kind == "keypoints" and k is not None:
        kpts = ann.get("keypoints")
        if not isinstance(kpts, list) or len(kpts) != 3 * k:
            got = len(kpts) if isinstance(kpts, list) else 0 if kpts is None else repr(kpts)
            name = categories[ann["category_id"]].get("name", ann["category_id"])
            raise _BadAnnotation("bad_keypoints", f" has {got} keypoint values, expected 3 x {k} (x, y, v per "
                                                  f"keypoint of category {name!r})")
        _check_numbers(kpts, "keypoints", 3 * k)
        bad_v = [v for v in kpts[2::3] if v not in (0, 1, 2)]
        if bad_v:
            raise _BadAnnotation("bad_visibility", f": field 'keypoints' has visibility {bad_v[0]!r}; COCO "
                                                   f"visibility is 0 (unlabelled), 1 (occluded) or 2 (visible)")
        labelled = sum(v > 0 for v in kpts[2::3])
        if "num_keypoints" in ann and not is_int(ann["num_keypoints"]):
            raise _BadAnnotation("bad_num_keypoints", f": field 'num_keypoints' is {ann['num_keypoints']!r}, "
                                                      f"not an integer")
        clean.setdefault("num_keypoints", int(labelled))
    return clean


def _check_numbers(values, field: str, length: int) -> None:
    if not isinstance(values, list) or len(values) != length:
        raise _BadAnnotation(f"bad_{field}", f": field {field!r} is {_short(values)}; expected a list of {length} "
                                             f"numbers")
    for i, v in enumerate(values):
        if not is_number(v):
            what = "not finite" if isinstance(v, float) else f"a {type(v).__name__}, not a number"
            raise _BadAnnotation(f"bad_{field}", f": field {field!r} value {i} is {v!r} ({what})")
        if abs(v) > MAX_COORDINATE:
            raise _BadAnnotation(f"bad_{field}", f": field {field!r} value {i} is {v!r}, beyond +-{MAX_COORDINATE:g} "
                                                 f"pixels")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_left_out(counts: dict, keys: dict[str, str]) -> str:
    """``"crowd 2, no keypoints 1"``: the non-zero counts among ``keys`` (stat key -> words), in that order."""
    parts = [f"{words} {counts[k]}" for k, words in keys.items() if counts.get(k)]
    return ", ".join(parts) if parts else "none"
