"""tools.make_config: each choice from the data (hand-computed), and a converted raw set trains with the
generated config in one command, with no overrides."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from datasets.skeletons import COCO_KEYPOINT_NAMES, COCO_SIGMAS
from engine.config.starter import (
    DEFAULT_EPOCHS,
    UNIFORM_SIGMA,
    choose_eval_interval,
    choose_flip,
    choose_input_size,
    choose_schedule,
    choose_sigmas,
    input_aspect,
    repeated_pairs,
    source_splits,
)
from engine.evaluation.keypoint_metrics import estimate_oks_sigmas
from engine.tasks.registry import load_config
from engine.train.estimate import TrainingSpeed
from tools import convert as convert_tool
from tools import make_config


def test_input_size_follows_the_aspect_in_stride_multiples():
    assert choose_input_size(1.0, 32, 256 * 256) == [256, 256]
    assert choose_input_size(0.75, 32, 256 * 192) == [192, 256]      # sqrt(49152 * .75) = 192
    assert choose_input_size(2.0, 32, 128 * 64) == [128, 64]
    assert choose_input_size(1.0, 32, 10) == [64, 64]                # at least two strides a side
    assert input_aspect(np.array([0.5, 0.8, 2.0, 3.0]))[0] == 1.0    # wide and tall: square
    assert input_aspect(np.array([1.5, 2.0, 2.5]))[0] == 2.0


def test_schedule_from_the_data_size():
    assert choose_schedule(18) == (2, DEFAULT_EPOCHS)         # 9 steps an epoch
    assert choose_schedule(100) == (8, DEFAULT_EPOCHS)        # 13 steps
    assert choose_schedule(1000) == (16, DEFAULT_EPOCHS)      # the batch stops at 16, as the shipped configs
    assert DEFAULT_EPOCHS == 50


def test_evaluation_interval_and_the_small_holdout_note():
    assert choose_eval_interval(50, 121) == (5, None)                # about ten evaluations
    assert choose_eval_interval(8, 500) == (1, None)
    interval, note = choose_eval_interval(50, 16)                    # a 16-instance hold-out: half as often
    assert interval == 10 and "16 instances" in note and "best.pt is chosen on noise" in note


def test_expected_minutes_and_the_budget_by_hand():
    speed = TrainingSpeed(seconds_per_step=0.5, seconds_per_validation=30.0, steps_per_epoch=12, precision="fp32")
    # 10 epochs of 12 steps of 0.5 s = 60 s, and validations after epochs 5 and 10 = 60 s: 2 minutes
    assert speed.minutes(10, 5) == pytest.approx(2.0)
    assert speed.minutes(11, 5) == pytest.approx((66 + 90) / 60)      # epoch 11 is the last: validated too
    assert speed.minutes(10, 5, ema=True) == pytest.approx(3.0)      # the EMA is validated alongside
    assert speed.epochs_within(2.0, 5) == 10 and speed.epochs_within(1.99, 5) == 9


def test_flip_and_sigmas():
    assert choose_flip({"keypoints": ["a", "b"], "flip_index": [1, 0]})[0] == [1, 0]
    flip, note = choose_flip({"keypoints": ["nose", "LEar", "REar"]})
    assert flip == [0, 2, 1] and "LEar<->REar" in note
    assert choose_flip({"keypoints": ["kp0", "kp1"]})[0] == [0, 1]
    empty = (np.zeros((0, 2, 3)), np.zeros((0, 2, 3)), np.zeros(0))
    assert choose_sigmas(COCO_KEYPOINT_NAMES, empty)[0] == COCO_SIGMAS
    values, note = choose_sigmas(["a", "b"], empty)
    assert values == [UNIFORM_SIGMA] * 2 and "GUESS" in note


def test_sigmas_from_images_labelled_twice():
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(8):   # each image twice (same file name), the second labelling jittered
        base = np.stack([rng.uniform(20, 80, 2), rng.uniform(20, 80, 2)])
        for copy, noise in ((0, 0.0), (1, 2.0)):
            image_id = 2 * i + copy + 1
            images.append({"id": image_id, "file_name": f"f{i}.png", "width": 100, "height": 100})
            xy = base + noise * rng.standard_normal(base.shape) * [[1], [3]]
            kp = np.concatenate([xy, np.full((2, 1), 2.0)], 1)
            anns.append({"id": image_id, "image_id": image_id, "category_id": 1, "keypoints": kp.ravel().tolist(),
                         "bbox": [10, 10, 80, 80], "area": 6400.0})
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x", "keypoints": ["a", "b"]}]}
    pairs = repeated_pairs(coco, 1)
    assert len(pairs[0]) == 8
    values, note = choose_sigmas(["a", "b"], pairs)
    expected = estimate_oks_sigmas(*pairs)
    np.testing.assert_allclose(values, np.round(expected, 4))
    assert values[1] > 2 * values[0] and "8 doubly labelled" in note   # b was jittered 3x more


def test_source_splits():
    coco = {"images": [{"split": "Train"}, {"split": "Validation"}, {}]}
    assert source_splits(coco) == ("train", "validation")
    assert source_splits({"images": [{"split": "train"}]}) is None


def test_yolo_set_gets_its_own_splits(shared_data, tmp_path, capsys):
    out = tmp_path / "tiger.json"
    conv = convert_tool.main(["yolo", os.path.join(shared_data, "raw_formats", "yolo_tiger", "data.yaml"),
                              "--output", str(out)])
    cfg_path = tmp_path / "cfg" / "tiger.yaml"
    make_config.main([str(out), "--image-root", conv.image_root, "--output", str(cfg_path), "--no-timing"])
    text = capsys.readouterr().out
    cfg = load_config(str(cfg_path))
    assert cfg.data.train.ann_file == str(tmp_path / "cfg" / "tiger.train.json") and cfg.data.val.subset == "all"
    with open(cfg.data.val.ann_file) as f:
        assert len(json.load(f)["images"]) == 6
    assert cfg.data.flip_index == list(range(12)) and "from the category" in text
    assert cfg.data.oks_sigmas == [UNIFORM_SIGMA] * 12 and "a guess" in cfg_path.read_text()
    w, h = cfg.data.input_size
    assert w % 32 == 0 and h % 32 == 0 and w > h          # tigers are wide
    assert os.path.isfile(tmp_path / "cfg" / "tiger_data.png")
    # The keys a starter config sets beyond the data: what the shipped configs use and were measured with.
    assert cfg.train.precision == "auto" and cfg.train.channels_last is True
    assert (cfg.model.fpn_channels, cfg.model.head_channels) == (64, 64)
    assert cfg.train.epochs == DEFAULT_EPOCHS and cfg.train.eval_interval == 10   # 6 val images: half as often
    assert "best.pt is chosen on noise" in text and "expected time" not in text


def test_a_68_point_face_set_gets_its_flip_partners_nme_the_face_report_and_the_300w_recipe(tmp_path, capsys):
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(40):
        xy = rng.uniform(10, 90, (68, 2))
        kp = np.concatenate([xy, np.full((68, 1), 2.0)], 1)
        images.append({"id": i + 1, "file_name": f"f{i}.png", "width": 100, "height": 100})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "keypoints": kp.ravel().tolist(),
                     "num_keypoints": 68, "bbox": [10, 10, 80, 80], "area": 6400.0})
    ann = tmp_path / "faces.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": [
        {"id": 1, "name": "face", "keypoints": [f"p{i + 1}" for i in range(68)], "skeleton": []}]}))
    cfg = make_config.main([str(ann), "--image-root", str(tmp_path), "--output", str(tmp_path / "faces.yaml"),
                            "--no-timing", "--no-report"])
    from datasets.formats.pts import FLIP_68

    assert cfg["data"]["flip_index"] == list(FLIP_68) and cfg["data"]["nme_normalize"] == [36, 45]
    assert cfg["eval"]["main_metric"] == "NME" and cfg["eval"]["face"]["normalize"] == "inter_ocular"
    loaded = load_config(str(tmp_path / "faces.yaml"))
    assert loaded.eval.face is not None and loaded.data.flip_index[36] == 45
    # the 300-W recipe's measured levers travel with the layout
    assert (loaded.loss.heatmap, loaded.data.sigma, loaded.eval.recrop_passes) == ("awing", 1.5, 2)
    assert "Adaptive Wing" in capsys.readouterr().out


def test_minutes_is_a_positive_budget_without_epochs(tmp_path):
    from models.errors import InputError

    for extra in (["--minutes", "0"], ["--minutes", "5", "--epochs", "10"]):
        with pytest.raises(InputError, match="--minutes"):
            make_config.main([str(tmp_path / "x.json"), "--image-root", str(tmp_path), "--output",
                              str(tmp_path / "x.yaml"), *extra])


@pytest.mark.slow
def test_a_converted_set_trains_with_its_generated_config(shared_data, tmp_path, caplog):
    from tools import train as train_tool

    project = os.path.join(shared_data, "raw_formats", "dlc_openfield")
    out = tmp_path / "mouse.json"
    conv = convert_tool.main(["dlc", project, "--output", str(out)])
    cfg_path = tmp_path / "mouse.yaml"
    made = make_config.main([str(out), "--image-root", conv.image_root, "--output", str(cfg_path), "--minutes",
                             "0.2", "--batch-size", "4", "--input-pixels", "4096", "--no-report", "--set",
                             "train.num_threads=1", "train.num_workers=0", "model.num_stacks=1",
                             "model.fpn_channels=32", "model.head_channels=32", "data.val_batch_size=4",
                             f"output_dir={tmp_path}/runs"])
    # It said how long the run would take, before training, from a few timed steps, and sized the epochs to fit.
    assert 0 < made["_expected_minutes"] <= 0.2 and "expected time on this machine" in cfg_path.read_text()
    cfg = load_config(str(cfg_path))
    assert cfg.train.epochs == made["train"]["epochs"] >= 1
    assert cfg.data.input_size == [96, 64]   # median aspect 2.86 at ~4096 pixels, multiples of 32
    assert cfg.data.flip_index == [0, 2, 1, 3]
    result = train_tool.main(["--config", str(cfg_path), "--run-dir", str(tmp_path / "run"), "--no-progress"])
    assert os.path.isfile(tmp_path / "run" / "last.pt")
    assert "AP" in json.dumps(result)   # it evaluated on the held-out frames
    # Two held-out frames: the run says that its best.pt is chosen on noise.
    assert "best.pt is chosen on noise" in caplog.text
