"""The classification task's config: its ``model``, ``data``, ``loss`` and ``eval`` sections, and their ranges."""

from __future__ import annotations

from dataclasses import dataclass, field

from datasets.input_policy import ClassificationAugment
from datasets.synthetic_classification import SyntheticClassificationSpec
from engine.config.sections import TrainConfig, range_checker


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


def check_ranges(cfg: ClassificationConfig) -> list[str]:
    """The classification sections' values outside their ranges (``engine.config.sections.check_common_ranges``
    checks the shared ones)."""
    out, need = range_checker()
    size = list(cfg.data.input_size)
    if len(size) == 2:
        need("data.input_size", size, min(size) >= 1, "each side must be >= 1")
    return out
