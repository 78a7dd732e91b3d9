"""The keypoint task's config: its ``model``, ``data``, ``loss`` and ``eval`` sections, and their ranges."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from datasets.synthetic import SyntheticKeypointSpec
from datasets.topdown_augment import TopDownAugment
from engine.config.sections import SplitConfig, TrainConfig, level_stride, range_checker
from engine.evaluation.face_metrics import FaceReportConfig


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
    # timm's stochastic depth in the backbone (0: off). A regulariser for small training sets; the backbone
    # must take timm's drop_path_rate argument (ResNets, MobileNets, EfficientNets, ConvNeXts, ViTs do).
    drop_path_rate: float = 0.0


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
    target_sigmas: list[float] | None = None   # or one per keypoint (overrides sigma; flip partners equal)
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
    # Input pixels by which the mirrored pass moves right before the flip test's average: 0 for labels that are
    # mirror-symmetric; for a model trained without flips on labels with a left-right offset, twice the offset it
    # learnt (bench/flip_shift.py measures it on the training images; docs/keypoints.md, "Mirrors").
    flip_test_shift: float = 0.0
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
    # Heatmap distillation: a trained keypoints checkpoint (same keypoints) whose heatmaps of each training crop
    # are a second target, mixed as (1 - distill_weight) * loss(labels) + distill_weight * loss(teacher). The
    # teacher sees the crop resized to its own input size (engine/tasks/keypoints/distill.py).
    distill_teacher: str | None = None
    distill_weight: float = 0.5
    distill_teacher_weights: str = "model"   # model | ema: which of the teacher checkpoint's weights


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


def check_ranges(cfg: KeypointConfig) -> list[str]:
    """The keypoint sections' values outside their ranges (``engine.config.sections.check_common_ranges``
    checks the shared ones)."""
    out, need = range_checker()
    size, d, e = list(cfg.data.input_size), cfg.data, cfg.eval
    if len(size) != 2:
        return out              # reported by the shared checks
    # The heatmap is input / stride and the hourglass halves it model.depth times: a side needs stride * 2**depth.
    need("model.depth", cfg.model.depth, cfg.model.depth >= 1, "must be >= 1")
    need("model.drop_path_rate", cfg.model.drop_path_rate, 0 <= cfg.model.drop_path_rate < 1, "must be in [0, 1)")
    need("model.num_stacks", cfg.model.num_stacks, cfg.model.num_stacks >= 1, "must be >= 1")
    hs = cfg.model.heatmap_stride
    need("model.heatmap_stride", hs, hs in (2, 4), "must be 4, or 2 with out_indices from the stride-2 level")
    hs = hs if hs in (2, 4) else 4
    least = max(hs * 2 ** max(cfg.model.depth, 0), level_stride(max(cfg.model.out_indices, default=1)))
    need("data.input_size", size, min(size) >= least and all(v % hs == 0 for v in size),
         f"each side must be a multiple of {hs} and >= {least} (heatmap stride {hs} x 2**model.depth "
         f"{cfg.model.depth}, and the coarsest backbone level)")
    need("data.sigma", d.sigma, d.sigma > 0, "must be > 0")
    if d.target_sigmas is not None:
        need("data.target_sigmas", list(d.target_sigmas), len(d.target_sigmas) > 0 and all(v > 0 for v in
             d.target_sigmas), "one value > 0 per keypoint, or null for data.sigma everywhere")
    need("data.bbox_padding", d.bbox_padding, d.bbox_padding > 0, "must be > 0")
    need("eval.rescore_threshold", e.rescore_threshold, 0 <= e.rescore_threshold <= 1, "must be in [0, 1]")
    need("eval.recrop_passes", e.recrop_passes, 0 <= e.recrop_passes <= 5, "must be 0 (off) to 5")
    need("eval.flip_test_shift", e.flip_test_shift, math.isfinite(e.flip_test_shift)
         and abs(e.flip_test_shift) < 0.25 * min(d.input_size), "must be finite and under a quarter of the input")
    bad = [v for v in e.pck_thresholds if not 0 < v <= 1]
    need("eval.pck_thresholds", list(e.pck_thresholds), not bad, "each must be in (0, 1]")
    if d.oks_sigmas is not None:
        need("data.oks_sigmas", list(d.oks_sigmas), all(v > 0 for v in d.oks_sigmas), "each must be > 0")
    lo = cfg.loss
    need("loss.distill_weight", lo.distill_weight, 0 <= lo.distill_weight <= 1, "must be in [0, 1]")
    need("loss.distill_teacher_weights", lo.distill_teacher_weights, lo.distill_teacher_weights in ("model", "ema"),
         "must be model or ema")
    need("data.augment.flip_prob", d.augment.flip_prob, 0 <= d.augment.flip_prob <= 1, "must be in [0, 1]")
    return out
