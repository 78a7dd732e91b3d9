"""Building the detection task's parts from its config: the head's strides, codec, model, task, datasets and
loaders, for training (``build_experiment``), for evaluating a checkpoint (``build_evaluation``) and for
loading one for inference (``build_inference_model``)."""

from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader

from datasets.coco_detection import DetectionDataset, coco_detection_subset, load_coco_detection
from datasets.detection_transforms import DetectionTransformDataset, EpochSeededSampler, detection_collate_fn
from datasets.synthetic_detection import ensure_synthetic_detection_dataset
from engine.tasks.base import Experiment
from engine.tasks.detection.task import DetectionMeta, DetectionTask
from models.box_codec import CenterNetCodec, MultiLevelCenterNetCodec
from models.detector import DETECTION_STRIDE, CenterNetDetector, MultiLevelDetector, build_detector
from models.errors import CheckpointError, ConfigError, DataError
from models.ltrb import LtrbCodec, LtrbLoss

log = logging.getLogger(__name__)


HEADS = ("single", "multi_level", "ltrb")


def _head_strides(cfg) -> list[int] | None:
    """The multi-level head's strides, or None for the single-level head (checks ``model.head``)."""
    m = cfg.model
    if m.head not in HEADS:
        raise ConfigError(f"model.head={m.head!r}: use 'single' (stride 4 only), 'multi_level' (one CenterNet "
                          f"head on model.head_strides) or 'ltrb' (class scores and edge distances on "
                          f"model.head_strides)")
    if m.head == "single":
        return None
    strides = [int(s) for s in m.head_strides]
    if not strides or any(b != 2 * a for a, b in zip(strides, strides[1:])):
        raise ConfigError(f"model.head_strides={strides}: give strides finest first, each double the previous "
                          f"(e.g. [4, 8, 16, 32], or [8, 16, 32, 64] for large objects)")
    return strides


def build_codec(cfg, num_classes: int) -> CenterNetCodec | MultiLevelCenterNetCodec | LtrbCodec:
    strides = _head_strides(cfg)
    if cfg.model.head == "ltrb":
        try:
            return LtrbCodec(cfg.data.input_size, num_classes, strides, reg_max=cfg.model.reg_max,
                             size_bounds=cfg.model.level_size_bounds, topk=cfg.eval.pre_nms_topk)
        except ValueError as e:
            raise ConfigError(f"model.head_strides={strides}, model.level_size_bounds={cfg.model.level_size_bounds}, "
                              f"data.input_size={list(cfg.data.input_size)}: {e}") from e
    if strides is None:
        return CenterNetCodec(cfg.data.input_size, num_classes, stride=DETECTION_STRIDE,
                              min_overlap=cfg.data.min_overlap, topk=cfg.eval.topk)
    try:
        return MultiLevelCenterNetCodec(cfg.data.input_size, num_classes, strides, cfg.model.level_size_bounds,
                                        min_overlap=cfg.data.min_overlap, topk=cfg.eval.topk)
    except ValueError as e:
        raise ConfigError(f"model.head_strides={strides}, model.level_size_bounds={cfg.model.level_size_bounds}, "
                          f"data.input_size={list(cfg.data.input_size)}: {e}") from e


def build_model(cfg, num_classes: int, pretrained: bool = True) -> CenterNetDetector | MultiLevelDetector:
    m = cfg.model
    strides = _head_strides(cfg)
    w, h = (int(v) for v in cfg.data.input_size)
    coarsest = max(strides) if strides else DETECTION_STRIDE
    if w % coarsest or h % coarsest:
        raise ConfigError(f"data.input_size {[w, h]} must be a multiple of the head's coarsest stride {coarsest}")
    try:
        model = build_detector(num_classes, backbone=m.backbone, out_indices=m.out_indices,
                               pretrained_path=m.pretrained_path if pretrained else None, fpn_channels=m.fpn_channels,
                               head_channels=m.head_channels, normalization=m.normalization, strides=strides,
                               shared_head=m.shared_head, pretrained=m.pretrained and pretrained,
                               head="ltrb" if m.head == "ltrb" else "centernet", reg_max=m.reg_max,
                               head_convs=m.head_convs)
    except ValueError as e:
        if strides is None:
            raise
        raise ConfigError(f"model.head_strides={strides}, model.out_indices={list(m.out_indices)}: {e}") from e
    if w % model.max_stride or h % model.max_stride:
        log.warning("data.input_size %s is not a multiple of the backbone's coarsest stride %d: the model runs, "
                    "but the FPN levels are no longer exactly aligned", [w, h], model.max_stride)
    return model


def build_ltrb_loss(cfg, codec: LtrbCodec) -> LtrbLoss:
    """The ltrb head's targets and losses from the ``loss`` section."""
    lo = cfg.loss
    try:
        return LtrbLoss(codec, assigner=lo.assigner, centre_radius=lo.centre_radius, tal_topk=lo.tal_topk,
                        tal_alpha=lo.tal_alpha, tal_beta=lo.tal_beta, quality=lo.quality, cls_loss=lo.cls_loss,
                        cls_weight=lo.cls_weight, giou_weight=lo.ltrb_giou_weight, dfl_weight=lo.dfl_weight,
                        qfl_beta=lo.qfl_beta, vfl_alpha=lo.vfl_alpha, vfl_gamma=lo.vfl_gamma)
    except ValueError as e:
        raise ConfigError(f"loss.assigner={lo.assigner!r}, loss.quality={lo.quality!r}, "
                          f"loss.cls_loss={lo.cls_loss!r}: {e}") from e


def build_task(cfg, meta: DetectionMeta, val_gt: dict | None = None, progress: bool = True) -> DetectionTask:
    lo, ev = cfg.loss, cfg.eval
    codec = build_codec(cfg, meta.num_classes)
    ltrb = isinstance(codec, LtrbCodec)
    return DetectionTask(codec, meta, val_gt=val_gt, heatmap_weight=lo.heatmap_weight,
                         size_weight=lo.size_weight, offset_weight=lo.offset_weight, giou_weight=lo.giou_weight,
                         focal_alpha=lo.focal_alpha, focal_beta=lo.focal_beta, score_threshold=ev.score_threshold,
                         nms=ev.nms, nms_iou=ev.nms_iou, progress=progress,
                         ltrb_loss=build_ltrb_loss(cfg, codec) if ltrb else None,
                         max_detections=ev.topk if ltrb else None)


def prepare_data(cfg) -> None:
    """Write the synthetic set if the config asks for it and it is not there yet."""
    if cfg.data.synthetic is not None:
        ensure_synthetic_detection_dataset(cfg.data.synthetic_root, cfg.data.synthetic)


def load_split(cfg, split_cfg) -> DetectionDataset:
    return load_coco_detection(split_cfg.ann_file, split_cfg.image_root, category_ids=cfg.data.category_ids,
                               missing_images=cfg.data.on_bad_image, subset=split_cfg.subset,
                               holdout_fraction=split_cfg.holdout_fraction, holdout_seed=split_cfg.holdout_seed,
                               on_bad_annotation=cfg.data.on_bad_annotation)


def make_dataset(cfg, data: DetectionDataset, train: bool) -> DetectionTransformDataset:
    if not data.images:
        raise DataError(f"{data.ann_file}: no images in the {'train' if train else 'val'} split; nothing to "
                         f"{'train on' if train else 'evaluate'}")
    return DetectionTransformDataset(data.images, cfg.data.input_size, train=train, augment=cfg.data.augment,
                                     on_bad_image=cfg.data.on_bad_image, epochs=cfg.train.epochs)


def make_loader(dataset, *, batch_size: int, shuffle: bool, seed: int, num_workers: int,
                max_objects: int | None = None, rank: int = 0, world_size: int = 1, pin_memory: bool = False,
                pad: bool = True):
    """A seeded loader made as :func:`datasets.sampler.seeded_loader` makes one (its own generator, so that a
    resumed detection run continues bit-identically too), batching with ``detection_collate_fn(max_objects)``,
    but whose sampler also hands each sample its epoch (:class:`EpochSeededSampler`, same order and seeds):
    the workers' copies of the dataset learn it no other way, and ``augment.close_mosaic`` needs it."""
    sampler = EpochSeededSampler(len(dataset), shuffle=shuffle, seed=seed, rank=rank, num_replicas=world_size,
                                 pad=pad)
    # As in seeded_loader: without its own generator, creating an iterator would draw from the global torch RNG.
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed), collate_fn=detection_collate_fn(max_objects),
                      pin_memory=pin_memory, persistent_workers=num_workers > 0, drop_last=False)


def make_val_loader(cfg, val_set, device: torch.device, rank: int = 0, world_size: int = 1):
    """The validation loader: in order, not padded (each rank its share under DDP, gathered by ``evaluate``)."""
    return make_loader(val_set, batch_size=cfg.data.val_batch_size, shuffle=False, seed=cfg.train.seed,
                       num_workers=cfg.train.num_workers, max_objects=cfg.data.max_objects, rank=rank,
                       world_size=world_size, pin_memory=device.type == "cuda", pad=False)


def build_experiment(cfg, device: torch.device, progress: bool = True, rank: int = 0,
                     world_size: int = 1) -> Experiment:
    """Everything a detection run needs, from its config."""
    prepare_data(cfg)
    train_data = load_split(cfg, cfg.data.train)
    val_data = load_split(cfg, cfg.data.val)
    if train_data.category_ids != val_data.category_ids:
        raise DataError(f"train ({cfg.data.train.ann_file}) and val ({cfg.data.val.ann_file}) have different "
                         f"categories: {train_data.category_ids} vs {val_data.category_ids}; set data.category_ids")
    overlap = set(train_data.image_ids) & set(val_data.image_ids)
    if overlap and cfg.data.train.ann_file == cfg.data.val.ann_file:
        log.warning("train and val share %d images (e.g. %s): the validation numbers are not held out",
                    len(overlap), sorted(overlap)[:5])
    meta = DetectionMeta(class_names=train_data.class_names, category_ids=train_data.category_ids)
    log.info("detection: %d classes %s; train %d images (%d objects), val %d images (%d objects)", meta.num_classes,
             meta.class_names, len(train_data.images), train_data.num_objects, len(val_data.images),
             val_data.num_objects)
    train_set = make_dataset(cfg, train_data, train=True)
    val_set = make_dataset(cfg, val_data, train=False)
    model = build_model(cfg, meta.num_classes).to(device)
    val_gt = coco_detection_subset(cfg.data.val.ann_file, val_data.image_ids, meta.category_ids,
                                   cfg.data.on_bad_annotation)
    task = build_task(cfg, meta, val_gt, progress)
    train_loader = make_loader(train_set, batch_size=cfg.train.batch_size, shuffle=True, seed=cfg.train.seed,
                               num_workers=cfg.train.num_workers, max_objects=cfg.data.max_objects, rank=rank,
                               world_size=world_size, pin_memory=device.type == "cuda")
    val_loader = make_val_loader(cfg, val_set, device, rank=rank, world_size=world_size)
    return Experiment(model=model, task=task, train_loader=train_loader, val_loader=val_loader, meta=meta,
                      annotation_files=sorted({cfg.data.train.ann_file, cfg.data.val.ann_file}),
                      checkpoint_extra={"meta": meta.to_dict()})


def build_evaluation(cfg, device: torch.device, progress: bool = True) -> Experiment:
    """The validation split, its loader and ground truth, the task, and an untrained model to load a checkpoint
    into (classes from the validation json and ``data.category_ids``)."""
    prepare_data(cfg)
    val_data = load_split(cfg, cfg.data.val)
    meta = DetectionMeta(class_names=val_data.class_names, category_ids=val_data.category_ids)
    model = build_model(cfg, meta.num_classes, pretrained=False).to(device)
    val_gt = coco_detection_subset(cfg.data.val.ann_file, val_data.image_ids, meta.category_ids,
                                   cfg.data.on_bad_annotation)
    return Experiment(model=model, task=build_task(cfg, meta, val_gt, progress), train_loader=None,
                      val_loader=make_val_loader(cfg, make_dataset(cfg, val_data, train=False), device), meta=meta,
                      annotation_files=[cfg.data.val.ann_file], val_data=val_data)


def check_checkpoint(state: dict, exp: Experiment, checkpoint: str) -> None:
    """Refuse a detector whose classes are not the evaluation json's (its AP would be against other labels)."""
    saved = DetectionMeta.from_dict(state["meta"])
    if saved.category_ids != exp.meta.category_ids:
        ann = exp.annotation_files[0] if exp.annotation_files else "the validation json"
        raise CheckpointError(f"{checkpoint} detects categories {saved.category_ids} ({saved.class_names}) but "
                              f"{ann} gives {exp.meta.category_ids}; set data.category_ids to the checkpoint's")


def build_inference_model(cfg, meta: dict) -> CenterNetDetector | MultiLevelDetector:
    """The untrained detector a detection checkpoint's weights load into (its config and ``meta``)."""
    return build_model(cfg, DetectionMeta.from_dict(meta).num_classes, pretrained=False)
