"""Building the classification task's parts from its config: model, datasets (the synthetic shapes or image
folders) and loaders, for training (``build_experiment``), for evaluating a checkpoint
(``build_evaluation``) and for loading one (``build_inference_model``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from datasets.image_folder import ImageFolderDataset
from datasets.input_policy import ClassificationAugment, collate_padded
from datasets.sampler import seeded_loader
from datasets.synthetic_classification import SyntheticClassificationDataset
from engine.tasks.base import Experiment
from engine.tasks.classification.task import ClassificationTask
from models.classifier import ImageClassifier, backbone_mean, letterbox_fill
from models.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)


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
    train_set, val_set, hashes = build_datasets(cfg, _letterbox_fill(cfg))
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


def _letterbox_fill(cfg) -> tuple[int, int, int]:
    return letterbox_fill(backbone_mean(cfg.model.backbone)) if cfg.model.normalization == "backbone" else (0, 0, 0)


def build_evaluation(cfg, device: torch.device, progress: bool = True) -> Experiment:
    """The validation images and loader, the task, and an untrained model to load a checkpoint into (classes
    as training saw them: the training folder's, or the synthetic shapes)."""
    train_set, val_set, hashes = build_datasets(cfg, _letterbox_fill(cfg))
    names = list(train_set.class_names)
    task = ClassificationTask(names, label_smoothing=cfg.loss.label_smoothing, topk=cfg.eval.topk, progress=progress)
    val_loader = make_loader(val_set, batch_size=cfg.data.val_batch_size, shuffle=False, seed=cfg.train.seed,
                             num_workers=cfg.train.num_workers, pin_memory=device.type == "cuda", pad=False)
    return Experiment(model=build_model(cfg, len(names), pretrained=False).to(device), task=task, train_loader=None,
                      val_loader=val_loader, meta={"class_names": names}, data_hashes=hashes, val_data=val_set)


def check_checkpoint(state: dict, exp: Experiment, checkpoint: str) -> None:
    """Refuse a classifier whose classes are not the evaluation data's."""
    saved = list(state.get("meta", {}).get("class_names", []))
    if saved != exp.meta["class_names"]:
        raise CheckpointError(f"{checkpoint} classifies {saved[:10]} but the config's data has "
                              f"{exp.meta['class_names'][:10]}; evaluate it with the config it was trained with")


def build_inference_model(cfg, meta: dict) -> ImageClassifier:
    """The untrained classifier a checkpoint's weights load into (its config and ``meta``)."""
    return build_model(cfg, len(meta["class_names"]), pretrained=False)
