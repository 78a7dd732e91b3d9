"""Property-based fuzzing (hypothesis) of both COCO readers and of the evaluation, on tiny real sets.

A valid file (3 openfield images with keypoints, 3 fruits_nuts images with boxes) gets 1-3 random mutations:
fields deleted, types changed, NaN / Inf / huge / negative / zero values, list elements replaced, duplicate
or dangling ids, empty lists, records duplicated. Then, under either ``data.on_bad_annotation`` policy:

* the reader yields samples whose every target is finite, or raises :class:`DataError` naming the file;
  never another exception, never a non-finite target;
* the evaluation, given predictions equal to the ground truth it kept, refuses the file (DataError) or
  scores it with finite metrics and accounts for every annotation (kept + left out = in the file); nothing
  non-finite ever reaches pycocotools (checked inside COCOeval itself).

Each property runs a bounded number of examples (``max_examples`` below, no deadline), derandomised so that
CI sees the same cases every time.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
from unittest import mock

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from datasets.coco_validate import validate_coco  # noqa: E402
from models.errors import DataError  # noqa: E402

EXAMPLES = 80
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ODD_VALUES = st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -1e300, -5, -1, 0, 0.5, 3, 7, 10**12, "x", "1",
                              "", None, True, False, [], {}, [1, 2], [math.nan] * 4, [0, 0, 0, 0], 999999])


def _subset(src_dir: str, ann: str, dst, n: int) -> dict:
    data = json.load(open(os.path.join(src_dir, ann)))
    images = data["images"][:n]
    ids = {im["id"] for im in images}
    (dst / "images").mkdir(exist_ok=True)
    for im in images:
        shutil.copy(os.path.join(src_dir, "images", im["file_name"]), dst / "images" / im["file_name"])
    return {"images": images, "annotations": [a for a in data["annotations"] if a["image_id"] in ids],
            "categories": data["categories"]}


@pytest.fixture(scope="module")
def kpt_base(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_kpt")
    return root, _subset(os.path.join(shared_data, "openfield"), "val.json", root, 3)


@pytest.fixture(scope="module")
def det_base(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_det")
    data = _subset(os.path.join(shared_data, "fruits_nuts"), "trainval.json", root, 3)
    for a in data["annotations"]:
        a.pop("segmentation", None)        # polygons are not read; they only make the examples large
    return root, data


@st.composite
def mutated(draw, base: dict) -> dict:
    """``base`` with 1-3 random mutations (see the module docstring)."""
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(["annotations", "annotations", "annotations", "images", "categories", "top"]))
        if section == "top":
            key = draw(st.sampled_from(["images", "annotations", "categories"]))
            op = draw(st.sampled_from(["empty", "delete", "wrong_type"]))
            if op == "empty":
                data[key] = []
            elif op == "delete":
                data.pop(key, None)
            else:
                data[key] = draw(st.sampled_from([None, {}, "x", 3]))
            continue
        records = data.get(section)
        if not isinstance(records, list) or not records:
            continue
        i = draw(st.integers(0, len(records) - 1))
        record = records[i]
        if not isinstance(record, dict):
            continue
        op = draw(st.sampled_from(["set", "set", "element", "delete", "duplicate", "dangling", "copy_id"]))
        field = draw(st.sampled_from(sorted(record) + ["id", "iscrowd"]))
        if op == "set":
            record[field] = draw(ODD_VALUES)
        elif op == "element" and isinstance(record.get(field), list) and record[field]:
            j = draw(st.integers(0, len(record[field]) - 1))
            record[field][j] = draw(ODD_VALUES)
        elif op == "delete":
            record.pop(field, None)
        elif op == "duplicate":
            records.append(copy.deepcopy(record))
        elif op == "dangling" and section == "annotations":
            record[draw(st.sampled_from(["image_id", "category_id"]))] = 424242
        elif op == "copy_id" and len(records) > 1:
            record["id"] = records[(i + 1) % len(records)].get("id")
    return data


def _write(root, data) -> str:
    path = str(root / "fuzzed.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def _finite(*arrays) -> bool:
    return all(np.isfinite(np.asarray(a, dtype=np.float64)).all() for a in arrays)


class _CheckedCOCOeval:
    """Wraps pycocotools' COCOeval: fails the test if a non-finite number reaches it (ground truth or results)."""

    def __init__(self, real):
        self.real = real

    def __call__(self, coco_gt, coco_dt, iou_type):
        for source in (coco_gt, coco_dt):
            for a in source.dataset.get("annotations", []):
                for key in ("bbox", "keypoints", "area", "score"):
                    if key in a:
                        assert _finite(a[key]), f"non-finite {key} reached pycocotools: {a}"
        return self.real(coco_gt, coco_dt, iou_type)


# ---------------------------------------------------------------------------------------------- readers
@FUZZ
@given(data=st.data(), policy=st.sampled_from(["error", "skip"]))
def test_keypoint_reader_yields_finite_targets_or_a_data_error(kpt_base, data, policy):
    from datasets.coco_keypoints import load_coco_keypoints
    from datasets.topdown import TopDownKeypointDataset

    root, base = kpt_base
    path = _write(root, data.draw(mutated(base)))
    try:
        ds = load_coco_keypoints(path, str(root / "images"), on_bad_annotation=policy, missing_images="skip")
    except DataError as err:
        assert path in str(err), str(err)
        return
    assert ds.instances
    for inst in ds.instances:
        assert _finite(inst.keypoints, inst.bbox, inst.area) and min(inst.image_size) > 0
    samples = TopDownKeypointDataset(ds.instances, (32, 32), [0, 2, 1, 3], on_bad_image="skip")
    for i in range(len(samples)):
        s = samples[i]
        assert s is not None and _finite(s["keypoints"], s["crop_to_image"], s["bbox"])


@FUZZ
@given(data=st.data(), policy=st.sampled_from(["error", "skip"]))
def test_detection_reader_yields_finite_targets_or_a_data_error(det_base, data, policy):
    from datasets.coco_detection import load_coco_detection
    from datasets.detection_transforms import DetectionTransformDataset

    root, base = det_base
    path = _write(root, data.draw(mutated(base)))
    try:
        ds = load_coco_detection(path, str(root / "images"), on_bad_annotation=policy, missing_images="skip")
    except DataError as err:
        assert path in str(err), str(err)
        return
    for im in ds.images:
        assert _finite(im.boxes) and min(im.image_size) > 0
        if len(im.boxes):
            assert (im.boxes[:, 2:] >= im.boxes[:, :2]).all()
            assert (im.boxes[:, 2] <= im.image_size[0] - 1).all() and (im.boxes[:, 3] <= im.image_size[1] - 1).all()
    samples = DetectionTransformDataset(ds.images, (64, 64), on_bad_image="skip")
    for i in range(len(samples)):
        s = samples[i]
        assert s is not None and _finite(s["boxes"], s["input_to_image"])


# ---------------------------------------------------------------------------------------------- evaluation
def _evaluate(path: str, kind: str, policy: str) -> None:
    """Ground truth through the project's path, predictions equal to it, COCOeval checked from inside."""
    import engine.evaluation.coco as ce
    from datasets.coco_common import load_validated_ground_truth

    try:
        gt = load_validated_ground_truth(path, kind, policy)
    except DataError as err:
        assert path in str(err), str(err)
        return
    raw = json.load(open(path))
    _, dropped = validate_coco(raw, path, kind, "skip")
    assert len(gt["annotations"]) + sum(dropped.values()) == len(raw["annotations"])   # every one accounted for
    if policy == "error":
        assert not {k: v for k, v in dropped.items() if k != "unknown_category"}
    cats = {c["id"] for c in gt["categories"]}
    anns = [a for a in gt["annotations"] if a["category_id"] in cats]
    if kind == "keypoints":
        results = [{"image_id": a["image_id"], "category_id": a["category_id"], "keypoints": a["keypoints"],
                    "score": 1.0} for a in anns if "keypoints" in a]
    else:
        results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
                   for a in anns]
    iou = "keypoints" if kind == "keypoints" else "bbox"
    subset = {**gt, "annotations": anns}
    with mock.patch.object(ce, "COCOeval", _CheckedCOCOeval(ce.COCOeval)):
        try:
            metrics = ce.coco_eval(subset, results, iou, sigmas=[0.08] * 4 if kind == "keypoints" else None)
        except DataError as err:     # e.g. a category without keypoint names in a keypoint evaluation
            assert "ground truth" in str(err)
            return
    assert all(math.isfinite(v) and (v == -1 or 0 <= v <= 1) for v in metrics.values()), metrics


@FUZZ
@given(data=st.data(), policy=st.sampled_from(["error", "skip"]))
def test_keypoint_evaluation_refuses_or_scores_finite(kpt_base, data, policy):
    root, base = kpt_base
    _evaluate(_write(root, data.draw(mutated(base))), "keypoints", policy)


@FUZZ
@given(data=st.data(), policy=st.sampled_from(["error", "skip"]))
def test_detection_evaluation_refuses_or_scores_finite(det_base, data, policy):
    root, base = det_base
    _evaluate(_write(root, data.draw(mutated(base))), "detection", policy)


def test_unmutated_sets_score_ap_one(kpt_base, det_base):
    """The fuzz bases are valid: their ground truth as predictions scores AP 1 (the properties start from sense)."""
    from engine.evaluation.coco import coco_eval

    for (_root, base), kind in ((kpt_base, "keypoints"), (det_base, "bbox")):
        clean, dropped = validate_coco(base, "base", "keypoints" if kind == "keypoints" else "detection")
        assert not dropped
        field = "keypoints" if kind == "keypoints" else "bbox"
        results = [{"image_id": a["image_id"], "category_id": a["category_id"], field: a[field], "score": 1.0}
                   for a in clean["annotations"]]
        metrics = coco_eval(clean, results, kind, sigmas=[0.08] * 4 if kind == "keypoints" else None)
        assert metrics["AP"] == pytest.approx(1.0)
