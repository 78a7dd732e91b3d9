"""Building the keypoint task's parts from its config: the skeleton meta, codec, model, task, datasets and
loaders, for training (``build_experiment``), for evaluating a checkpoint (``build_evaluation``) and for
loading one for inference (``build_inference_model``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from datasets.coco_common import load_validated_ground_truth
from datasets.coco_keypoints import KeypointDataset, load_coco_keypoints
from datasets.sampler import seeded_loader
from datasets.skeletons import COCO_SIGMAS
from datasets.synthetic import ensure_synthetic_dataset
from datasets.topdown import TopDownKeypointDataset, check_flip_index, collate_skipping_none
from engine.evaluation.face_metrics import build_face_report
from engine.tasks.base import Experiment
from engine.tasks.keypoints.distill import HeatmapTeacher, load_heatmap_teacher
from engine.tasks.keypoints.task import KeypointMeta, KeypointTask
from models.errors import CheckpointError, ConfigError, DataError
from models.heatmap_codec import HeatmapCodec
from models.pose import HEATMAP_STRIDE, TopDownPoseModel, build_pose_model

log = logging.getLogger(__name__)


def resolve_meta(cfg, data: KeypointDataset) -> KeypointMeta:
    """Skeleton description from the json (names, skeleton) and the config (flip map, sigmas), checked."""
    num_k = data.num_keypoints
    flip_index = check_flip_index(cfg.data.flip_index, num_k, data.keypoint_names)
    sigmas = cfg.data.oks_sigmas
    if sigmas is None:
        if num_k != len(COCO_SIGMAS):
            raise ConfigError(f"{data.ann_file} has {num_k} keypoints; COCO's default OKS sigmas are for 17. Set "
                             f"data.oks_sigmas to {num_k} values (see docs/keypoints.md on estimating them)")
        sigmas = list(COCO_SIGMAS)
    if len(sigmas) != num_k:
        raise ConfigError(f"data.oks_sigmas has {len(sigmas)} values for {num_k} keypoints")
    for i, j in enumerate(flip_index):
        if abs(sigmas[i] - sigmas[j]) > 1e-9:
            raise ConfigError(f"data.oks_sigmas differ between flip partners {i} and {j} "
                             f"({sigmas[i]} vs {sigmas[j]}); a keypoint and its mirror image share one sigma")
    targets = cfg.data.target_sigmas
    if targets is not None:
        if len(targets) != num_k:
            raise ConfigError(f"data.target_sigmas has {len(targets)} values for {num_k} keypoints; give one per "
                              f"keypoint, or null for data.sigma everywhere")
        for i, j in enumerate(flip_index):
            if abs(targets[i] - targets[j]) > 1e-9:
                raise ConfigError(f"data.target_sigmas differ between flip partners {i} and {j} ({targets[i]} vs "
                                  f"{targets[j]}); a flipped crop swaps their targets, so they share one sigma")
    nme_pair = None
    if cfg.data.nme_normalize:
        if len(cfg.data.nme_normalize) != 2:
            raise ConfigError(f"data.nme_normalize must name two keypoints, got {cfg.data.nme_normalize}")
        nme_pair = tuple(_keypoint_index(k, data.keypoint_names) for k in cfg.data.nme_normalize)
    return KeypointMeta(keypoint_names=data.keypoint_names, skeleton=data.skeleton, flip_index=flip_index,
                        oks_sigmas=[float(s) for s in sigmas], category_id=data.category_id, nme_pair=nme_pair)


def _keypoint_index(key, names: list[str]) -> int:
    if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
        idx = int(key)
        if not 0 <= idx < len(names):
            raise ConfigError(f"data.nme_normalize index {idx} is outside 0..{len(names) - 1}")
        return idx
    if key not in names:
        raise ConfigError(f"data.nme_normalize keypoint {key!r} is not among the keypoint names {names}")
    return names.index(key)


def check_input_size(input_size: Sequence[int], max_stride: int,
                     heatmap_stride: int = HEATMAP_STRIDE) -> tuple[int, int]:
    w, h = int(input_size[0]), int(input_size[1])
    if w % heatmap_stride or h % heatmap_stride:
        raise ConfigError(f"data.input_size {[w, h]} must be a multiple of the heatmap stride {heatmap_stride}")
    if w % max_stride or h % max_stride:
        log.warning("data.input_size %s is not a multiple of the backbone's coarsest stride %d: the model runs, "
                    "but the heatmaps are no longer exactly flip-aligned", [w, h], max_stride)
    return w, h


def build_codec(cfg) -> HeatmapCodec:
    w, h = int(cfg.data.input_size[0]), int(cfg.data.input_size[1])
    stride = cfg.model.heatmap_stride
    sigma = cfg.data.sigma if cfg.data.target_sigmas is None else [float(v) for v in cfg.data.target_sigmas]
    return HeatmapCodec((w, h), (w // stride, h // stride), sigma=sigma,
                        refine=cfg.eval.refine, blur_kernel_size=cfg.eval.blur_kernel_size)


def build_model(cfg, num_keypoints: int, pretrained: bool = True) -> TopDownPoseModel:
    m = cfg.model
    model = build_pose_model(num_keypoints, backbone=m.backbone, out_indices=m.out_indices,
                             pretrained_path=m.pretrained_path if pretrained else None,
                             fpn_channels=m.fpn_channels, num_stacks=m.num_stacks, depth=m.depth,
                             head_channels=m.head_channels, num_blocks=m.num_blocks, normalization=m.normalization,
                             pretrained=m.pretrained and pretrained, heatmap_stride=m.heatmap_stride,
                             drop_path_rate=m.drop_path_rate)
    check_input_size(cfg.data.input_size, model.max_stride, m.heatmap_stride)
    return model


def load_split(cfg, split_cfg) -> KeypointDataset:
    return load_coco_keypoints(split_cfg.ann_file, split_cfg.image_root, category_id=cfg.data.category_id,
                               missing_images=cfg.data.on_bad_image, subset=split_cfg.subset,
                               holdout_fraction=split_cfg.holdout_fraction, holdout_seed=split_cfg.holdout_seed,
                               on_bad_annotation=cfg.data.on_bad_annotation)


def prepare_data(cfg) -> None:
    """Write the synthetic set if the config asks for it and it is not there yet."""
    if cfg.data.synthetic is not None:
        ensure_synthetic_dataset(cfg.data.synthetic_root, cfg.data.synthetic)


def load_split_and_meta(cfg, split_cfg) -> tuple[KeypointDataset, KeypointMeta]:
    """One split and the keypoint meta resolved from it (the synthetic set written first if needed): what a
    tool that looks at a single split starts from."""
    prepare_data(cfg)
    data = load_split(cfg, split_cfg)
    return data, resolve_meta(cfg, data)


def make_topdown_dataset(cfg, data: KeypointDataset, meta: KeypointMeta, train: bool) -> TopDownKeypointDataset:
    if not data.instances:
        raise DataError(f"{data.ann_file}: no usable instances (after skipping crowd/empty ones and the split "
                         f"{'train' if train else 'val'}); nothing to {'train on' if train else 'evaluate'}")
    return TopDownKeypointDataset(data.instances, cfg.data.input_size, meta.flip_index, train=train,
                                  augment=cfg.data.augment, upper_body_ids=cfg.data.upper_body_ids,
                                  bbox_padding=cfg.data.bbox_padding, on_bad_image=cfg.data.on_bad_image)


def make_loader(dataset, *, batch_size: int, shuffle: bool, seed: int, num_workers: int, rank: int = 0,
                world_size: int = 1, pin_memory: bool = False, pad: bool = True):
    """A seeded loader (:func:`datasets.sampler.seeded_loader`) batching with ``collate_skipping_none``."""
    return seeded_loader(dataset, batch_size=batch_size, shuffle=shuffle, seed=seed, num_workers=num_workers,
                         collate_fn=collate_skipping_none, rank=rank, world_size=world_size, pin_memory=pin_memory,
                         pad=pad)


def coco_subset(ann_file: str, image_ids, category_id: int, on_bad_annotation: str = "error") -> dict:
    """The ground truth of ``image_ids`` only (a split of a larger file), for COCOeval, checked by the same
    code as the reader (:mod:`datasets.coco_validate`): no malformed or non-finite annotation is scored."""
    data = load_validated_ground_truth(ann_file, "keypoints", on_bad_annotation)
    keep = set(int(i) for i in image_ids)
    return {"images": [im for im in data["images"] if im["id"] in keep],
            "annotations": [a for a in data["annotations"]
                            if a["image_id"] in keep and a["category_id"] == category_id],
            "categories": [c for c in data["categories"] if c["id"] == category_id]}


def build_task(cfg, meta: KeypointMeta, val_gt: dict | None = None, progress: bool = True,
               flip_test: bool | None = None, teacher: HeatmapTeacher | None = None) -> KeypointTask:
    """The keypoint task of ``cfg`` (codec, flip testing, loss weights, rescoring, PCK); ``flip_test``
    overrides ``eval.flip_test``; ``teacher``: the heatmap teacher of ``loss.distill_teacher``, for training."""
    ev = cfg.eval
    return KeypointTask(build_codec(cfg), meta, flip_test=ev.flip_test if flip_test is None else flip_test,
                        keypoint_weights=cfg.data.keypoint_weights, val_gt=val_gt,
                        rescore_threshold=ev.rescore_threshold, pck_thresholds=ev.pck_thresholds, progress=progress,
                        face=build_face_report(ev.face, len(meta.keypoint_names), meta.nme_pair),
                        loss=cfg.loss.heatmap, ohkm_topk=cfg.loss.ohkm_topk if cfg.loss.heatmap == "ohkm" else None,
                        flip_test_shift=ev.flip_test_shift, teacher=teacher,
                        distill_weight=cfg.loss.distill_weight)


def make_val_loader(cfg, val_set, device: torch.device, rank: int = 0, world_size: int = 1):
    """The validation loader: in order, not padded (each rank its share under DDP, gathered by ``evaluate``)."""
    return make_loader(val_set, batch_size=cfg.data.val_batch_size, shuffle=False, seed=cfg.train.seed,
                       num_workers=cfg.train.num_workers, rank=rank, world_size=world_size,
                       pin_memory=device.type == "cuda", pad=False)


def build_evaluation(cfg, device: torch.device, progress: bool = True) -> Experiment:
    """The validation split, its loader and ground truth, the task, and an untrained model to load a checkpoint
    into (the meta is resolved from the validation json and the config)."""
    val_data, meta = load_split_and_meta(cfg, cfg.data.val)
    model = build_model(cfg, len(meta.keypoint_names), pretrained=False).to(device)
    val_set = make_topdown_dataset(cfg, val_data, meta, train=False)
    val_gt = coco_subset(cfg.data.val.ann_file, val_data.image_ids, meta.category_id, cfg.data.on_bad_annotation)
    return Experiment(model=model, task=build_task(cfg, meta, val_gt=val_gt, progress=progress), train_loader=None,
                      val_loader=make_val_loader(cfg, val_set, device), meta=meta,
                      annotation_files=[cfg.data.val.ann_file], val_data=val_data)


def build_experiment(cfg, device: torch.device, progress: bool = True, rank: int = 0,
                     world_size: int = 1) -> Experiment:
    """Everything a keypoint run needs, from its config."""
    prepare_data(cfg)
    train_data = load_split(cfg, cfg.data.train)
    val_data = load_split(cfg, cfg.data.val)
    if train_data.keypoint_names != val_data.keypoint_names:
        raise DataError(f"train ({cfg.data.train.ann_file}) and val ({cfg.data.val.ann_file}) name different "
                         f"keypoints")
    meta = resolve_meta(cfg, train_data)
    train_set = make_topdown_dataset(cfg, train_data, meta, train=True)
    val_set = make_topdown_dataset(cfg, val_data, meta, train=False)
    model = build_model(cfg, len(meta.keypoint_names)).to(device)
    val_gt = coco_subset(cfg.data.val.ann_file, val_data.image_ids, meta.category_id, cfg.data.on_bad_annotation)
    teacher = None
    if cfg.loss.distill_teacher:
        teacher = load_heatmap_teacher(cfg.loss.distill_teacher, meta, build_model,
                                       cfg.loss.distill_teacher_weights).to(device)
        log.info("distilling %s (input %s) into this model, loss.distill_weight=%s", cfg.loss.distill_teacher,
                 list(teacher.input_size), cfg.loss.distill_weight)
    task = build_task(cfg, meta, val_gt=val_gt, progress=progress, teacher=teacher)
    train_loader = make_loader(train_set, batch_size=cfg.train.batch_size, shuffle=True, seed=cfg.train.seed,
                               num_workers=cfg.train.num_workers, rank=rank, world_size=world_size,
                               pin_memory=device.type == "cuda")
    val_loader = make_val_loader(cfg, val_set, device, rank=rank, world_size=world_size)
    return Experiment(model=model, task=task, train_loader=train_loader, val_loader=val_loader, meta=meta,
                      annotation_files=[cfg.data.train.ann_file, cfg.data.val.ann_file],
                      checkpoint_extra={"meta": meta.to_dict()})


def build_inference_model(cfg, meta: dict) -> TopDownPoseModel:
    """The untrained model a keypoint checkpoint's weights load into (its config and ``meta``)."""
    return build_model(cfg, len(KeypointMeta.from_dict(meta).keypoint_names), pretrained=False)


def check_checkpoint(state: dict, exp: Experiment, checkpoint: str) -> None:
    """Refuse a keypoint checkpoint whose keypoints are not the evaluation json's (its AP would be against
    other points)."""
    saved = list(state.get("meta", {}).get("keypoint_names", []))
    if saved != list(exp.meta.keypoint_names):
        ann = exp.annotation_files[0] if exp.annotation_files else "the validation json"
        what = f"{len(saved)} vs {len(exp.meta.keypoint_names)}" if len(saved) != len(exp.meta.keypoint_names) \
            else "same count, other names or order"
        raise CheckpointError(f"{checkpoint} predicts other keypoints than {ann} names ({what}; the checkpoint's "
                              f"first: {saved[:5]}); evaluate it with the config of the data it was trained on")
