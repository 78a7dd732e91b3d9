"""The readers keep instances / images as numpy arrays, not one Python object each (forked DataLoader workers
would otherwise copy them page by page as they touch their refcounts: bench/bench_loader_memory.py), and
indexing them still gives the records and the samples that the per-object lists gave."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle

import numpy as np
import pytest
import torch

from datasets.coco_detection import DetectionImage, DetectionImages, load_coco_detection
from datasets.coco_keypoints import KeypointInstance, KeypointInstances, PackedStrings, load_coco_keypoints
from datasets.detection_transforms import DetectionTransformDataset
from datasets.skeletons import COCO_FLIP_INDEX, COCO_UPPER_BODY_IDS
from datasets.topdown import TopDownKeypointDataset


def _only_arrays(store) -> None:
    """Every field of ``store`` is a numpy array of numbers (or packed strings): a handful of objects, whatever
    the number of records."""
    for name, value in vars(store).items():
        if isinstance(value, PackedStrings):
            _only_arrays(value)
            continue
        assert isinstance(value, np.ndarray), name
        assert value.dtype != object, name


def _same_sample(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
        else:
            assert a[key] == b[key], key


@pytest.fixture(scope="module")
def keypoints(tiny_synthetic):
    return load_coco_keypoints(tiny_synthetic["train"], tiny_synthetic["images"])


@pytest.fixture(scope="module")
def detection(tiny_synthetic_detection):
    return load_coco_detection(tiny_synthetic_detection["train"], tiny_synthetic_detection["images"])


def test_keypoint_instances_are_arrays_and_index_to_the_json(keypoints, tiny_synthetic):
    inst = keypoints.instances
    assert isinstance(inst, KeypointInstances) and len(inst) == keypoints.stats["instances"] > 8
    _only_arrays(inst)
    assert inst.keypoints.shape == (len(inst), 17, 3) and inst.num_keypoints == 17
    raw = json.load(open(tiny_synthetic["train"]))
    by_id = {a["id"]: a for a in raw["annotations"]}
    files = {im["id"]: im["file_name"] for im in raw["images"]}
    root = os.path.realpath(tiny_synthetic["images"])
    for i, one in enumerate(inst):
        assert isinstance(one, KeypointInstance) and inst[i].ann_id == one.ann_id
        ann = by_id[one.ann_id]
        assert type(one.ann_id) is int and type(one.image_id) is int and type(one.area) is float
        assert one.image_id == ann["image_id"] and one.image_path == os.path.join(root, files[one.image_id])
        assert isinstance(one.image_size, tuple) and all(type(v) is int for v in one.image_size)
        x, y, w, h = ann["bbox"]
        np.testing.assert_array_equal(one.bbox, [x, y, x + w - 1, y + h - 1])
        assert one.keypoints.shape == (17, 3) and one.bbox.dtype == one.keypoints.dtype == np.float64
    # Negative indices, slices, index lists and iteration behave as on a list.
    assert inst[-1].ann_id == list(inst)[-1].ann_id
    part = inst[2:6]
    assert isinstance(part, KeypointInstances) and [p.ann_id for p in part] == [inst[i].ann_id for i in range(2, 6)]
    assert [p.image_path for p in inst[[5, 0]]] == [inst[5].image_path, inst[0].image_path]
    with pytest.raises(IndexError):
        inst[len(inst)]
    back = pickle.loads(pickle.dumps(inst))        # spawn-started workers get it pickled
    np.testing.assert_array_equal(back.keypoints, inst.keypoints)
    assert list(back.image_paths) == list(inst.image_paths)


@pytest.mark.parametrize("train", [True, False])
def test_topdown_samples_are_those_of_the_per_instance_list(keypoints, train):
    def make(instances):
        return TopDownKeypointDataset(instances, (48, 64), COCO_FLIP_INDEX, train=train,
                                      upper_body_ids=COCO_UPPER_BODY_IDS)

    compact = make(keypoints.instances)
    assert compact.instances is keypoints.instances
    # The old representation: a list of KeypointInstance objects (each with its own arrays), indexed as it was.
    as_list = [dataclasses.replace(i, bbox=i.bbox.copy(), keypoints=i.keypoints.copy()) for i in keypoints.instances]
    old = make(as_list)
    assert isinstance(old.instances, KeypointInstances)          # a list given is packed too
    old.instances = as_list
    for index in range(len(compact)):
        _same_sample(compact[(index, index)], old[(index, index)])


def test_empty_and_list_built_instances():
    empty = KeypointInstances.from_instances([], num_keypoints=4)
    assert len(empty) == 0 and empty.keypoints.shape == (0, 4, 3) and not empty and list(empty) == []
    one = KeypointInstance(image_id=3, ann_id=9, image_path="a/\udcffb.jpg", image_size=(20, 10),
                           bbox=np.array([1.0, 2, 5, 6]), keypoints=np.ones((4, 3)), area=7.5)
    packed = KeypointInstances.from_instances([one, one])
    got = packed[1]
    assert (got.image_id, got.ann_id, got.image_path, got.image_size) == (3, 9, "a/\udcffb.jpg", (20, 10))
    assert got.area == 7.5
    np.testing.assert_array_equal(got.bbox, one.bbox)
    np.testing.assert_array_equal(got.keypoints, one.keypoints)


def test_detection_images_are_arrays_and_samples_unchanged(detection):
    images = detection.images
    assert isinstance(images, DetectionImages) and len(images) == detection.stats["images"]
    _only_arrays(images)
    assert detection.num_objects == len(images.boxes) == sum(len(im.boxes) for im in images) > 0
    assert detection.image_ids == [im.image_id for im in images]
    for im in images:
        assert isinstance(im, DetectionImage) and type(im.image_id) is int
        assert im.boxes.shape == (len(im.labels), 4) and im.labels.dtype == im.ann_ids.dtype == np.int64
    part = images[1:4]
    assert isinstance(part, DetectionImages) and [im.image_id for im in part] == detection.image_ids[1:4]
    np.testing.assert_array_equal(part[0].boxes, images[1].boxes)

    for train in (True, False):
        compact = DetectionTransformDataset(images, (64, 64), train=train)
        assert compact.images is images
        as_list = [dataclasses.replace(im, boxes=im.boxes.copy(), labels=im.labels.copy(), ann_ids=im.ann_ids.copy())
                   for im in images]
        old = DetectionTransformDataset(as_list, (64, 64), train=train)
        assert isinstance(old.images, DetectionImages)
        old.images = as_list
        for index in range(len(compact)):
            _same_sample(compact[(index, index)], old[(index, index)])
