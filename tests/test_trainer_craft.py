"""Gradient accumulation, clipping, mixed precision and EMA in the generic trainer."""

from __future__ import annotations

import copy
import csv

import pytest
import torch
from torch import nn
from trainer_utils import ToyDataset, ToyTask, loader, make_trainer, toy_model

from engine.checkpoint import load_checkpoint
from engine.train.ema import ModelEMA


def one_epoch(model, tmp_path, data, batch_size, accumulate, lr=0.5, **options):
    trainer = make_trainer(model, tmp_path, data, batch_size=batch_size, lr=lr, val=False, accumulate_steps=accumulate,
                           **options)
    trainer.train_loader = loader(data, batch_size, shuffle=False)
    trainer.train_one_epoch(0)
    return trainer


@pytest.mark.parametrize("n, big, small, accumulate", [(8, 8, 4, 2), (10, 10, 4, 3), (12, 6, 2, 3)])
def test_accumulation_equals_one_big_batch(tmp_path, n, big, small, accumulate):
    """N batches of B (the last may be short) step like one batch of their concatenation."""
    data = ToyDataset(n=n)
    a = one_epoch(toy_model(), tmp_path / "a", data, big, 1)
    b = one_epoch(toy_model(), tmp_path / "b", data, small, accumulate)
    assert a.global_step == b.global_step == n // big
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_without_zero_grad_gradients_would_add_up():
    """What accumulation relies on and why zero_grad exists: backward adds into .grad."""
    net = nn.Linear(2, 1)
    x = torch.ones(1, 2)
    net(x).sum().backward()
    first = net.weight.grad.clone()
    net(x).sum().backward()
    torch.testing.assert_close(net.weight.grad, 2 * first)


def test_clipping_bounds_the_update_and_the_norm_is_logged(tmp_path):
    data = ToyDataset(n=8)
    free = one_epoch(toy_model(), tmp_path / "free", data, 8, 1, lr=1.0)
    clipped = one_epoch(toy_model(), tmp_path / "clip", data, 8, 1, lr=1.0, grad_clip_norm=1e-3)
    start = toy_model()
    with torch.no_grad():
        step = torch.sqrt(sum(((p - q) ** 2).sum() for p, q in zip(clipped.model.parameters(), start.parameters())))
        free_step = torch.sqrt(sum(((p - q) ** 2).sum() for p, q in zip(free.model.parameters(), start.parameters())))
    assert float(step) == pytest.approx(1e-3, rel=1e-3)      # lr 1 x gradient clipped to norm 1e-3
    rows = list(csv.DictReader(open(tmp_path / "clip" / "steps.csv")))
    logged = float(rows[0]["grad_norm"])                       # the norm before clipping
    assert logged == pytest.approx(float(free_step), rel=1e-4)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_checkpoints_its_scaler(tmp_path, precision):
    data = ToyDataset(n=16, noise=0.1)
    trainer = make_trainer(toy_model(), tmp_path, data, batch_size=4, lr=0.1, precision=precision, epochs=3)
    trainer.fit()
    state = load_checkpoint(str(tmp_path / "last.pt"))
    assert (state["scaler"] is not None) == (precision == "fp16")
    rows = list(csv.DictReader(open(tmp_path / "epochs.csv")))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    if precision == "fp16":
        assert "grad_scale" in list(csv.DictReader(open(tmp_path / "steps.csv")))[0]


def test_unknown_precision_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"train\.precision='fp8' is not one of"):
        make_trainer(toy_model(), tmp_path, precision="fp8")


def test_ema_follows_the_formula_and_is_evaluated_alongside(tmp_path):
    model = toy_model()
    ema = ModelEMA(model, decay=0.9)
    before = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for k, v in ema.module.state_dict().items():
        torch.testing.assert_close(v, 0.9 * before[k] + 0.1 * model.state_dict()[k])
    warm = ModelEMA(model, decay=0.999, warmup_steps=10)
    assert warm.current_decay() == pytest.approx(0.1)

    trainer = make_trainer(toy_model(), tmp_path, ToyDataset(n=16), batch_size=4, epochs=2,
                           ema=ModelEMA(toy_model(), 0.5))
    trainer.fit()
    row = list(csv.DictReader(open(tmp_path / "epochs.csv")))[-1]
    assert {"val_acc", "val_ema_acc", "val_loss", "val_ema_loss"} <= set(row)
    state = load_checkpoint(str(tmp_path / "last.pt"))
    assert int(state["ema"]["updates"]) == 8 and set(state["ema"]["model"]) == set(state["model"])


def test_a_task_without_ids_or_batch_size_still_trains(tmp_path):
    class Bare(ToyTask):
        def training_step(self, model, batch):
            return {"loss": super().training_step(model, batch)["loss"]}

    trainer = make_trainer(toy_model(), tmp_path, task=Bare(), epochs=1)
    assert trainer.fit()["steps"] == 3


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    from engine.checkpoint import save_checkpoint
    from engine.train.loop import rng_state, set_rng_state

    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)                       # leaves a cached Gaussian in Python's state
    save_checkpoint({"model": {}, "rng": rng_state()}, str(tmp_path / "r.pt"))
    first = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), torch.rand(3))
    state = load_checkpoint(str(tmp_path / "r.pt"))          # weights_only=True inside
    assert all(torch.is_tensor(v) for part in ("numpy", "python") for v in state["rng"][part].values())
    set_rng_state(state["rng"])
    again = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), torch.rand(3))
    assert first[:3] == again[:3] and torch.equal(first[3], again[3])
