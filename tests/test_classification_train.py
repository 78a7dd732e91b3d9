"""Classification through the shared trainer and ``tools.train``, end to end on tiny synthetic data."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch

from datasets.synthetic_classification import SyntheticClassificationSpec, write_image_folder
from engine.checkpoint import FORMAT_VERSION, load_checkpoint
from engine.tasks.registry import load_config
from engine.train.nonfinite import NonFiniteError

pytestmark = pytest.mark.slow

CONFIG = "configs/cls_resnet10t_synthetic-shapes_32x32.yaml"
TINY = ["data.synthetic.num_train_images=24", "data.synthetic.num_val_images=16", "data.synthetic.min_image_size=28",
        "data.synthetic.max_image_size=40", "data.input_size=[32,32]", "train.batch_size=8", "data.val_batch_size=16",
        "train.num_workers=0", "train.num_threads=2", "train.log_interval=1", "train.warmup_steps=2"]


def test_the_shipped_config_is_the_classification_schema():
    cfg = load_config(CONFIG)
    assert cfg.task == "classification" and cfg.model.backbone == "resnet10t" and cfg.data.synthetic is not None
    assert cfg.eval.main_metric == "top1"


def test_cli_trains_and_writes_a_complete_run_folder(tmp_path):
    from tools import train

    run = str(tmp_path / "run")
    summary = train.main(["--config", CONFIG, "--run-dir", run, "--no-progress", "train.epochs=2", *TINY])
    for name in ("config.yaml", "provenance.json", "parameters.txt", "last.pt", "best.pt", "steps.csv", "epochs.csv",
                 "training_curves.png", "metrics.json", "confusion_matrix.png", "confusion_matrix.csv",
                 "confusion_matrix_ema.png"):
        assert os.path.isfile(os.path.join(run, name)), name
    assert any(f.startswith("events.") for f in os.listdir(os.path.join(run, "tensorboard")))
    state = load_checkpoint(os.path.join(run, "last.pt"))
    assert state["format_version"] == FORMAT_VERSION == 2 and state["epoch"] == 2
    assert state["meta"]["class_names"][:3] == ["circle", "triangle", "square"]
    assert set(state["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert all(torch.is_tensor(v) for v in state["rng"]["numpy"].values())
    metrics = json.load(open(os.path.join(run, "metrics.json")))
    prov = metrics["provenance"]
    assert {"commit", "dirty"} <= set(prov["git"]) and prov["seed"] == 0 and prov["packages"]["torch"]
    assert list(prov["annotations"]) == ["synthetic-shapes spec"]
    assert len(prov["annotations"]["synthetic-shapes spec"]) == 64
    assert metrics["config"]["data"]["input_size"] == [32, 32] and state["config"] == metrics["config"]
    assert state["provenance"] == prov
    assert {"top1", "top5", "mean_class_recall", "loss", "ema_top1"} <= set(metrics["last"])
    assert summary["main_metric"] == "top1"
    steps = list(csv.DictReader(open(os.path.join(run, "steps.csv"))))
    assert len(steps) == 6 and {"loss", "lr", "grad_norm", "images_per_s"} <= set(steps[0])
    from engine.inference.loading import load_for_inference

    cfg, model, _ = load_for_inference(os.path.join(run, "best.pt"), torch.device("cpu"))
    assert cfg.task == "classification" and model(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, 8)


def test_image_folders_with_native_sizes_and_sgd(tmp_path):
    from tools import train

    spec = SyntheticClassificationSpec(num_train_images=16, num_val_images=8, min_image_size=24, max_image_size=40)
    train_root = write_image_folder(str(tmp_path), spec, "train")
    val_root = write_image_folder(str(tmp_path), spec, "val")
    run = str(tmp_path / "run")
    summary = train.main(["--config", CONFIG, "--run-dir", run, "--no-progress", "train.epochs=1", *TINY,
                          "data.synthetic=null", f"data.train_root={train_root}", f"data.val_root={val_root}",
                          "data.input_policy=native", "train.optimizer=sgd", "train.nesterov=true",
                          "train.scheduler=multistep", "train.step_epochs=[1]", "train.freeze_stages=2",
                          "train.freeze_bn=frozen", "train.accumulate_steps=2", "train.precision=bf16"])
    assert summary["epochs"] == 1 and summary["steps"] == 1
    prov = json.load(open(os.path.join(run, "provenance.json")))
    assert sorted(prov["annotations"]) == [f"{train_root} (file list)", f"{val_root} (file list)"]
    text = open(os.path.join(run, "parameters.txt")).read()
    # freeze_stages=2 freezes timm's feature levels 0 (the stem) and 1 (layer1: one block in resnet10t)
    frozen = text.split("frozen parameters:\n")[1].split()
    assert frozen[0] == "net.conv1.0.weight" and frozen[-1] == "net.layer1.0.bn2.bias"
    assert not any(name.startswith(("net.layer2", "net.fc")) for name in frozen)
    assert "trainable parameters: 4,826,376 of 4,926,592" in text


def test_a_huge_learning_rate_stops_with_the_report(tmp_path):
    from tools import train

    with pytest.raises(NonFiniteError) as info:
        train.main(["--config", CONFIG, "--run-dir", str(tmp_path / "nan"), "--no-progress", "train.epochs=3",
                    *TINY, "train.lr=1e6", "train.warmup_steps=0"])
    report = str(info.value)
    for part in ("non-finite loss at epoch", "loss=nan", "synthetic-train-", "learning rate:     ",
                 "gradient norm:", "first bad layer:   net.", "batch saved to:"):
        assert part in report, part
    assert os.listdir(tmp_path / "nan" / "nonfinite")


def test_channels_last_trains_to_the_same_weights(tmp_path):
    """train.channels_last changes the memory layout only: after a few steps the weights equal the NCHW run's."""
    from tools import train

    runs = {}
    for layout in ("false", "true"):
        run = str(tmp_path / layout)
        train.main(["--config", CONFIG, "--run-dir", run, "--no-progress", "train.epochs=1", *TINY,
                    "train.num_threads=1", "train.freeze_bn=all", "model.drop_rate=0.0",
                    f"train.channels_last={layout}"])
        runs[layout] = load_checkpoint(os.path.join(run, "last.pt"))
    nchw, nhwc = runs["false"]["model"], runs["true"]["model"]
    assert nhwc["net.conv1.0.weight"].is_contiguous(memory_format=torch.channels_last)
    assert not nchw["net.conv1.0.weight"].is_contiguous(memory_format=torch.channels_last)
    assert runs["true"]["global_step"] == 3
    for name, value in nchw.items():
        torch.testing.assert_close(nhwc[name], value, rtol=1e-4, atol=1e-5, msg=name)
