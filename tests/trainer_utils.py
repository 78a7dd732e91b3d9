"""Tiny datasets, tasks and models for the trainer tests (not a test module itself)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from datasets.sampler import SeededSampler
from engine.train.loop import Trainer, TrainerOptions


class ToyDataset(Dataset):
    """``n`` samples: ``x`` [dim] (plus noise drawn from the sample seed: a seeded 'augmentation'), ``y`` label."""

    def __init__(self, n: int = 12, dim: int = 4, classes: int = 3, noise: float = 0.0, seed: int = 0):
        g = np.random.default_rng(seed)
        self.x = g.normal(size=(n, dim)).astype(np.float32)
        self.y = g.integers(0, classes, size=n)
        self.noise = noise

    def __len__(self):
        return len(self.x)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        x = self.x[index].copy()
        if self.noise:
            x += self.noise * np.random.default_rng(seed).normal(size=x.shape).astype(np.float32)
        return {"x": torch.from_numpy(x), "y": int(self.y[index]), "id": f"toy-{index}", "index": index}


class ToyTask:
    """Cross-entropy of ``model(x)``; validation reports the sample-weighted loss and accuracy."""

    def training_step(self, model, batch):
        device = next(model.parameters()).device
        logits = model(batch["x"].to(device))
        return {"loss": F.cross_entropy(logits.float(), batch["y"].to(device)), "batch_size": len(batch["y"])}

    @staticmethod
    def batch_ids(batch):
        return list(batch["id"])

    @torch.no_grad()
    def validate(self, model, loader):
        was = model.training
        model.eval()
        total, correct, n = 0.0, 0, 0
        for batch in loader:
            logits = model(batch["x"])
            total += float(F.cross_entropy(logits, batch["y"], reduction="sum"))
            correct += int((logits.argmax(1) == batch["y"]).sum())
            n += len(batch["y"])
        model.train(was)
        return {"loss": total / n, "acc": 100.0 * correct / n}


def toy_model(dim: int = 4, classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, 8), nn.Tanh(), nn.Linear(8, classes))


def loader(dataset, batch_size: int, shuffle: bool = True, seed: int = 0) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=SeededSampler(len(dataset), shuffle=shuffle, seed=seed))


def make_trainer(model, run_dir, dataset=None, task=None, batch_size: int = 4, lr: float = 0.1, optimizer=None,
                 val=True, **options) -> Trainer:
    dataset = dataset if dataset is not None else ToyDataset()
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=lr)
    kwargs = {"epochs": 1, "main_metric": "acc", "log_interval": 1, "progress": False,
              "nominal_batch_size": batch_size, **options}
    ema = kwargs.pop("ema", None)
    return Trainer(model, task or ToyTask(), loader(dataset, batch_size), loader(dataset, 64, False) if val else None,
                   opt, None, str(run_dir), TrainerOptions(**kwargs), ema=ema)
