"""The detection task's config: its ``model``, ``data``, ``loss`` and ``eval`` sections, and their ranges."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from datasets.detection_transforms import DetectionAugment
from datasets.synthetic_detection import SyntheticDetectionSpec
from engine.config.sections import SplitConfig, TrainConfig, level_stride, range_checker
from models.ltrb import ASSIGNERS, CLS_LOSSES, QUALITIES


@dataclass
class DetectionModelConfig:
    backbone: str = "resnet18"          # any timm model name
    out_indices: list[int] = field(default_factory=lambda: [1, 2, 3, 4])   # the first must be the stride-4 level
    pretrained: bool = False            # timm's pretrained weights, fetched and cached by timm (needs network once)
    pretrained_path: str | None = None  # or a local weights file: timm's .safetensors/.bin/.pth, or a checkpoint
    normalization: str = "backbone"     # backbone (timm mean/std) | unit ([0, 1])
    fpn_channels: int = 128
    head_channels: int = 64             # hidden channels of each CenterNet branch
    # single: stride 4 only | multi_level: one shared CenterNet head on head_strides | ltrb: class scores and
    # edge-distance distributions on head_strides (GFL / YOLOv8; models/ltrb.py)
    head: str = "single"
    head_strides: list[int] = field(default_factory=lambda: [4, 8, 16, 32])   # multi_level/ltrb levels, finest first
    # multi_level, ltrb: boundaries of max(w, h) (input pixels) between consecutive levels; 8 * stride when None
    level_size_bounds: list[float] | None = None
    shared_head: bool = True            # multi_level, ltrb: one head for all levels (false: one head per level)
    reg_max: int = 16                   # ltrb: each side a distribution over 0..reg_max strides; 0: one number
    head_convs: int = 2                 # ltrb: 3x3 conv + GroupNorm + ReLU layers per branch


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
    # The ltrb head's terms (the keys above are the CenterNet heads'):
    assigner: str = "task_aligned"      # task_aligned (TOOD/YOLOv8) | centre (FCOS centre sampling) | cell (one)
    centre_radius: float = 2.5          # centre: cells within this many strides of the box centre (and inside it)
    tal_topk: int = 10                  # task_aligned: positives per object at most
    tal_alpha: float = 0.5              # task_aligned: metric score^alpha x IoU^beta
    tal_beta: float = 6.0
    quality: str = "iou"                # class target of a positive: iou | aligned (task_aligned only) | none (1)
    cls_loss: str = "qfl"               # qfl (Quality Focal Loss) | vfl (VariFocal Loss)
    cls_weight: float = 1.0
    ltrb_giou_weight: float = 2.0       # 1 - GIoU of the decoded boxes at the positive cells
    dfl_weight: float = 0.25            # Distribution Focal Loss; 0 leaves it out
    qfl_beta: float = 2.0
    vfl_alpha: float = 0.75
    vfl_gamma: float = 2.0


@dataclass
class DetectionEvalConfig:
    topk: int = 100                     # detections per image before the score threshold
    score_threshold: float = 0.01
    pre_nms_topk: int = 1000            # ltrb: candidates before NMS (topk is then the detections kept after it)
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


def check_ranges(cfg: DetectionConfig) -> list[str]:
    """The detection sections' values outside their ranges (``engine.config.sections.check_common_ranges``
    checks the shared ones)."""
    out, need = range_checker()
    size, d, e = list(cfg.data.input_size), cfg.data, cfg.eval
    if len(size) != 2:
        return out              # reported by the shared checks
    least = level_stride(max(cfg.model.out_indices, default=1))
    need("data.input_size", size, min(size) >= least and all(v % 4 == 0 for v in size),
         f"each side must be a multiple of 4 (the detection stride) and >= {least} (the coarsest FPN level of "
         f"model.out_indices {list(cfg.model.out_indices)})")
    need("eval.score_threshold", e.score_threshold, 0 <= e.score_threshold <= 1, "must be in [0, 1]")
    need("eval.nms_iou", e.nms_iou, 0 <= e.nms_iou <= 1, "must be in [0, 1]")
    need("eval.topk", e.topk, e.topk >= 1, "must be >= 1")
    need("data.min_overlap", d.min_overlap, 0 < d.min_overlap < 1, "must be in (0, 1)")
    need("data.max_objects", d.max_objects, d.max_objects >= 1, "must be >= 1")
    need("data.augment.flip_prob", d.augment.flip_prob, 0 <= d.augment.flip_prob <= 1, "must be in [0, 1]")
    for key in ("mosaic_prob", "mixup_prob"):
        need(f"data.augment.{key}", getattr(d.augment, key), 0 <= getattr(d.augment, key) <= 1, "must be in [0, 1]")
    need("data.augment.close_mosaic", d.augment.close_mosaic, 0 <= d.augment.close_mosaic <= 1,
         "must be in [0, 1] (a fraction of train.epochs)")
    m, lo = cfg.model, cfg.loss
    need("model.reg_max", m.reg_max, 0 <= m.reg_max <= 64, "must be in [0, 64] (0: one number per side)")
    need("model.head_convs", m.head_convs, 1 <= m.head_convs <= 8, "must be in [1, 8]")
    need("eval.pre_nms_topk", e.pre_nms_topk, e.pre_nms_topk >= 1, "must be >= 1")
    need("loss.assigner", lo.assigner, lo.assigner in ASSIGNERS, f"must be one of {', '.join(ASSIGNERS)}")
    need("loss.quality", lo.quality, lo.quality in QUALITIES, f"must be one of {', '.join(QUALITIES)}")
    need("loss.cls_loss", lo.cls_loss, lo.cls_loss in CLS_LOSSES, f"must be one of {', '.join(CLS_LOSSES)}")
    need("loss.centre_radius", lo.centre_radius, 0 < lo.centre_radius <= 16, "must be in (0, 16] strides")
    need("loss.tal_topk", lo.tal_topk, lo.tal_topk >= 1, "must be >= 1")
    for key in ("tal_alpha", "tal_beta", "cls_weight", "ltrb_giou_weight", "dfl_weight", "qfl_beta", "vfl_gamma"):
        value = getattr(lo, key)
        need(f"loss.{key}", value, math.isfinite(value) and value >= 0, "must be a finite number >= 0")
    need("loss.vfl_alpha", lo.vfl_alpha, math.isfinite(lo.vfl_alpha) and lo.vfl_alpha > 0,
         "must be a finite number > 0")
    if m.head == "ltrb":
        need("loss.quality", lo.quality, lo.quality != "aligned" or lo.assigner == "task_aligned",
             "'aligned' is the task-aligned assigner's metric: needs loss.assigner=task_aligned")
        need("loss.dfl_weight", lo.dfl_weight, lo.dfl_weight == 0 or m.reg_max >= 1,
             "needs model.reg_max >= 1 (a distribution per side); set it to 0 with model.reg_max=0")
        need("loss.cls_weight", lo.cls_weight, lo.cls_weight > 0, "must be > 0 for the ltrb head (its only score)")
        need("loss.ltrb_giou_weight", lo.ltrb_giou_weight,
             lo.ltrb_giou_weight > 0 or (lo.dfl_weight > 0 and m.reg_max >= 1),
             "and loss.dfl_weight are both 0: nothing would train the box distances")
    return out
