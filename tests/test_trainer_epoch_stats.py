"""The epoch loss is the sample-weighted mean: a short last batch does not count as much as a full one."""

from __future__ import annotations

import csv

import pytest
import torch
from torch import nn
from trainer_utils import ToyDataset, loader, make_trainer


class ValueTask:
    """A batch's loss is the mean of its samples' values (sample i has value i); lr 0 keeps the model still."""

    def training_step(self, model, batch):
        loss = batch["index"].to(torch.float32).mean() + 0.0 * next(model.parameters()).sum()
        return {"loss": loss, "batch_size": len(batch["index"])}

    @staticmethod
    def batch_ids(batch):
        return list(batch["id"])

    def validate(self, model, loader):
        return {}


def test_epoch_loss_is_sample_weighted(tmp_path):
    data = ToyDataset(n=10)            # batches of 4, 4 and 2
    trainer = make_trainer(nn.Linear(4, 3), tmp_path, data, ValueTask(), batch_size=4, lr=0.0, val=False,
                           main_metric="loss")
    trainer.train_loader = loader(data, 4, shuffle=False)    # batches [0..3], [4..7], [8, 9]
    stats = trainer.train_one_epoch(0)
    sample_mean = sum(range(10)) / 10                        # 4.5
    mean_of_batch_means = (1.5 + 5.5 + 8.5) / 3              # 5.17: what averaging per batch would report
    assert stats["train_loss"] == pytest.approx(sample_mean, abs=1e-9)
    assert stats["train_loss"] != pytest.approx(mean_of_batch_means, abs=0.5)
    assert stats["train_images"] == 10


def test_epoch_row_in_the_csv_uses_the_weighted_mean(tmp_path):
    trainer = make_trainer(nn.Linear(4, 3), tmp_path, ToyDataset(n=10), ValueTask(), batch_size=4, lr=0.0,
                           val=False, main_metric="loss", epochs=2)
    trainer.fit()
    rows = list(csv.DictReader(open(tmp_path / "epochs.csv")))
    assert [float(r["train_loss"]) for r in rows] == pytest.approx([4.5, 4.5])
