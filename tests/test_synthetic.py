"""The synthetic set: a pure function of its spec, cached by manifest, valid COCO, figures facing the viewer,
scored AP = 1 by pycocotools on its own ground truth and not trivially easy (a mean pose scores low)."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from datasets.skeletons import COCO_KEYPOINT_NAMES, COCO_SIGMAS
from datasets.synthetic import SyntheticKeypointSpec, ensure_synthetic_dataset, generate_split
from engine.evaluation.coco import coco_eval

TINY = dict(num_train_images=3, num_val_images=2, min_image_size=96, max_image_size=128,
            min_figure_height=40.0, max_figure_height=90.0)


def _tree(root: str) -> dict[str, bytes]:
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out


def test_generation_is_deterministic_and_depends_on_seed(tmp_path):
    spec = SyntheticKeypointSpec(**TINY, seed=11)
    a, b, c = (str(tmp_path / n) for n in "abc")
    ensure_synthetic_dataset(a, spec)
    ensure_synthetic_dataset(b, spec)
    ensure_synthetic_dataset(c, SyntheticKeypointSpec(**TINY, seed=12))
    ta, tb, tc = _tree(a), _tree(b), _tree(c)
    assert sum(n.endswith(".jpg") for n in ta) == 5
    assert ta == tb                                  # identical json and image bytes
    assert ta.keys() == tc.keys()
    assert ta["annotations/train.json"] != tc["annotations/train.json"]
    assert all(ta[n] != tc[n] for n in ta if n.endswith(".jpg"))


def test_ensure_rewrites_only_when_the_spec_changes(tmp_path):
    root = str(tmp_path / "set")
    spec = SyntheticKeypointSpec(**TINY, seed=1)
    paths = ensure_synthetic_dataset(root, spec)
    assert set(paths) == {"train", "val"} and all(os.path.isfile(p) for p in paths.values())
    watched = [paths["train"], paths["val"], os.path.join(root, "manifest.json"),
               os.path.join(root, "images", "train", "000001.jpg")]
    old = 1_000_000_000
    for p in watched:
        os.utime(p, ns=(old, old))
    assert ensure_synthetic_dataset(root, spec) == paths
    assert [os.stat(p).st_mtime_ns for p in watched] == [old] * 4            # nothing rewritten
    before = open(paths["train"]).read()
    ensure_synthetic_dataset(root, SyntheticKeypointSpec(**TINY, seed=2))
    assert all(os.stat(p).st_mtime_ns != old for p in watched)               # all rewritten
    assert open(paths["train"]).read() != before
    assert json.load(open(os.path.join(root, "manifest.json")))["seed"] == 2
    # A missing annotation file triggers a rewrite even with a matching manifest.
    os.remove(paths["val"])
    ensure_synthetic_dataset(root, SyntheticKeypointSpec(**TINY, seed=2))
    assert os.path.isfile(paths["val"])


@pytest.fixture(scope="module")
def synth40(tmp_path_factory) -> dict:
    """40 training and 20 validation images with the default look."""
    root = str(tmp_path_factory.mktemp("synth40"))
    spec = SyntheticKeypointSpec(num_train_images=40, num_val_images=20, seed=5)
    paths = ensure_synthetic_dataset(root, spec)
    out = {"root": root}
    for split, path in paths.items():
        with open(path) as f:
            out[split] = json.load(f)
    return out


def test_annotations_are_valid_coco(synth40):
    for split in ("train", "val"):
        data = synth40[split]
        assert data["categories"][0]["keypoints"] == COCO_KEYPOINT_NAMES
        images = {img["id"]: img for img in data["images"]}
        assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])
        for img in data["images"]:
            assert os.path.isfile(os.path.join(synth40["root"], "images", img["file_name"]))
        for ann in data["annotations"]:
            img = images[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            assert w >= 1 and h >= 1 and ann["area"] > 0
            assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
            k = np.asarray(ann["keypoints"], float).reshape(17, 3)
            assert set(np.unique(k[:, 2])) <= {0, 1, 2}
            assert ann["num_keypoints"] == int((k[:, 2] > 0).sum())
            assert (k[k[:, 2] == 0, :2] == 0).all()
            lab = k[k[:, 2] > 0]
            assert (lab[:, 0] >= -0.5).all() and (lab[:, 0] <= img["width"] - 0.5).all()
            assert (lab[:, 1] >= -0.5).all() and (lab[:, 1] <= img["height"] - 0.5).all()
            assert ann["iscrowd"] == 0 and ann["category_id"] == 1


def test_occlusion_and_truncation_happen(synth40):
    v = np.concatenate([np.asarray(a["keypoints"]).reshape(17, 3)[:, 2] for a in synth40["train"]["annotations"]])
    assert (v == 1).sum() >= 5            # occluded
    assert (v == 0).sum() >= 3            # cut by the border
    assert (v == 2).mean() > 0.6          # but mostly visible
    counts = [len([a for a in synth40["train"]["annotations"] if a["image_id"] == i["id"]])
              for i in synth40["train"]["images"]]
    assert max(counts) >= 2               # several figures per image happen


def test_figures_face_the_viewer(synth40):
    """Left shoulder (5) on the image's right of the right shoulder (6), for upright figures."""
    facing, upright = 0, 0
    for ann in synth40["train"]["annotations"] + synth40["val"]["annotations"]:
        k = np.asarray(ann["keypoints"], float).reshape(17, 3)
        if not (k[[5, 6, 11, 12, 0], 2] > 0).all():
            continue
        d = k[5, :2] - k[6, :2]
        hips_y = (k[11, 1] + k[12, 1]) / 2
        if abs(d[1]) < 0.5 * abs(d[0]) and k[0, 1] < hips_y:
            upright += 1
            facing += d[0] > 0
    assert upright >= 20
    assert facing >= 0.9 * upright


def _results_from_gt(data: dict) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "keypoints": a["keypoints"], "score": 1.0}
            for a in data["annotations"]]


def test_ground_truth_scores_ap_one(synth40):
    stats = coco_eval(synth40["val"], _results_from_gt(synth40["val"]), "keypoints", sigmas=COCO_SIGMAS)
    assert stats["AP"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)


def test_mean_pose_in_the_box_scores_low(synth40):
    """A blind guess: the training split's mean box-normalised pose, placed in each ground-truth box."""
    norm = []
    for a in synth40["train"]["annotations"]:
        x, y, w, h = a["bbox"]
        k = np.asarray(a["keypoints"], float).reshape(17, 3)
        rel = np.where(k[:, 2:] > 0, (k[:, :2] - [x, y]) / [w, h], np.nan)
        norm.append(rel)
    mean_pose = np.nanmean(np.stack(norm), axis=0)
    assert np.isfinite(mean_pose).all()
    results = []
    for a in synth40["val"]["annotations"]:
        x, y, w, h = a["bbox"]
        xy = mean_pose * [w, h] + [x, y]
        kpts = np.concatenate([xy, np.ones((17, 1))], axis=1).ravel().tolist()
        results.append({"image_id": a["image_id"], "category_id": 1, "keypoints": kpts, "score": 1.0})
    stats = coco_eval(synth40["val"], results, "keypoints", sigmas=COCO_SIGMAS)
    assert 0.0 <= stats["AP"] < 0.1


def test_generate_split_counts(tmp_path):
    coco = generate_split(str(tmp_path), "val", 2, SyntheticKeypointSpec(**TINY, seed=4), progress=False)
    assert [img["id"] for img in coco["images"]] == [1, 2]
    assert [img["file_name"] for img in coco["images"]] == ["val/000001.jpg", "val/000002.jpg"]
    for img in coco["images"]:
        pixels = cv2.imread(str(tmp_path / "images" / img["file_name"]))
        assert pixels.shape == (img["height"], img["width"], 3)
        assert TINY["min_image_size"] <= img["width"] <= TINY["max_image_size"]
    assert coco["categories"][0]["skeleton"][0] == [16, 14]
