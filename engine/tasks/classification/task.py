"""The classification task: cross-entropy (optionally label-smoothed), top-1/top-5 accuracy, confusion matrix.

Images travel as uint8 and are normalised in the model; the loss is computed in float32 whatever the
autocast precision. Evaluation accumulates a confusion matrix on the device (summed over ranks under
DistributedDataParallel), from which accuracy, per-class recall and the picture are derived.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import engine.distributed as dist_utils
from engine.evaluation.evaluator import evaluate_model
from models.errors import ConfigError
from models.utils import device_of

log = logging.getLogger(__name__)


class ClassificationTask:
    """Args:
        class_names: one name per class index.
        label_smoothing: cross-entropy target smoothing (0 = one-hot targets).
        topk: accuracies reported (k larger than the number of classes is dropped).
        progress: progress bar during evaluation.
    """

    name = "classification"

    def __init__(self, class_names: Sequence[str], label_smoothing: float = 0.0, topk: Sequence[int] = (1, 5),
                 progress: bool = True):
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label smoothing must be in [0, 1), got {label_smoothing}")
        self.class_names = list(class_names)
        self.label_smoothing = label_smoothing
        self.topk = tuple(k for k in topk if k <= len(self.class_names))
        self.progress = progress
        self.last_confusion: np.ndarray | None = None

    # ------------------------------------------------------------------ training
    @staticmethod
    def forward(model: nn.Module, batch: dict) -> torch.Tensor:
        device = device_of(model)
        images = batch["image"].to(device, non_blocking=True)
        valid = batch.get("valid_hw")
        # Only padded batches (native sizes) need the masked pooling; full-size images take the plain path.
        if valid is not None and bool((valid != torch.tensor(images.shape[-2:])).any()):
            return model(images, valid.to(device))
        return model(images)

    def training_step(self, model: nn.Module, batch: dict) -> dict:
        logits = self.forward(model, batch)
        labels = batch["label"].to(logits.device, non_blocking=True)
        # float32 before log_softmax: under fp16 autocast the logits may be half precision
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        return {"loss": loss, "batch_size": labels.shape[0]}

    @staticmethod
    def batch_ids(batch: dict) -> list:
        return [f"{i} (label {int(lbl)})" for i, lbl in zip(batch["id"], batch["label"])]

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict_batches(self, model: nn.Module, loader) -> Iterator[dict]:
        """Per batch: ``logits`` [B, C] (float32) and ``labels`` [B], on the model's device."""
        was_training = model.training
        model.eval()
        device = device_of(model)
        try:
            for batch in tqdm(loader, desc="validate", disable=not (self.progress and dist_utils.is_main_process()),
                              leave=False, dynamic_ncols=True):
                if batch is None:
                    continue
                yield {"logits": self.forward(model, batch).float(), "labels": batch["label"].to(device)}
        finally:
            model.train(was_training)

    def evaluator(self) -> ClassificationEvaluator:
        """A :class:`ClassificationEvaluator` for this task's classes and top-k."""
        return ClassificationEvaluator(self.class_names, self.topk)

    def validate(self, model: nn.Module, loader) -> dict[str, float]:
        """top-k accuracy (%), mean per-class recall (%), and the sample-weighted loss over ``loader``."""
        metrics, evaluator = evaluate_model(self, model, loader)
        self.last_confusion = evaluator.confusion
        return metrics

    def save_artifacts(self, run_dir: str, tag: str = "") -> list[str]:
        """The confusion matrix of the last validation as ``confusion_matrix[_tag].png`` and ``.csv``."""
        if self.last_confusion is None:
            return []
        stem = os.path.join(run_dir, "confusion_matrix" + (f"_{tag}" if tag else ""))
        with open(stem + ".csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["true \\ predicted", *self.class_names])
            for name, row in zip(self.class_names, self.last_confusion):
                writer.writerow([name, *row.tolist()])
        plot_confusion_matrix(self.last_confusion, self.class_names, stem + ".png")
        return [stem + ".csv", stem + ".png"]


class ClassificationEvaluator:
    """Accumulates a confusion matrix, top-k hits and the summed loss on the device from batches of ``logits``
    [B, C] and ``labels`` [B] (:meth:`ClassificationTask.predict_batches`), then scores them
    (:class:`engine.evaluation.evaluator.Evaluator`): ``top{k}`` accuracy (%), ``mean_class_recall`` (%) and
    the sample-weighted cross-entropy ``loss``. Under DistributedDataParallel the counts are summed over
    ranks (no sample is counted twice)."""

    def __init__(self, class_names: Sequence[str], topk: Sequence[int] = (1,)):
        self.class_names, self.topk = list(class_names), tuple(topk)
        self.results: list = []
        self.reset()

    def reset(self) -> None:
        self._counts: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.confusion: np.ndarray | None = None

    def process(self, predictions: dict, seconds: float | None = None) -> None:
        logits, labels = predictions["logits"], predictions["labels"]
        device, c = logits.device, len(self.class_names)
        if self._counts is None:
            self._counts = (torch.zeros((c, c), dtype=torch.int64, device=device),
                            torch.zeros(len(self.topk), dtype=torch.float64, device=device),
                            torch.zeros((), dtype=torch.float64, device=device))
        confusion, correct, loss_sum = self._counts
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").to(torch.float64)
        confusion += torch.bincount(labels * c + logits.argmax(1), minlength=c * c).view(c, c)
        if self.topk:
            hit = logits.topk(max(self.topk), dim=1).indices == labels[:, None]
            correct += torch.stack([hit[:, :k].any(1).sum() for k in self.topk]).to(torch.float64)

    def evaluate(self) -> dict[str, float]:
        c = len(self.class_names)
        confusion, correct, loss_sum = self._counts or (torch.zeros((c, c), dtype=torch.int64),
                                                         torch.zeros(len(self.topk), dtype=torch.float64),
                                                         torch.zeros((), dtype=torch.float64))
        # Each rank saw its share of the validation set: add the counts up.
        dist_utils.all_reduce_sum(confusion)
        dist_utils.all_reduce_sum(correct)
        dist_utils.all_reduce_sum(loss_sum)
        conf = confusion.cpu().numpy()
        total = int(conf.sum())
        self.confusion = conf
        metrics = {f"top{k}": 100.0 * float(v) / max(total, 1) for k, v in zip(self.topk, correct.tolist())}
        per_class = conf.diagonal() / np.maximum(conf.sum(1), 1)
        metrics["mean_class_recall"] = 100.0 * float(per_class[conf.sum(1) > 0].mean()) if total else 0.0
        metrics["loss"] = float(loss_sum) / max(total, 1)
        return metrics

    def describe(self) -> dict:
        return {"task": "classification", "classes": self.class_names,
                "images": int(self.confusion.sum()) if self.confusion is not None else 0}


def plot_confusion_matrix(confusion: np.ndarray, class_names: Sequence[str], path: str) -> None:
    """Rows: true class, columns: predicted; colour = fraction of the row, text = count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = len(class_names)
    rows = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    size = max(4.0, 0.45 * c + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    if c <= 30:
        for i in range(c):
            for j in range(c):
                ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if rows[i, j] > 0.5 else "black")
        ax.set_xticks(range(c), class_names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(c), class_names, fontsize=8)
    acc = 100.0 * confusion.trace() / max(confusion.sum(), 1)
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion matrix (accuracy {acc:.1f}%)")
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
