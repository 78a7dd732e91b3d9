"""An interrupted run resumes bit-identically: 4 epochs in one go equal 2 + 2 with ``--resume``, tensor by tensor.

Everything that draws randomness is on: shuffled data order, random crops, flips and albumentations
photometric changes (seeded per sample and epoch), dropout (the global torch RNG), plus accumulation groups,
a warmup + cosine schedule, an EMA and AdamW state.
"""

from __future__ import annotations

import csv
import os

import pytest
import torch

from engine.checkpoint import load_checkpoint, save_checkpoint
from models.errors import Interrupted

pytestmark = pytest.mark.slow

TINY_CLS = ["data.synthetic.num_train_images=40", "data.synthetic.num_val_images=16",
            "data.synthetic.min_image_size=28", "data.synthetic.max_image_size=40", "data.input_size=[32,32]",
            "data.input_policy=random_crop", "data.augment.photometric=strong", "model.drop_rate=0.3",
            "train.batch_size=8", "data.val_batch_size=16", "train.num_workers=0", "train.num_threads=1",
            "train.log_interval=1", "train.warmup_steps=3", "train.accumulate_steps=2", "train.ema_decay=0.9",
            "train.epochs=4"]
CONFIG = "configs/cls_resnet10t_synthetic-shapes_32x32.yaml"


class Interrupt(KeyboardInterrupt):
    pass


def stop_after(epochs: int):
    def hook(trainer, row):
        if trainer.epoch == epochs:
            raise Interrupt(f"stopped after epoch {epochs}")
    return hook


def test_four_epochs_equal_two_plus_two(tmp_path):
    from engine.tasks.registry import load_config
    from engine.train.run import train
    from tools import train as train_tool

    threads = torch.get_num_threads()
    try:
        straight = str(tmp_path / "straight")
        train_tool.main(["--config", CONFIG, "--run-dir", straight, "--no-progress", *TINY_CLS])

        interrupted = str(tmp_path / "interrupted")
        cfg = load_config(CONFIG, TINY_CLS)
        with pytest.raises(Interrupted, match=r"in epoch 3 of 4, after 6 optimiser steps; .*last\.pt is complete "
                                              r"\(end of epoch 2\)"):   # a Ctrl-C, reported where it stopped
            train(cfg, interrupted, torch.device("cpu"), progress=False, epoch_hooks=(stop_after(2),))
        assert load_checkpoint(os.path.join(interrupted, "last.pt"))["epoch"] == 2
        train_tool.main(["--config", CONFIG, "--run-dir", interrupted, "--no-progress", "--resume",
                         os.path.join(interrupted, "last.pt"), *TINY_CLS])
    finally:
        torch.set_num_threads(threads)

    a = load_checkpoint(os.path.join(straight, "last.pt"))
    b = load_checkpoint(os.path.join(interrupted, "last.pt"))
    assert a["epoch"] == b["epoch"] == 4 and a["global_step"] == b["global_step"] == 12
    assert set(a["model"]) == set(b["model"])
    for name in a["model"]:                      # every parameter and buffer, bit for bit
        assert torch.equal(a["model"][name], b["model"][name]), name
    for name in a["ema"]["model"]:
        assert torch.equal(a["ema"]["model"][name], b["ema"]["model"][name]), f"ema {name}"
    for k, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][k][key]), f"optimizer {k} {key}"
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 12
    assert a["metrics"] == b["metrics"]
    # The resumed folder's logs continue the interrupted ones: one row per epoch and per step, no repeats.
    rows = list(csv.DictReader(open(os.path.join(interrupted, "epochs.csv"))))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    steps = [int(r["step"]) for r in csv.DictReader(open(os.path.join(interrupted, "steps.csv")))]
    assert steps == list(range(1, 13))
    straight_rows = list(csv.DictReader(open(os.path.join(straight, "epochs.csv"))))
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in straight_rows]


def test_resume_refuses_another_model_and_names_the_fields(tmp_path):
    from tools import train as train_tool

    run = str(tmp_path / "run")
    fast = [*TINY_CLS, "train.epochs=1", "train.ema_decay=null", "data.synthetic.num_train_images=16"]
    train_tool.main(["--config", CONFIG, "--run-dir", run, "--no-progress", *fast])
    last = os.path.join(run, "last.pt")
    config_before = open(os.path.join(run, "config.yaml")).read()
    with pytest.raises(ValueError, match=r"2 fields: model\.backbone: checkpoint 'resnet10t' vs now 'resnet18'; "
                                         r"data\.input_size: checkpoint \[32, 32\] vs now \[48, 48\]"):
        train_tool.main(["--config", CONFIG, "--run-dir", run, "--no-progress", "--resume", last, *fast,
                         "model.backbone=resnet18", "data.input_size=[48,48]"])
    with pytest.raises(ValueError, match=r"train\.optimizer: checkpoint 'adamw' vs now 'sgd'"):
        train_tool.main(["--config", CONFIG, "--run-dir", run, "--no-progress", "--resume", last, *fast,
                         "train.optimizer=sgd"])
    assert open(os.path.join(run, "config.yaml")).read() == config_before, "a refused resume writes nothing"


def test_weights_only_fine_tuning_reports_keys(tmp_path, caplog):
    from models.classifier import ImageClassifier
    from tools import train as train_tool

    source = ImageClassifier("resnet10t", 5).state_dict()
    source["extra.weight"] = torch.zeros(2)
    del source["net.layer4.0.bn2.running_var"]
    save_checkpoint({"model": source}, str(tmp_path / "other.pt"))
    fast = [*TINY_CLS, "train.epochs=1", "train.ema_decay=null", "data.synthetic.num_train_images=16"]
    with caplog.at_level("INFO"):
        summary = train_tool.main(["--config", CONFIG, "--run-dir", str(tmp_path / "ft"), "--no-progress",
                                   "--weights", str(tmp_path / "other.pt"), "train.freeze=[net.conv1.0.*]", *fast])
    text = caplog.text
    assert "1 missing (left at init): net.layer4.0.bn2.running_var" in text
    assert "1 unexpected (ignored): extra.weight" in text
    assert "2 of another shape (left at init): net.fc.weight: file (5, 512) vs model (8, 512)" in text
    assert "trainable parameters:" in text and "net.conv1" in text
    assert summary["epochs"] == 1
    with pytest.raises(ValueError, match=r"freeze pattern 'net\.conv9\.\*' matches no parameter"):
        train_tool.main(["--config", CONFIG, "--run-dir", str(tmp_path / "x"), "--no-progress",
                         "train.freeze=[net.conv9.*]", *fast])
