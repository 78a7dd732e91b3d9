"""Reading COCO keypoint files: what is skipped and counted, what is an error (and that it names the culprit),
the +1 box conversion, zero-based skeletons, and the deterministic holdout split; plus the real coco_mini."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from datasets.coco_common import resolve_image_path, split_image_ids
from datasets.coco_keypoints import load_coco_keypoints
from models.errors import DataError

NAMES = ["a", "b", "c"]


def _ann(ann_id, image_id=1, kpts=None, bbox=(2, 3, 10, 5), **extra):
    kpts = kpts if kpts is not None else [4, 4, 2, 6, 5, 1, 0, 0, 0]
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0, "bbox": list(bbox),
            "keypoints": list(kpts), "num_keypoints": sum(v > 0 for v in kpts[2::3]), **extra}


def _write(tmp_path, annotations, images=None, categories=None, write_images=True, name="ann.json"):
    """A COCO json plus tiny images under tmp_path/images; returns (json path, image root)."""
    root = tmp_path / "images"
    root.mkdir(exist_ok=True)
    images = images if images is not None else [{"id": 1, "file_name": "1.jpg", "width": 20, "height": 16}]
    if write_images:
        for img in images:
            path = root / img["file_name"]
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), np.full((img["height"], img["width"], 3), 128, np.uint8))
    categories = categories if categories is not None else [
        {"id": 1, "name": "thing", "keypoints": NAMES, "skeleton": [[1, 2], [2, 3]]}]
    path = tmp_path / name
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return str(path), str(root)


def test_reads_instance_bbox_inclusive_and_zero_based_skeleton(tmp_path):
    ann, root = _write(tmp_path, [_ann(7, bbox=(2, 3, 10, 5), area=40.0)])
    ds = load_coco_keypoints(ann, root)
    assert len(ds.instances) == 1 and ds.num_keypoints == 3 and ds.keypoint_names == NAMES
    inst = ds.instances[0]
    assert inst.ann_id == 7 and inst.image_id == 1 and inst.image_size == (20, 16)
    # COCO [x, y, w, h] = [2, 3, 10, 5] covers pixels 2..11 and 3..7.
    np.testing.assert_array_equal(inst.bbox, [2, 3, 11, 7])
    np.testing.assert_array_equal(inst.keypoints, [[4, 4, 2], [6, 5, 1], [0, 0, 0]])
    assert inst.area == 40.0
    assert inst.image_path == os.path.realpath(os.path.join(root, "1.jpg"))
    assert ds.skeleton == [(0, 1), (1, 2)]
    assert ds.image_ids == [1] and ds.category_id == 1
    assert ds.stats["instances"] == 1 and ds.stats["annotations"] == 1


def test_area_defaults_to_box_area(tmp_path):
    ann, root = _write(tmp_path, [_ann(1, bbox=(0, 0, 4, 3))])
    assert load_coco_keypoints(ann, root).instances[0].area == 12.0


def test_crowd_and_no_keypoint_instances_are_skipped_and_counted(tmp_path):
    anns = [_ann(1), _ann(2, iscrowd=1), _ann(3, kpts=[0] * 9), _ann(4, kpts=[1, 1, 0, 2, 2, 0, 3, 3, 0]), _ann(5)]
    ann, root = _write(tmp_path, anns)
    ds = load_coco_keypoints(ann, root)
    assert [i.ann_id for i in ds.instances] == [1, 5]
    assert ds.stats["crowd"] == 1 and ds.stats["no_keypoints"] == 2 and ds.stats["annotations"] == 5


@pytest.mark.parametrize("bbox", [(2, 3, 0, 5), (2, 3, 10, 0), (2, 3, -4, 5)])
def test_degenerate_box_raises_naming_annotation(tmp_path, bbox):
    ann, root = _write(tmp_path, [_ann(1), _ann(4242, bbox=bbox)])
    with pytest.raises(DataError, match=r"annotation 4242\b.*(zero-area or negative|negative width)"):
        load_coco_keypoints(ann, root)


def test_wrong_keypoint_length_raises_naming_annotation(tmp_path):
    ann, root = _write(tmp_path, [_ann(99, kpts=[1, 1, 2, 2, 2, 2])])
    with pytest.raises(ValueError, match=r"annotation 99 has 6 keypoint values, expected 3 x 3"):
        load_coco_keypoints(ann, root)


def test_missing_image_error_or_skip(tmp_path):
    images = [{"id": 1, "file_name": "1.jpg", "width": 20, "height": 16},
              {"id": 2, "file_name": "sub/2.jpg", "width": 20, "height": 16},
              {"id": 3, "file_name": "3.jpg", "width": 20, "height": 16}]
    ann, root = _write(tmp_path, [_ann(1, 1), _ann(2, 2), _ann(3, 2), _ann(4, 3)], images=images)
    os.remove(os.path.join(root, "sub", "2.jpg"))
    with pytest.raises(DataError, match=r"2\.jpg \(missing\)"):
        load_coco_keypoints(ann, root)
    ds = load_coco_keypoints(ann, root, missing_images="skip")
    assert [i.ann_id for i in ds.instances] == [1, 4]
    assert ds.image_ids == [1, 3]
    assert ds.stats["missing_image"] == 2 and ds.stats["instances"] == 2


@pytest.mark.parametrize("escape", ["../x.jpg", "sub/../../x.jpg", "ABS"])
def test_file_name_escaping_root_raises(tmp_path, escape):
    outside = tmp_path / "x.jpg"
    cv2.imwrite(str(outside), np.zeros((16, 20, 3), np.uint8))
    name = str(outside) if escape == "ABS" else escape
    images = [{"id": 1, "file_name": name, "width": 20, "height": 16}]
    ann, root = _write(tmp_path, [_ann(1)], images=images, write_images=False)
    with pytest.raises(ValueError, match="outside the image root"):
        load_coco_keypoints(ann, root)


def test_resolve_image_path_allows_subfolders(tmp_path):
    root = str(tmp_path)
    assert resolve_image_path(root, "a/b/../c.jpg") == os.path.join(os.path.realpath(root), "a", "c.jpg")


def test_keypoints_outside_image_become_unlabelled(tmp_path):
    # Image 20 x 16 spans x in [-0.5, 19.5], y in [-0.5, 15.5]; the boundary itself is inside.
    kpts = [-0.5, 15.5, 2,   19.6, 4, 2,   5, -0.6, 1]
    ann, root = _write(tmp_path, [_ann(1, kpts=kpts), _ann(2, kpts=[19.5, -0.5, 1, 30, 30, 0, 3, 3, 2])])
    ds = load_coco_keypoints(ann, root)
    np.testing.assert_array_equal(ds.instances[0].keypoints[:, 2], [2, 0, 0])
    np.testing.assert_array_equal(ds.instances[1].keypoints[:, 2], [1, 0, 2])   # an unlabelled one is not counted
    assert ds.stats["outside_image"] == 2


def test_category_choice(tmp_path):
    cats = [{"id": 1, "name": "thing", "keypoints": NAMES}, {"id": 2, "name": "other", "keypoints": ["p", "q"]}]
    anns = [_ann(1), {**_ann(2, kpts=[1, 1, 2, 3, 3, 2]), "category_id": 2}]
    ann, root = _write(tmp_path, anns, categories=cats)
    with pytest.raises(ValueError, match="exactly one category with 'keypoints', found 2"):
        load_coco_keypoints(ann, root)
    ds = load_coco_keypoints(ann, root, category_id=2)
    assert [i.ann_id for i in ds.instances] == [2] and ds.keypoint_names == ["p", "q"]
    assert ds.stats["other_category"] == 1 and ds.skeleton == []
    with pytest.raises(ValueError, match="no category with id 5"):
        load_coco_keypoints(ann, root, category_id=5)


def test_bad_skeleton_raises(tmp_path):
    cats = [{"id": 1, "name": "thing", "keypoints": NAMES, "skeleton": [[0, 1]]}]
    ann, root = _write(tmp_path, [_ann(1)], categories=cats)
    with pytest.raises(ValueError, match=r"skeleton link \[0, 1\]"):
        load_coco_keypoints(ann, root)


def test_unknown_image_id_raises(tmp_path):
    ann, root = _write(tmp_path, [_ann(31, image_id=77)])
    with pytest.raises(ValueError, match="annotation 31 refers to image_id 77"):
        load_coco_keypoints(ann, root)


def test_not_json_and_missing_fields_name_the_file(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json is not valid JSON"):
        load_coco_keypoints(str(bad), str(root))
    no_anns = tmp_path / "noanns.json"
    no_anns.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(ValueError, match=r"noanns\.json: missing or non-list field 'annotations'"):
        load_coco_keypoints(str(no_anns), str(root))
    no_width = tmp_path / "nowidth.json"
    no_width.write_text(json.dumps({"images": [{"id": 5, "file_name": "a.jpg", "height": 3}], "annotations": [],
                                    "categories": [{"id": 1, "name": "t", "keypoints": NAMES}]}))
    with pytest.raises(ValueError, match=r"nowidth\.json: image record 5 lacks 'width'"):
        load_coco_keypoints(str(no_width), str(root))
    with pytest.raises(DataError, match=r"nothere\.json"):
        load_coco_keypoints(str(tmp_path / "nothere.json"), str(root))
    with pytest.raises(DataError, match="image folder not found"):
        load_coco_keypoints(str(no_width), str(tmp_path / "noimages"))


def test_holdout_and_rest_split(tmp_path):
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 20, "height": 16} for i in range(10, 30)]
    anns = [_ann(i, image_id=i) for i in range(10, 30)]
    ann, root = _write(tmp_path, anns, images=images)
    all_ids = set(range(10, 30))

    def ids(subset, seed=0, fraction=0.25):
        ds = load_coco_keypoints(ann, root, subset=subset, holdout_fraction=fraction, holdout_seed=seed)
        assert {i.image_id for i in ds.instances} == set(ds.image_ids)
        return set(ds.image_ids), ds

    hold, ds_hold = ids("holdout")
    rest, ds_rest = ids("rest")
    assert len(hold) == 5 and len(rest) == 15
    assert hold.isdisjoint(rest) and hold | rest == all_ids
    assert ds_rest.stats["other_subset"] == 5 and ds_hold.stats["other_subset"] == 15
    assert ids("holdout")[0] == hold                        # deterministic for a seed
    assert any(ids("holdout", seed=s)[0] != hold for s in (1, 2, 3))
    assert len(ids("holdout", fraction=0.01)[0]) == 1       # at least one image
    assert ids("all")[0] == all_ids


def test_split_image_ids_rejects_bad_arguments():
    with pytest.raises(ValueError, match="subset='val'"):
        split_image_ids([1, 2], "val", 0.1, 0)
    with pytest.raises(ValueError, match="holdout_fraction"):
        split_image_ids([1, 2], "holdout", 1.0, 0)


def test_real_coco_mini_counts(shared_data):
    folder = os.path.join(shared_data, "coco_mini")
    ann_file = os.path.join(folder, "test_coco.json")
    with open(ann_file) as f:
        raw = json.load(f)
    expected = [a for a in raw["annotations"] if not a.get("iscrowd", 0) and a["num_keypoints"] > 0]
    ds = load_coco_keypoints(ann_file, folder)
    assert len(ds.instances) == len(expected) == ds.stats["instances"]
    assert sorted(i.ann_id for i in ds.instances) == sorted(a["id"] for a in expected)
    assert ds.stats["no_keypoints"] == sum(a["num_keypoints"] == 0 for a in raw["annotations"])
    assert ds.num_keypoints == 17 and len(ds.skeleton) == 19
    assert all(0 <= a < 17 and 0 <= b < 17 for a, b in ds.skeleton)
    assert ds.image_ids == sorted(img["id"] for img in raw["images"])
    by_id = {a["id"]: a for a in expected}
    for inst in ds.instances:
        a = by_id[inst.ann_id]
        x, y, w, h = a["bbox"]
        np.testing.assert_allclose(inst.bbox, [x, y, x + w - 1, y + h - 1])
        assert int((inst.keypoints[:, 2] > 0).sum()) == a["num_keypoints"]   # none outside the image
        assert os.path.isfile(inst.image_path)
    assert ds.stats["outside_image"] == 0
