"""tools/diagnose_training.py and engine/train/diagnose.py: overfit one batch, under- vs over-fitting from the
curves, and the learning-rate range test."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest
import torch
from torch import nn
from trainer_utils import ToyDataset, ToyTask, loader

from engine.train.diagnose import diagnose_curves, lr_range_test, overfit_one_batch, take
from models.errors import InputError, RunDirError

TINY_MODEL = ["model.out_indices=[1,2,3]", "model.fpn_channels=16", "model.head_channels=16", "model.depth=2",
              "train.num_workers=0", "train.num_threads=1"]


def _rows(train_losses, val, metric="AP"):
    return [{"epoch": i + 1, "train_loss": t, **({f"val_{metric}": v} if v is not None else {})}
            for i, (t, v) in enumerate(zip(train_losses, val))]


def test_overfit_verdict_when_validation_peaks_and_training_loss_keeps_falling():
    rows = _rows([1.0, 0.6, 0.4, 0.3, 0.2, 0.15], [0.5, 0.6, 0.7, 0.66, 0.62, 0.60])
    d = diagnose_curves(rows, "AP")
    assert d["verdict"] == "overfitting" and d["best_epoch"] == 3 and d["last"] == 0.60
    assert d["val_drop"] == pytest.approx((0.7 - 0.6) / 0.7)
    assert "epoch 3" in d["advice"]


def test_overfit_not_claimed_while_still_learning_underfit_instead():
    # the training loss still falls 25% over the last third and validation improves to the end
    rows = _rows([1.0, 0.8, 0.6, 0.5, 0.45, 0.4], [0.1, 0.2, 0.3, 0.35, 0.4, 0.45])
    d = diagnose_curves(rows, "AP")
    assert d["verdict"] == "underfitting" and d["train_drop"] == pytest.approx((0.5 - 0.4) / 0.5)


def test_overfit_or_not_with_a_lower_is_better_metric_and_flat_curves():
    # NME: lower is better. Best 0.05 at epoch 4, last 0.08: worse by 60% -> overfitting.
    d = diagnose_curves(_rows([1, 0.5, 0.3, 0.2, 0.15, 0.1], [0.2, 0.1, 0.07, 0.05, 0.06, 0.08], "NME"), "NME")
    assert d["verdict"] == "overfitting" and d["best_epoch"] == 4
    flat = diagnose_curves(_rows([0.3, 0.3, 0.3, 0.3, 0.3, 0.3], [0.5, 0.6, 0.6, 0.6, 0.6, 0.6]), "AP")
    assert flat["verdict"] == "converged"
    with pytest.raises(ValueError, match="at least 2 epochs"):
        diagnose_curves(_rows([0.3], [0.5]), "AP")


def test_overfit_one_batch_drives_a_toy_models_loss_down_and_a_broken_one_fails():
    torch.manual_seed(0)
    batch = take(next(iter(loader(ToyDataset(n=12, dim=8, classes=3), 8))), 4)
    assert batch["x"].shape == (4, 8) and len(batch["id"]) == 4
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    r = overfit_one_batch(model, ToyTask(), batch, torch.optim.Adam(model.parameters(), 1e-2), steps=150)
    assert r["passed"] and r["final"] < 0.1 * r["initial"] and len(r["losses"]) == 150

    class Detached(nn.Module):    # a bug: the output does not depend on the trained weights
        def __init__(self):
            super().__init__()
            self.w = nn.Linear(8, 3)

        def forward(self, x):
            return self.w(x).detach() * 0 + torch.ones(len(x), 3) + 0 * self.w.bias.sum()

    broken = Detached()
    r = overfit_one_batch(broken, ToyTask(), batch, torch.optim.Adam(broken.parameters(), 1e-2), steps=20)
    assert not r["passed"] and r["final"] == pytest.approx(r["initial"]) == pytest.approx(math.log(3))


def test_overfit_tool_lr_range_finds_the_divergence_of_a_quadratic():
    # J(w) = 0.5 * a * w^2 with a = 4: gradient descent diverges for lr > 2 / a = 0.5.
    class Quadratic(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor(1.0))

        def forward(self, x):
            return 0.5 * 4.0 * self.w ** 2

    class Task(ToyTask):
        def training_step(self, model, batch):
            return {"loss": model(None)}

    model = Quadratic()
    r = lr_range_test(model, Task(), [0], lambda lr: torch.optim.SGD(model.parameters(), lr), lr_min=1e-3,
                      lr_max=10.0, steps=60)
    assert r["diverged_at_lr"] is not None and 0.5 < r["diverged_at_lr"] <= 10.0
    # Both suggestions are stable rates (lr * a < 2); the lowest loss itself comes after the stability limit
    # (w was already near 0 when the rate crossed it, and the smoothing lags), hence the factor 10.
    assert r["steepest_lr"] < 0.5 and r["suggested_lr"] < 0.5 < r["lowest_lr"]
    assert r["suggested_lr"] == pytest.approx(r["lowest_lr"] / 10)
    assert r["lrs"][0] == pytest.approx(1e-3) and all(b > a for a, b in zip(r["lrs"], r["lrs"][1:]))


def test_overfit_tool_on_a_tiny_keypoint_config(tiny_synthetic, tmp_path, capsys):
    from tools import diagnose_training

    cfg = tmp_path / "kpt.yaml"
    cfg.write_text(f"""task: keypoints
data:
  train: {{ann_file: {tiny_synthetic['train']}, image_root: {tiny_synthetic['images']}}}
  val: {{ann_file: {tiny_synthetic['val']}, image_root: {tiny_synthetic['images']}}}
  input_size: [32, 48]
  flip_index: [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
train: {{batch_size: 4, lr: 3.0e-3, optimizer: adamw}}
""")
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "epochs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["epoch", "step", "train_loss", "val_AP"])
        w.writeheader()
        for i, (t, v) in enumerate([(0.05, 0.1), (0.03, 0.3), (0.02, 0.25), (0.015, 0.2)]):
            w.writerow({"epoch": i + 1, "step": 10 * (i + 1), "train_loss": t, "val_AP": v})
    out = tmp_path / "out"
    report = diagnose_training.main(["--config", str(cfg), "--overfit-steps", "40", "--overfit-samples", "2",
                                      "--lr-range-steps", "8", "--run-dir", str(run), "--output-dir", str(out),
                                      *TINY_MODEL])
    assert report["curves"]["verdict"] == "overfitting" and report["curves"]["best_epoch"] == 2
    o = report["overfit"]
    assert o["final"] < o["initial"] and o["steps"] == 40 and math.isfinite(o["ratio"])
    assert len(report["lr_range"]["lrs"]) <= 8 and (out / "lr_range.png").stat().st_size > 5000
    assert json.load(open(out / "diagnosis.json"))["curves"]["verdict"] == "overfitting"
    assert "overfit 2 samples, 40 steps" in capsys.readouterr().out
    with pytest.raises(RunDirError, match="epochs.csv"):
        diagnose_training.main(["--config", str(cfg), "--overfit-steps", "0", "--run-dir", str(tmp_path / "none")])
    with pytest.raises(InputError, match="nothing to do"):
        diagnose_training.main(["--config", str(cfg), "--overfit-steps", "0", "--output-dir", str(out)])
    assert os.path.isfile(out / "diagnosis.json")
