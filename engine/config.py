"""Typed experiment configs: YAML checked against dataclasses, dotted CLI overrides, saved resolved.

``load_config("configs/x.yaml", ["train.lr=0.01"])`` returns a dataclass instance. An unknown key or a value
of the wrong type stops with the file, the dotted key and (for typos) the closest valid key. Modules never
import this file: builders read the config and pass plain arguments.
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from datasets.detection_transforms import DetectionAugment
from datasets.input_policy import ClassificationAugment
from datasets.synthetic import SyntheticKeypointSpec
from datasets.synthetic_classification import SyntheticClassificationSpec
from datasets.synthetic_detection import SyntheticDetectionSpec
from datasets.topdown_augment import TopDownAugment
from engine.face_metrics import FaceReportConfig
from engine.nonfinite import NONFINITE_POLICIES
from engine.precision import PRECISION_CHOICES
from models.errors import ConfigError  # noqa: F401  (re-exported: engine.config.ConfigError)


# ---------------------------------------------------------------------------------------------- shared
@dataclass
class SplitConfig:
    """Where one split's annotations and images are; paths relative to the working directory."""

    ann_file: str = MISSING
    image_root: str = MISSING
    subset: str = "all"                 # all | holdout | rest: a seeded image split for sets without val
    holdout_fraction: float = 0.1
    holdout_seed: int = 0


@dataclass
class TrainConfig:
    """The training craft, shared by every task (docs/training.md has the command that shows each field)."""

    epochs: int = 10
    batch_size: int = 32                # per process; the global batch is batch_size * processes
    optimizer: str = "adamw"            # sgd | adam | adamw | rmsprop | adagrad
    lr: float = 1e-3
    momentum: float = 0.9               # sgd, rmsprop
    nesterov: bool = False              # sgd only
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])   # adam, adamw
    eps: float = 1e-8                   # adam, adamw, rmsprop, adagrad
    alpha: float = 0.99                 # rmsprop: smoothing of the squared gradient
    weight_decay: float = 1e-4
    decay_norm_and_bias: bool = False   # false: norm layers and biases get no weight decay
    scheduler: str = "cosine"           # cosine | linear | step | multistep | constant (per step, after warmup)
    warmup_steps: int = 100             # linear warmup from warmup_factor * lr (optimiser steps)
    warmup_factor: float = 0.001
    min_lr_ratio: float = 0.01          # cosine / linear floor, as a fraction of lr
    step_epochs: list[int] = field(default_factory=lambda: [8])   # step / multistep milestones
    gamma: float = 0.1                  # step / multistep decay
    accumulate_steps: int = 1           # batches whose gradients add up before one optimiser step
    grad_clip_norm: float | None = None # clip the global gradient norm to this
    precision: str = "fp32"             # fp32 | bf16 | fp16 | auto (autocast; fp16 with a gradient scaler; auto:
                                        # bf16 where the device runs it natively, else fp32: engine/precision.py)
    channels_last: bool = False         # NHWC weights and activations (GPUs; 1.10-1.13x on the CPUs measured)
    ema_decay: float | None = None      # e.g. 0.999: keep an EMA of the weights, evaluated alongside
    ema_warmup_steps: int = 0           # ramp the EMA decay up over this many steps
    freeze: list[str] = field(default_factory=list)   # glob patterns of parameter names to freeze
    freeze_stages: int = 0              # freeze the first N feature levels of the timm trunk (0: the stem)
    freeze_bn: str = "none"             # none | frozen (BN layers whose params are frozen) | all: use running stats
    init_weights: str | None = None     # fine-tuning: load model weights only from this file (reports keys)
    on_nonfinite: str = "stop"          # stop | skip: what a NaN/Inf loss or gradient does after its report
    max_nonfinite_skips: int = 20       # with skip: stop anyway after this many skipped steps
    check_inputs: bool = False          # also check the batch's float inputs every step (one more sync)
    check_grads: bool = False           # also check the gradient norm every step (one more sync)
    seed: int = 0
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    num_threads: int | None = None      # torch intra-op threads; None keeps torch's default
    num_workers: int = 2
    log_interval: int = 20              # steps between logged (host-synchronised) values
    eval_interval: int = 1              # epochs between evaluations


# ---------------------------------------------------------------------------------------------- keypoints
@dataclass
class KeypointModelConfig:
    backbone: str = "resnet18"          # any timm model name
    out_indices: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    pretrained: bool = False            # timm's pretrained weights, fetched and cached by timm (needs network once)
    pretrained_path: str | None = None  # or a local weights file: timm's .safetensors/.bin/.pth, or a checkpoint
    normalization: str = "backbone"     # backbone (timm mean/std) | unit ([0, 1])
    fpn_channels: int = 128
    num_stacks: int = 2
    depth: int = 3                      # pooling levels per hourglass
    head_channels: int = 128
    num_blocks: int = 1
    # 4, or 2 for heatmaps at twice the resolution (out_indices must then start at the stride-2 level, e.g.
    # [0, 1, 2, 3, 4] for ResNets: one more FPN step; the hourglasses cost about 4x)
    heatmap_stride: int = 4


@dataclass
class KeypointDataConfig:
    train: SplitConfig = field(default_factory=SplitConfig)
    val: SplitConfig = field(default_factory=SplitConfig)
    # When set, the synthetic set is written to `synthetic_root` (once) and train/val point into it.
    synthetic: SyntheticKeypointSpec | None = None
    synthetic_root: str = "data/synthetic_keypoints"
    category_id: int | None = None
    input_size: list[int] = field(default_factory=lambda: [192, 256])   # (width, height)
    sigma: float = 2.0                  # Gaussian sigma in heatmap cells
    flip_index: list[int] = MISSING     # flip_index[i]: the keypoint i becomes under a horizontal flip
    oks_sigmas: list[float] | None = None   # per keypoint; COCO's 17 when None (requires K = 17)
    keypoint_weights: list[float] | None = None   # per-keypoint loss weights
    upper_body_ids: list[int] = field(default_factory=list)   # for half-body crops
    nme_normalize: list[Any] | None = None  # two keypoint names or indices (e.g. outer eye corners)
    bbox_padding: float = 1.25
    on_bad_image: str = "error"         # error | skip: a missing, truncated or corrupt image
    on_bad_annotation: str = "error"    # error | skip: a malformed annotation (NaN, wrong type, bad visibility)
    augment: TopDownAugment = field(default_factory=TopDownAugment)
    val_batch_size: int = 64


@dataclass
class KeypointEvalConfig:
    flip_test: bool = True
    refine: str = "dark"                # dark | quarter | none
    blur_kernel_size: int | None = None  # smoothing before DARK's log; None: 2*floor(sigma)+1 (5 for 2); 1: none
    main_metric: str = "AP"             # the metric that picks the `best` checkpoint
    rescore_threshold: float = 0.2      # keypoints above this confidence enter the instance score
    pck_thresholds: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2])
    face: FaceReportConfig | None = None   # landmark sets: NME/FR/AUC/CED and per-region NME (face_metrics)
    # Detected boxes (--boxes, --det-checkpoint, infer): crop again on the tight box of the predicted keypoints
    # and predict again, this many times. For landmark sets whose annotation box is the landmarks' tight box
    # (300-W): the model then sees the box it was trained on, not the detector's. 0: off.
    recrop_passes: int = 0


@dataclass
class KeypointLossConfig:
    heatmap: str = "mse"                # mse | ohkm | awing (Adaptive Wing with its weighted loss map)
    ohkm_topk: int = 8                  # ohkm: the hardest keypoints per sample that enter the loss


@dataclass
class KeypointConfig:
    task: str = "keypoints"
    name: str = "keypoints"
    output_dir: str = "runs"
    model: KeypointModelConfig = field(default_factory=KeypointModelConfig)
    data: KeypointDataConfig = field(default_factory=KeypointDataConfig)
    loss: KeypointLossConfig = field(default_factory=KeypointLossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: KeypointEvalConfig = field(default_factory=KeypointEvalConfig)


# ---------------------------------------------------------------------------------------------- detection
@dataclass
class DetectionModelConfig:
    backbone: str = "resnet18"          # any timm model name
    out_indices: list[int] = field(default_factory=lambda: [1, 2, 3, 4])   # the first must be the stride-4 level
    pretrained: bool = False            # timm's pretrained weights, fetched and cached by timm (needs network once)
    pretrained_path: str | None = None  # or a local weights file: timm's .safetensors/.bin/.pth, or a checkpoint
    normalization: str = "backbone"     # backbone (timm mean/std) | unit ([0, 1])
    fpn_channels: int = 128
    head_channels: int = 64             # hidden channels of each CenterNet branch
    head: str = "single"                # single: stride 4 only | multi_level: one shared head on head_strides
    head_strides: list[int] = field(default_factory=lambda: [4, 8, 16, 32])   # multi_level levels, finest first
    # multi_level: boundaries of max(w, h) (input pixels) between consecutive levels; 8 * stride when None
    level_size_bounds: list[float] | None = None
    shared_head: bool = True            # multi_level: one head for all levels (false: one head per level)


@dataclass
class DetectionDataConfig:
    train: SplitConfig = field(default_factory=SplitConfig)
    val: SplitConfig = field(default_factory=SplitConfig)
    # When set, the synthetic set is written to `synthetic_root` (once) and train/val point into it.
    synthetic: SyntheticDetectionSpec | None = None
    synthetic_root: str = "data/synthetic_detection"
    category_ids: list[int] | None = None   # categories to detect, in class order; all of the file's when None
    input_size: list[int] = field(default_factory=lambda: [512, 512])   # (width, height), multiples of 4
    min_overlap: float = 0.7            # IoU that sets CenterNet's Gaussian radius
    max_objects: int = 128              # boxes kept per image in a batch (the rest are counted)
    on_bad_image: str = "error"         # error | skip: a missing, truncated or corrupt image
    on_bad_annotation: str = "error"    # error | skip: a malformed annotation (NaN, wrong type, bad visibility)
    augment: DetectionAugment = field(default_factory=DetectionAugment)
    val_batch_size: int = 16


@dataclass
class DetectionLossConfig:
    heatmap_weight: float = 1.0         # penalty-reduced focal loss
    size_weight: float = 0.1            # L1 on box (w, h) in cells (CenterNet's 0.1)
    offset_weight: float = 1.0          # L1 on the sub-cell centre offset
    giou_weight: float = 0.0            # 1 - GIoU of the boxes decoded at the object cells; 0 disables
    focal_alpha: float = 2.0
    focal_beta: float = 4.0


@dataclass
class DetectionEvalConfig:
    topk: int = 100                     # detections per image before the score threshold
    score_threshold: float = 0.01
    nms: bool = True                    # class-wise NMS after the 3x3 peak extraction
    nms_iou: float = 0.6
    main_metric: str = "AP"


@dataclass
class DetectionConfig:
    task: str = "detection"
    name: str = "detection"
    output_dir: str = "runs"
    model: DetectionModelConfig = field(default_factory=DetectionModelConfig)
    data: DetectionDataConfig = field(default_factory=DetectionDataConfig)
    loss: DetectionLossConfig = field(default_factory=DetectionLossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: DetectionEvalConfig = field(default_factory=DetectionEvalConfig)


SCHEMAS: dict[str, type] = {"keypoints": KeypointConfig, "detection": DetectionConfig}


# ---------------------------------------------------------------------------------------------- classification
@dataclass
class ClassifierModelConfig:
    backbone: str = "resnet18"          # any timm model name; its head gets num_classes from the data
    pretrained: bool = False            # timm's pretrained weights, fetched and cached by timm (needs network once)
    pretrained_path: str | None = None  # or a local weights file: timm's .safetensors/.bin/.pth, or a checkpoint
    normalization: str = "backbone"     # backbone (timm pretrained_cfg mean/std) | unit ([0, 1])
    drop_rate: float = 0.0              # dropout before the classifier


@dataclass
class ClassificationDataConfig:
    train_root: str | None = None       # image folder: <root>/<class>/<images>
    val_root: str | None = None
    synthetic: SyntheticClassificationSpec | None = None   # the built-in shapes instead of folders
    input_size: list[int] = field(default_factory=lambda: [64, 64])   # (width, height)
    input_policy: str = "resize"        # resize | center_crop | random_crop | letterbox | native
    crop_scale: float = 1.143           # center/random crop: zoom beyond covering the input (256/224)
    augment: ClassificationAugment = field(default_factory=ClassificationAugment)
    on_bad_image: str = "error"         # error | skip
    val_batch_size: int = 64


@dataclass
class ClassificationLossConfig:
    label_smoothing: float = 0.0


@dataclass
class ClassificationEvalConfig:
    main_metric: str = "top1"           # the metric that picks the `best` checkpoint
    topk: list[int] = field(default_factory=lambda: [1, 5])


@dataclass
class ClassificationConfig:
    task: str = "classification"
    name: str = "classification"
    output_dir: str = "runs"
    model: ClassifierModelConfig = field(default_factory=ClassifierModelConfig)
    data: ClassificationDataConfig = field(default_factory=ClassificationDataConfig)
    loss: ClassificationLossConfig = field(default_factory=ClassificationLossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: ClassificationEvalConfig = field(default_factory=ClassificationEvalConfig)


SCHEMAS["classification"] = ClassificationConfig


def load_config(path: str, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """Read ``path`` (YAML), apply dotted ``overrides`` (``train.lr=0.01``), check, return the dataclass."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path} (give the path of a YAML file, e.g. one under configs/)")
    try:
        raw = OmegaConf.load(path)
    except Exception as err:  # yaml errors come in several types
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    over = _parse_overrides(overrides)
    task = over.get("task") if "task" in over else raw.get("task", "keypoints")
    return config_from_containers(task, [(path, raw), ("command-line override", over)])


def config_from_dict(data: dict) -> Any:
    """Rebuild a config from the plain dict saved in a checkpoint."""
    return config_from_containers(data.get("task", "keypoints"), [("checkpoint config", OmegaConf.create(data))])


def config_from_containers(task: str, sources: list[tuple[str, Any]]) -> Any:
    if task not in SCHEMAS:
        raise ConfigError(f"task {task!r} is not one of {sorted(SCHEMAS)}")
    merged = OmegaConf.structured(SCHEMAS[task])
    for source, container in sources:
        try:
            merged = OmegaConf.merge(merged, container)
        except OmegaConfBaseException as err:
            raise ConfigError(_explain(err, source, merged)) from None
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(_explain(err, "config", merged)) from None
    problems = check_ranges(cfg)
    if problems:
        where = " / ".join(s for s, _ in sources)
        raise ConfigError(f"{where}: {len(problems)} value{'s' if len(problems) > 1 else ''} out of range: "
                          + "; ".join(problems))
    return cfg


# Coarsest feature stride of timm level i (resnet-like trunks: the stem halves twice, then each level once).
def _level_stride(index: int) -> int:
    return 2 ** (int(index) + 1)


def check_ranges(cfg: Any) -> list[str]:
    """Every value outside its valid range, as ``"key = value: the range"`` (empty when all fit).

    The types are the schema's business; this is about values that would train nothing (``epochs = 0``),
    divide by zero (an ``input_size`` side of 0) or make a metric meaningless (a threshold outside [0, 1]).
    """
    out: list[str] = []

    def need(key: str, value, ok: bool, valid: str) -> None:
        if not ok:
            out.append(f"{key} = {value!r}: {valid}")

    t = cfg.train
    need("train.epochs", t.epochs, t.epochs >= 1, "must be >= 1")
    need("train.batch_size", t.batch_size, t.batch_size >= 1, "must be >= 1")
    need("train.lr", t.lr, t.lr > 0 and math.isfinite(t.lr), "must be a finite number > 0")
    need("train.num_workers", t.num_workers, t.num_workers >= 0, "must be >= 0")
    need("train.accumulate_steps", t.accumulate_steps, t.accumulate_steps >= 1, "must be >= 1")
    need("train.log_interval", t.log_interval, t.log_interval >= 1, "must be >= 1")
    need("train.eval_interval", t.eval_interval, t.eval_interval >= 1, "must be >= 1")
    need("train.warmup_steps", t.warmup_steps, t.warmup_steps >= 0, "must be >= 0")
    need("train.weight_decay", t.weight_decay, t.weight_decay >= 0, "must be >= 0")
    need("train.num_threads", t.num_threads, t.num_threads is None or t.num_threads >= 1, "must be >= 1 or null")
    if t.grad_clip_norm is not None:
        need("train.grad_clip_norm", t.grad_clip_norm, t.grad_clip_norm > 0, "must be > 0 or null")
    need("train.precision", t.precision, t.precision in PRECISION_CHOICES,
         f"must be one of {', '.join(PRECISION_CHOICES)}")
    need("train.on_nonfinite", t.on_nonfinite, t.on_nonfinite in NONFINITE_POLICIES, "must be 'stop' or 'skip'")
    if t.ema_decay is not None:
        need("train.ema_decay", t.ema_decay, 0 < t.ema_decay < 1, "must be in (0, 1) or null")
    d = cfg.data
    need("data.val_batch_size", d.val_batch_size, d.val_batch_size >= 1, "must be >= 1")
    need("data.on_bad_image", d.on_bad_image, d.on_bad_image in ("error", "skip"), "must be 'error' or 'skip'")
    if hasattr(d, "on_bad_annotation"):
        need("data.on_bad_annotation", d.on_bad_annotation, d.on_bad_annotation in ("error", "skip"),
             "must be 'error' or 'skip'")
    size = list(d.input_size)
    if len(size) != 2:
        out.append(f"data.input_size = {size}: must be two sides [width, height]")
        return out
    if cfg.task not in ("keypoints", "detection"):
        need("data.input_size", size, min(size) >= 1, "each side must be >= 1")
    if cfg.task == "keypoints":
        # The heatmap is input / stride and the hourglass halves it model.depth times: a side needs
        # stride * 2**depth.
        need("model.depth", cfg.model.depth, cfg.model.depth >= 1, "must be >= 1")
        need("model.num_stacks", cfg.model.num_stacks, cfg.model.num_stacks >= 1, "must be >= 1")
        hs = cfg.model.heatmap_stride
        need("model.heatmap_stride", hs, hs in (2, 4), "must be 4, or 2 with out_indices from the stride-2 level")
        hs = hs if hs in (2, 4) else 4
        least = max(hs * 2 ** max(cfg.model.depth, 0), _level_stride(max(cfg.model.out_indices, default=1)))
        need("data.input_size", size, min(size) >= least and all(v % hs == 0 for v in size),
             f"each side must be a multiple of {hs} and >= {least} (heatmap stride {hs} x 2**model.depth "
             f"{cfg.model.depth}, and the coarsest backbone level)")
        need("data.sigma", d.sigma, d.sigma > 0, "must be > 0")
        need("data.bbox_padding", d.bbox_padding, d.bbox_padding > 0, "must be > 0")
        e = cfg.eval
        need("eval.rescore_threshold", e.rescore_threshold, 0 <= e.rescore_threshold <= 1, "must be in [0, 1]")
        need("eval.recrop_passes", e.recrop_passes, 0 <= e.recrop_passes <= 5, "must be 0 (off) to 5")
        bad = [v for v in e.pck_thresholds if not 0 < v <= 1]
        need("eval.pck_thresholds", list(e.pck_thresholds), not bad, "each must be in (0, 1]")
        if d.oks_sigmas is not None:
            need("data.oks_sigmas", list(d.oks_sigmas), all(v > 0 for v in d.oks_sigmas), "each must be > 0")
        a = d.augment
        need("data.augment.flip_prob", a.flip_prob, 0 <= a.flip_prob <= 1, "must be in [0, 1]")
    elif cfg.task == "detection":
        least = _level_stride(max(cfg.model.out_indices, default=1))
        need("data.input_size", size, min(size) >= least and all(v % 4 == 0 for v in size),
             f"each side must be a multiple of 4 (the detection stride) and >= {least} (the coarsest FPN level of "
             f"model.out_indices {list(cfg.model.out_indices)})")
        e = cfg.eval
        need("eval.score_threshold", e.score_threshold, 0 <= e.score_threshold <= 1, "must be in [0, 1]")
        need("eval.nms_iou", e.nms_iou, 0 <= e.nms_iou <= 1, "must be in [0, 1]")
        need("eval.topk", e.topk, e.topk >= 1, "must be >= 1")
        need("data.min_overlap", d.min_overlap, 0 < d.min_overlap < 1, "must be in (0, 1)")
        need("data.max_objects", d.max_objects, d.max_objects >= 1, "must be >= 1")
        need("data.augment.flip_prob", d.augment.flip_prob, 0 <= d.augment.flip_prob <= 1, "must be in [0, 1]")
    return out


def config_to_dict(cfg: Any) -> dict:
    """Plain nested dict (str/int/float/bool/None/list) of a config: checkpoint- and JSON-safe."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def config_to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Any, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(config_to_yaml(cfg))
    os.replace(tmp, path)


def _parse_overrides(overrides) -> Any:
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must look like key.sub=value; got {bad}")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot parse overrides {list(overrides)}: {err}") from None


def _explain(err: OmegaConfBaseException, source: str, schema: Any) -> str:
    full_key = getattr(err, "full_key", None) or ""
    message = str(err).split("\n")[0]
    if isinstance(err, ConfigKeyError) and full_key:
        parent_key, _, key = full_key.rpartition(".")
        parent = OmegaConf.select(schema, parent_key) if parent_key else schema
        valid = list(parent.keys()) if parent is not None and OmegaConf.is_dict(parent) else []
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f"; did you mean {'.'.join(filter(None, [parent_key, close[0]]))!r}?" if close else ""
        return (f"{source}: unknown key {full_key!r}{hint} (valid keys"
                f"{' in ' + parent_key if parent_key else ''}: {', '.join(valid)})")
    if full_key:
        return f"{source}: {full_key}: {message}"
    return f"{source}: {message}"
