"""The detection task's config: its ``model``, ``data``, ``loss`` and ``eval`` sections, and their ranges."""

from __future__ import annotations

from dataclasses import dataclass, field

from datasets.detection_transforms import DetectionAugment
from datasets.synthetic_detection import SyntheticDetectionSpec
from engine.config.sections import SplitConfig, TrainConfig, level_stride, range_checker


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
    return out
