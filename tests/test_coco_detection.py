"""The COCO detection reader: real data, crowd boxes, boxes outside the image, splits, bad files."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from datasets.coco_detection import coco_detection_subset, load_coco_detection
from engine.evaluation.coco import coco_eval
from engine.tasks.registry import load_config
from models.errors import DataError

FRUITS_CONFIG = "configs/centernet-fpn_resnet18_fruits-nuts_320x240.yaml"
# The fixed 14/4 split of fruits_nuts (SplitConfig subset rest/holdout, holdout_fraction 0.2222, seed 0).
FRUITS_VAL_IDS = [2, 3, 10, 12]


@pytest.fixture(scope="module")
def fruits(shared_data):
    return os.path.join(shared_data, "fruits_nuts", "trainval.json"), os.path.join(shared_data, "fruits_nuts", "images")


def test_reads_fruits_nuts(fruits):
    data = load_coco_detection(*fruits)
    assert len(data.images) == 18 and data.num_objects == 165
    assert data.class_names == ["date", "fig", "hazelnut"] and data.category_ids == [1, 2, 3]
    im = next(i for i in data.images if i.image_id == 0)
    raw = json.load(open(fruits[0]))
    first = next(a for a in raw["annotations"] if a["image_id"] == 0)
    x, y, w, h = first["bbox"]
    row = list(im.ann_ids).index(first["id"])
    np.testing.assert_allclose(im.boxes[row], [x, y, x + w - 1, y + h - 1])      # +1 convention
    assert im.labels[row] == first["category_id"] - 1


def test_fruits_config_fixes_a_14_4_split(fruits):
    cfg = load_config(FRUITS_CONFIG)
    s = cfg.data
    train = load_coco_detection(*fruits, subset=s.train.subset, holdout_fraction=s.train.holdout_fraction,
                                holdout_seed=s.train.holdout_seed)
    val = load_coco_detection(*fruits, subset=s.val.subset, holdout_fraction=s.val.holdout_fraction,
                              holdout_seed=s.val.holdout_seed)
    assert len(train.images) == 14 and len(val.images) == 4
    assert val.image_ids == FRUITS_VAL_IDS and not set(train.image_ids) & set(val.image_ids)


def test_ground_truth_as_results_scores_ap_one(fruits):
    data = load_coco_detection(*fruits)
    gt = coco_detection_subset(fruits[0], data.image_ids, data.category_ids)
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in gt["annotations"]]
    metrics = coco_eval(gt, results, "bbox")
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)


def _write(tmp_path, annotations, images=None, categories=None):
    img_dir = tmp_path / "images"
    img_dir.mkdir(exist_ok=True)
    images = images or [{"id": 1, "file_name": "a.jpg", "width": 50, "height": 40},
                        {"id": 2, "file_name": "b.jpg", "width": 50, "height": 40}]
    for im in images:
        cv2.imwrite(str(img_dir / im["file_name"]), np.zeros((im["height"], im["width"], 3), np.uint8))
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories or [{"id": 7, "name": "thing"}, {"id": 9, "name": "other"}]}))
    return str(path), str(img_dir)


def test_crowd_ignored_outside_boxes_clipped_or_dropped_with_counts(tmp_path, caplog):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [5, 5, 10, 10], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [0, 0, 50, 40], "iscrowd": 1},     # crowd
        {"id": 3, "image_id": 1, "category_id": 9, "bbox": [45, 30, 20, 20], "iscrowd": 0},   # clipped
        {"id": 4, "image_id": 1, "category_id": 9, "bbox": [60, 5, 10, 10], "iscrowd": 0},    # outside: dropped
        {"id": 5, "image_id": 1, "category_id": 9, "bbox": [3, 3, 0, 10], "iscrowd": 0},      # no area: dropped
    ]
    data = load_coco_detection(*_write(tmp_path, anns))
    s = data.stats
    assert (s["crowd"], s["clipped"], s["outside_image"], s["degenerate"]) == (1, 1, 1, 1)
    im1, im2 = data.images
    assert im1.ann_ids.tolist() == [1, 3] and im1.labels.tolist() == [0, 1]
    np.testing.assert_allclose(im1.boxes[1], [45, 30, 49, 39])             # clipped to the 50 x 40 image
    assert len(im2.boxes) == 0 and s["empty_images"] == 1                   # images without objects are kept
    assert "clipped" in caplog.text and "dropped" in caplog.text


def test_category_selection_and_bad_files(tmp_path):
    anns = [{"id": 1, "image_id": 1, "category_id": 9, "bbox": [5, 5, 10, 10]}]
    ann, root = _write(tmp_path, anns)
    data = load_coco_detection(ann, root, category_ids=[9])
    assert data.class_names == ["other"] and data.images[0].labels.tolist() == [0]
    with pytest.raises(ValueError, match=r"categories \[3\] are not in the file"):
        load_coco_detection(ann, root, category_ids=[3])
    ann, root = _write(tmp_path, [{"id": 1, "image_id": 99, "category_id": 9, "bbox": [5, 5, 10, 10]}])
    with pytest.raises(ValueError, match="image_id 99"):
        load_coco_detection(ann, root)
    os.remove(os.path.join(root, "b.jpg"))
    ann, root = _write(tmp_path, [], images=[{"id": 1, "file_name": "a.jpg", "width": 50, "height": 40}])
    ok = load_coco_detection(ann, root)
    assert len(ok.images) == 1
    bad = json.load(open(ann))
    bad["images"].append({"id": 2, "file_name": "missing.jpg", "width": 5, "height": 5})
    open(ann, "w").write(json.dumps(bad))
    with pytest.raises(DataError, match=r"missing\.jpg \(missing\)"):
        load_coco_detection(ann, root)
    assert len(load_coco_detection(ann, root, missing_images="skip").images) == 1
