"""A NaN/Inf loss or gradient: the report names the terms, samples, lr, gradient norm and first bad layer."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from trainer_utils import ToyDataset, ToyTask, make_trainer, toy_model

from engine.train.nonfinite import NonFiniteError


class Log(nn.Module):
    """log(x): NaN for the negative entries, like a log of a value that was meant to be positive."""

    def forward(self, x):
        return torch.log(x)


class ShiftData(ToyDataset):
    """Sample 5's features are all strongly negative, so log() of them is NaN."""

    def __getitem__(self, item):
        out = super().__getitem__(item)
        out["x"] = out["x"].abs() + 0.1
        if out["index"] == 5:
            out["x"] = -out["x"]
        return out


def test_stop_names_terms_samples_lr_layer_and_saves_the_batch(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Identity(), Log(), nn.Linear(4, 3))
    with torch.no_grad():        # the first layer passes the input through: log sees x itself
        model[0].weight.copy_(torch.eye(4))
        model[0].bias.zero_()
    trainer = make_trainer(model, tmp_path, ShiftData(n=12), batch_size=4, lr=0.25)
    with pytest.raises(NonFiniteError) as info:
        trainer.fit()
    report = str(info.value)
    assert "non-finite loss at epoch 1" in report
    assert "loss=nan" in report and "non-finite: loss" in report
    assert "toy-5" in report                                  # the sample ids of the batch
    assert "learning rate:     0.25" in report
    assert "gradient norm:" in report
    assert "first bad layer:   2 (Log) output has NaN for batch rows [" in report
    assert "its inputs were finite" in report
    assert "Diagnose in this order: (1) the data" in report
    saved = [f for f in os.listdir(tmp_path / "nonfinite") if f.endswith(".pt")]
    assert len(saved) == 1
    batch = torch.load(tmp_path / "nonfinite" / saved[0], weights_only=True)
    assert "toy-5" in batch["sample_ids"] and torch.is_tensor(batch["batch"]["x"])
    assert open(tmp_path / "nonfinite" / saved[0].replace(".pt", ".txt")).read().startswith("non-finite loss")


class DivideByZeroTask(ToyTask):
    """The loss formula itself divides by zero on the second step (every layer's output stays finite)."""

    calls = 0

    def training_step(self, model, batch):
        out = super().training_step(model, batch)
        self.calls += 1
        if self.calls == 2:
            out["loss"] = out["loss"] / torch.zeros(())
            out["loss_ce"] = out["loss"] * 0 + 1.0
        return out


def test_a_loss_formula_failure_is_told_apart_from_a_layer(tmp_path):
    trainer = make_trainer(toy_model(), tmp_path, ToyDataset(n=12), task=DivideByZeroTask(), batch_size=4)
    with pytest.raises(NonFiniteError, match="every layer's output is finite") as info:
        trainer.fit()
    assert "loss=inf" in str(info.value) and "step 2" in str(info.value)


def test_skip_continues_and_counts_until_the_limit(tmp_path):
    trainer = make_trainer(toy_model(), tmp_path, ToyDataset(n=12), task=DivideByZeroTask(), batch_size=4,
                           on_nonfinite="skip", epochs=2)
    summary = trainer.fit()
    assert summary["nonfinite_skips"] == 1 and trainer.global_step == 5      # 6 batches, one skipped
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())

    class AlwaysNaN(ToyTask):
        def training_step(self, model, batch):
            out = super().training_step(model, batch)
            out["loss"] = out["loss"] * float("nan")
            return out

    trainer = make_trainer(toy_model(), tmp_path / "b", ToyDataset(n=40), task=AlwaysNaN(), batch_size=4,
                           on_nonfinite="skip", max_nonfinite_skips=3)
    with pytest.raises(NonFiniteError, match="3 steps were skipped already"):
        trainer.fit()


class SqrtAtZero(nn.Module):
    """sqrt(x * 0): the forward is finite (0), its gradient 1 / (2 sqrt(0)) is Inf, times 0 is NaN."""

    def forward(self, x):
        return x + torch.sqrt(x * 0.0 * self.scale.pow(2)).sum()

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))


def test_check_grads_names_the_parameters_with_bad_gradients(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3), SqrtAtZero())
    trainer = make_trainer(model, tmp_path, ToyDataset(n=8), batch_size=4, check_grads=True)
    with pytest.raises(NonFiniteError) as info:
        trainer.fit()
    report = str(info.value)
    assert report.startswith("non-finite gradient at epoch 1, step 1")
    assert "gradients:" in report and "0.weight" in report and "1.scale" in report
    assert "gradient norm:     nan (this step, before clipping)" in report
    assert all(torch.isfinite(p).all() for p in model.parameters()), "the bad step was not applied"


def test_check_inputs_reports_a_nan_in_the_batch(tmp_path):
    class NaNTarget(ToyDataset):
        def __getitem__(self, item):
            out = super().__getitem__(item)
            out["weight"] = torch.tensor(float("nan") if out["index"] == 3 else 1.0)
            return out

    trainer = make_trainer(toy_model(), tmp_path, NaNTarget(n=8), batch_size=8, check_inputs=True)
    trainer.train_loader = __import__("trainer_utils").loader(trainer.train_loader.dataset, 8, shuffle=False)
    with pytest.raises(NonFiniteError) as info:
        trainer.fit()
    assert "inputs:            non-finite: batch['weight'] (batch rows [3])" in str(info.value)
