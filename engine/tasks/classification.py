"""The classification task: cross-entropy (optionally label-smoothed), top-1/top-5 accuracy, confusion matrix.

Images travel as uint8 and are normalised in the model; the loss is computed in float32 whatever the
autocast precision. Evaluation accumulates a confusion matrix on the device (summed over ranks under
DistributedDataParallel), from which accuracy, per-class recall and the picture are derived.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from datasets.image_folder import ImageFolderDataset
from datasets.input_policy import ClassificationAugment, collate_padded
from datasets.sampler import seeded_loader
from datasets.synthetic_classification import SyntheticClassificationDataset
from engine import distributed as dist_utils
from engine.tasks.base import Experiment
from models.classifier import ImageClassifier, backbone_mean, letterbox_fill
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
    def validate(self, model: nn.Module, loader) -> dict[str, float]:
        """top-k accuracy (%), mean per-class recall (%), and the sample-weighted loss over ``loader``."""
        was_training = model.training
        model.eval()
        device = device_of(model)
        c = len(self.class_names)
        confusion = torch.zeros((c, c), dtype=torch.int64, device=device)
        correct = torch.zeros(len(self.topk), dtype=torch.float64, device=device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        try:
            for batch in tqdm(loader, desc="validate", disable=not (self.progress and dist_utils.is_main_process()),
                              leave=False, dynamic_ncols=True):
                if batch is None:
                    continue
                logits = self.forward(model, batch).float()
                labels = batch["label"].to(device)
                loss_sum += F.cross_entropy(logits, labels, reduction="sum").to(torch.float64)
                pred = logits.argmax(1)
                confusion += torch.bincount(labels * c + pred, minlength=c * c).view(c, c)
                if self.topk:
                    top = logits.topk(max(self.topk), dim=1).indices
                    hit = top == labels[:, None]
                    correct += torch.stack([hit[:, :k].any(1).sum() for k in self.topk]).to(torch.float64)
        finally:
            model.train(was_training)
        # Each rank saw its share of the validation set: add the counts up (no sample is counted twice).
        dist_utils.all_reduce_sum(confusion)
        dist_utils.all_reduce_sum(correct)
        dist_utils.all_reduce_sum(loss_sum)
        conf = confusion.cpu().numpy()
        total = int(conf.sum())
        self.last_confusion = conf
        metrics = {f"top{k}": 100.0 * float(v) / max(total, 1) for k, v in zip(self.topk, correct.tolist())}
        per_class = conf.diagonal() / np.maximum(conf.sum(1), 1)
        metrics["mean_class_recall"] = 100.0 * float(per_class[conf.sum(1) > 0].mean()) if total else 0.0
        metrics["loss"] = float(loss_sum) / max(total, 1)
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


# ---------------------------------------------------------------------------------------------- builders
def build_model(cfg, num_classes: int, pretrained: bool = True) -> ImageClassifier:
    m = cfg.model
    w, h = int(cfg.data.input_size[0]), int(cfg.data.input_size[1])
    model = ImageClassifier(m.backbone, num_classes, pretrained_path=m.pretrained_path if pretrained else None,
                            normalization=m.normalization, drop_rate=m.drop_rate, img_size=(h, w),
                            pretrained=m.pretrained and pretrained)
    if model.fixed_input_size and cfg.data.input_policy == "native":
        raise ConfigError(f"model.backbone={m.backbone!r} needs a fixed input size; data.input_policy=native keeps "
                         f"each image's size. Use resize, center_crop, random_crop or letterbox")
    return model


def build_datasets(cfg, fill: Sequence[int] = (0, 0, 0)) -> tuple:
    """``(train_set, val_set, data_hashes)`` from the config: the synthetic shapes or two image folders."""
    d = cfg.data
    common = dict(input_size=d.input_size, policy=d.input_policy, crop_scale=d.crop_scale, fill=fill,
                  on_bad_image=d.on_bad_image)
    augment = ClassificationAugment(flip_prob=d.augment.flip_prob, photometric=d.augment.photometric)
    if d.synthetic is not None:
        if d.train_root or d.val_root:
            raise ConfigError("data.synthetic and data.train_root/val_root are exclusive: set one")
        train_set = SyntheticClassificationDataset(d.synthetic, "train", train=True, augment=augment, **common)
        val_set = SyntheticClassificationDataset(d.synthetic, "val", train=False, **common)
        return train_set, val_set, {"synthetic-shapes spec": d.synthetic.sha256()}
    if not d.train_root or not d.val_root:
        raise ConfigError("set data.train_root and data.val_root (image folders: <root>/<class>/<images>), or "
                         "data.synthetic for the built-in shapes")
    train_set = ImageFolderDataset(d.train_root, train=True, augment=augment, **common)
    val_set = ImageFolderDataset(d.val_root, class_names=train_set.class_names, train=False, **common)
    return train_set, val_set, {f"{d.train_root} (file list)": train_set.listing_sha256(),
                                f"{d.val_root} (file list)": val_set.listing_sha256()}


def make_loader(dataset, *, batch_size: int, shuffle: bool, seed: int, num_workers: int, rank: int = 0,
                world_size: int = 1, pin_memory: bool = False, pad: bool = True):
    """A seeded loader (:func:`datasets.sampler.seeded_loader`) batching with ``collate_padded``."""
    return seeded_loader(dataset, batch_size=batch_size, shuffle=shuffle, seed=seed, num_workers=num_workers,
                         collate_fn=collate_padded, rank=rank, world_size=world_size, pin_memory=pin_memory, pad=pad)


def build_experiment(cfg, device: torch.device, progress: bool = True, rank: int = 0,
                     world_size: int = 1) -> Experiment:
    """Everything a classification run needs, from its config."""
    fill = letterbox_fill(backbone_mean(cfg.model.backbone)) if cfg.model.normalization == "backbone" else (0, 0, 0)
    train_set, val_set, hashes = build_datasets(cfg, fill)
    model = build_model(cfg, train_set.num_classes).to(device)
    task = ClassificationTask(train_set.class_names, label_smoothing=cfg.loss.label_smoothing, topk=cfg.eval.topk,
                              progress=progress)
    pin = device.type == "cuda"
    t = cfg.train
    train_loader = make_loader(train_set, batch_size=t.batch_size, shuffle=True, seed=t.seed,
                               num_workers=t.num_workers, rank=rank, world_size=world_size, pin_memory=pin)
    val_loader = make_loader(val_set, batch_size=cfg.data.val_batch_size, shuffle=False, seed=t.seed,
                             num_workers=t.num_workers, rank=rank, world_size=world_size, pin_memory=pin, pad=False)
    log.info("classification: %d classes, %d training and %d validation images, input policy %s %s",
             train_set.num_classes, len(train_set), len(val_set), cfg.data.input_policy, list(cfg.data.input_size))
    return Experiment(model=model, task=task, train_loader=train_loader, val_loader=val_loader,
                      meta={"class_names": list(train_set.class_names)}, data_hashes=hashes,
                      checkpoint_extra={"meta": {"class_names": list(train_set.class_names)}})
