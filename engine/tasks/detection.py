"""The detection task (CenterNet-style): targets, loss, prediction (decode, back to the image) and COCO bbox AP.

Data flows one way, as for keypoints: the loader ships uint8 letterboxed images and raw padded boxes with a
mask; here they move to the model's device, the codec builds the heatmap, size and offset targets there for
the whole batch, the losses compare, and at prediction the codec decodes peaks into boxes that the
input -> image matrices map back to the image (through the boxes' pixel edges).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from datasets.coco_detection import DetectionDataset, coco_detection_subset, load_coco_detection
from datasets.detection_transforms import DetectionTransformDataset, detection_collate_fn
from datasets.sampler import seeded_loader
from datasets.synthetic_detection import ensure_synthetic_detection_dataset
from engine.checkpoint import load_model_state
from engine.coco_eval import coco_eval
from engine.distributed import all_gather_list
from engine.tasks.base import Experiment
from models.bbox import affine_boxes, batched_nms, box_is_empty, clip_boxes, xyxy_to_coco_xywh
from models.box_codec import BoxTargets, CenterNetCodec, MultiLevelCenterNetCodec
from models.detector import DETECTION_STRIDE, CenterNetDetector, MultiLevelCenterNetDetector, build_detector
from models.errors import CheckpointError, ConfigError, DataError
from models.losses import centernet_focal_loss, giou_loss, masked_l1_loss
from models.utils import device_of

log = logging.getLogger(__name__)


@dataclass
class DetectionMeta:
    """What a detector needs to know about its classes; stored in every checkpoint."""

    class_names: list[str]
    category_ids: list[int]            # COCO category id of each class index

    def to_dict(self) -> dict:
        return {"class_names": list(self.class_names), "category_ids": [int(c) for c in self.category_ids]}

    @classmethod
    def from_dict(cls, d: dict) -> DetectionMeta:
        return cls(class_names=list(d["class_names"]), category_ids=[int(c) for c in d["category_ids"]])

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)


class DetectionTask:
    """Args:
        codec: the CenterNet codec (input size, stride, classes, Gaussian radius, top-k); a
            ``MultiLevelCenterNetCodec`` for a multi-level head (whose outputs are lists, one map per level).
        meta: class names and COCO category ids.
        val_gt: COCO ground-truth dict of the validation images (for ``validate``).
        heatmap_weight, size_weight, offset_weight, giou_weight: loss weights (giou 0 disables it).
        focal_alpha, focal_beta: focal loss exponents.
        score_threshold: detections below this score are dropped at prediction.
        nms, nms_iou: class-wise NMS (+1 IoU through torchvision) after decoding.
    """

    name = "detection"

    def __init__(self, codec: CenterNetCodec, meta: DetectionMeta, val_gt: dict | None = None,
                 heatmap_weight: float = 1.0, size_weight: float = 0.1, offset_weight: float = 1.0,
                 giou_weight: float = 0.0, focal_alpha: float = 2.0, focal_beta: float = 4.0,
                 score_threshold: float = 0.01, nms: bool = True, nms_iou: float = 0.6, progress: bool = True):
        if codec.num_classes != meta.num_classes:
            raise ValueError(f"codec has {codec.num_classes} classes but meta names {meta.num_classes}")
        self.codec = codec
        self.meta = meta
        self.val_gt = val_gt
        self.weights = {"heatmap": heatmap_weight, "size": size_weight, "offset": offset_weight, "giou": giou_weight}
        self.focal_alpha = focal_alpha
        self.focal_beta = focal_beta
        self.score_threshold = score_threshold
        self.nms = nms
        self.nms_iou = nms_iou
        self.progress = progress
        self._warned_max_objects = False

    # ------------------------------------------------------------------ training
    def losses(self, outputs: dict, boxes: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
               window_radii: list[int] | None = None) -> dict:
        """Loss terms of model ``outputs`` against padded boxes [B, N, 4] (input pixels), labels and mask.

        window_radii: :meth:`window_radii` of the same boxes, computed on the host before they moved to the
        device (None: the codec computes them, one read-back per level on a GPU)."""
        codecs, maps, targets = self._levels(outputs, boxes, labels, mask, window_radii)
        # Every level's cells and objects are concatenated, so the focal loss is normalised by the positives
        # of all levels together and the L1 / GIoU terms average over all objects (one level: the same sums).
        heat = centernet_focal_loss(torch.cat([m["heatmap"].flatten(2) for m in maps], 2),
                                    torch.cat([t.heatmap.flatten(2) for t in targets], 2),
                                    self.focal_alpha, self.focal_beta)
        size = torch.cat([c.gather(m["size"], t.index) for c, m, t in zip(codecs, maps, targets)], 1)
        offset = torch.cat([c.gather(m["offset"], t.index) for c, m, t in zip(codecs, maps, targets)], 1)
        t_size, t_offset, t_mask = (torch.cat([getattr(t, k) for t in targets], 1) for k in ("size", "offset", "mask"))
        terms = {"loss_heatmap": heat, "loss_size": masked_l1_loss(size, t_size, t_mask),
                 "loss_offset": masked_l1_loss(offset, t_offset, t_mask)}
        if self.weights["giou"] > 0:
            pred = []
            for i, (c, t) in enumerate(zip(codecs, targets)):
                w, n = c.heatmap_size[0], t.index.shape[1]
                cell = torch.stack([t.index % w, torch.div(t.index, w, rounding_mode="floor")], -1).float()
                pred.append(c.boxes_from_cells(cell, offset[:, i * n:(i + 1) * n].float(),
                                               size[:, i * n:(i + 1) * n].float()))
            terms["loss_giou"] = giou_loss(torch.cat(pred, 1), torch.cat([t.boxes for t in targets], 1), t_mask)
        total = sum(self.weights[k[5:]] * v for k, v in terms.items())
        return {"loss": total, **terms, "num_objects": t_mask.sum()}

    def window_radii(self, boxes: torch.Tensor, mask: torch.Tensor) -> list[int]:
        """The Gaussian window half-width of every level for these boxes, where they live (the loader's CPU
        tensors), so that target building on the device needs no read-back."""
        if isinstance(self.codec, MultiLevelCenterNetCodec):
            return self.codec.window_radii(boxes, mask)
        return [self.codec.window_radius(boxes, mask)]

    def _levels(self, outputs: dict, boxes: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                window_radii: list[int] | None = None) -> tuple[list[CenterNetCodec], list[dict], list[BoxTargets]]:
        """Per level: its codec, the model's maps ({"heatmap", "size", "offset"}) and the batch's targets."""
        if isinstance(self.codec, MultiLevelCenterNetCodec):
            n = len(self.codec.levels)
            if not all(isinstance(outputs[k], (list, tuple)) and len(outputs[k]) == n for k in ("heatmap", "size")):
                raise ValueError(f"the codec has {n} levels (strides {self.codec.strides}) but the model did not "
                                 f"return {n} maps per output: model.head and the codec disagree")
            maps = [dict(zip(("heatmap", "size", "offset"), m))
                    for m in zip(outputs["heatmap"], outputs["size"], outputs["offset"])]
            return self.codec.levels, maps, self.codec.encode(boxes, labels, mask, window_radii)
        radius = window_radii[0] if window_radii is not None else None
        return [self.codec], [outputs], [self.codec.encode(boxes, labels, mask, radius)]

    def training_step(self, model: nn.Module, batch: dict) -> dict:
        device = device_of(model)
        images = batch["image"].to(device, non_blocking=True)
        # The loader's boxes are on the CPU: the drawing windows are sized here, not read back from the device.
        radii = self.window_radii(batch["boxes"], batch["mask"])
        out = self.losses(model(images), batch["boxes"].to(device, non_blocking=True),
                          batch["labels"].to(device, non_blocking=True), batch["mask"].to(device, non_blocking=True),
                          radii)
        out["batch_size"] = images.shape[0]
        # Boxes the augmentation's crop removed, and boxes beyond data.max_objects that the collate cut from an
        # image: CPU counts from the loader, logged with the other scalars every log_interval steps (no sync).
        out["boxes_dropped"] = torch.tensor(float(batch.get("dropped", 0)))
        truncated = int(batch.get("truncated", 0))
        out["boxes_over_max_objects"] = torch.tensor(float(truncated))
        if truncated and not self._warned_max_objects:
            self._warned_max_objects = True
            log.warning("a training batch had %d boxes beyond data.max_objects, left out of its targets (logged "
                        "as boxes_over_max_objects); raise data.max_objects to keep them", truncated)
        return out

    @staticmethod
    def batch_ids(batch: dict) -> list:
        return [f"image {int(i)}" for i in batch["image_id"]]

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def predict_batch(self, model: nn.Module, batch: dict) -> list[dict]:
        """Detections of each image of a batch in image pixels.

        batch: ``image`` [B, 3, H, W] (the model input), ``input_to_image`` [B, 2, 3] and ``image_size``
        [B, 2] (w, h). Returns one dict per image with numpy ``boxes`` [n, 4] (inclusive xyxy), ``scores``
        [n], ``labels`` [n] (class index) and ``category_ids`` [n], by decreasing score. Boxes are clipped to
        the image; those below the score threshold, empty after clipping (less than one pixel) or not finite
        are dropped, so every box returned can be cropped.
        """
        device = device_of(model)
        out = model(batch["image"].to(device, non_blocking=True))
        if isinstance(self.codec, MultiLevelCenterNetCodec):
            boxes, scores, labels = self.codec.decode([torch.sigmoid(h.float()) for h in out["heatmap"]],
                                                      out["size"], out["offset"])
        else:
            boxes, scores, labels = self.codec.decode(torch.sigmoid(out["heatmap"].float()), out["size"],
                                                      out["offset"])
        boxes = affine_boxes(boxes, batch["input_to_image"].to(device))
        results = []
        category_ids = np.asarray(self.meta.category_ids, dtype=np.int64)
        for i in range(boxes.shape[0]):
            w, h = (int(v) for v in batch["image_size"][i])
            b = clip_boxes(boxes[i], w, h)
            keep = (scores[i] >= self.score_threshold) & ~box_is_empty(b) & torch.isfinite(b).all(-1)
            b, s, c = b[keep], scores[i][keep], labels[i][keep]
            if self.nms and len(b):
                kept = batched_nms(b, s, c, self.nms_iou)
                b, s, c = b[kept], s[kept], c[kept]
            c = c.cpu().numpy()
            results.append({"boxes": b.cpu().numpy().astype(np.float64), "scores": s.cpu().numpy().astype(np.float64),
                            "labels": c, "category_ids": category_ids[c]})
        return results

    @torch.no_grad()
    def predict(self, model: nn.Module, loader) -> list[dict]:
        """Run the model over a loader; one record per image (``image_id`` plus :meth:`predict_batch`'s fields)."""
        was_training = model.training
        model.eval()
        records: list[dict] = []
        try:
            for batch in tqdm(loader, desc="detect", disable=not self.progress, leave=False, dynamic_ncols=True):
                if batch is None:
                    continue
                for image_id, det in zip(batch["image_id"], self.predict_batch(model, batch)):
                    records.append({"image_id": int(image_id), **det})
        finally:
            model.train(was_training)
        return records

    @staticmethod
    def to_coco_results(records: list[dict]) -> list[dict]:
        """COCO detection results: ``image_id``, ``category_id``, ``bbox`` [x, y, w, h] (+1 widths), ``score``."""
        results = []
        for r in records:
            xywh = xyxy_to_coco_xywh(r["boxes"])
            for box, score, cat in zip(xywh, r["scores"], r["category_ids"]):
                results.append({"image_id": int(r["image_id"]), "category_id": int(cat),
                                "bbox": [round(float(v), 2) for v in box], "score": round(float(score), 5)})
        return results

    # ------------------------------------------------------------------ evaluation
    def validate(self, model: nn.Module, loader) -> dict[str, float]:
        metrics, _ = self.evaluate(model, loader)
        return metrics

    def evaluate(self, model: nn.Module, loader, gt: dict | None = None) -> tuple[dict[str, float], list[dict]]:
        """COCO bbox AP/AR (AP, AP50, AP75, APs/m/l, AR1/10/100, ARs/m/l) through pycocotools.

        Returns ``(metrics, coco_results)``.
        """
        gt = gt if gt is not None else self.val_gt
        if gt is None:
            raise ValueError("no ground truth to evaluate against (val_gt)")
        # Under DistributedDataParallel each rank predicts its share of the loader: gather them all.
        results = self.to_coco_results(all_gather_list(self.predict(model, loader)))
        metrics = coco_eval(gt, results, "bbox")
        metrics["detections_per_image"] = len(results) / max(len(gt["images"]), 1)
        return metrics, results


# ---------------------------------------------------------------------------------------------- builders
HEADS = ("single", "multi_level")


def _head_strides(cfg) -> list[int] | None:
    """The multi-level head's strides, or None for the single-level head (checks ``model.head``)."""
    m = cfg.model
    if m.head not in HEADS:
        raise ConfigError(f"model.head={m.head!r}: use 'single' (stride 4 only) or 'multi_level' "
                          f"(one head on model.head_strides)")
    if m.head == "single":
        return None
    strides = [int(s) for s in m.head_strides]
    if not strides or any(b != 2 * a for a, b in zip(strides, strides[1:])):
        raise ConfigError(f"model.head_strides={strides}: give strides finest first, each double the previous "
                          f"(e.g. [4, 8, 16, 32], or [8, 16, 32, 64] for large objects)")
    return strides


def build_codec(cfg, num_classes: int) -> CenterNetCodec | MultiLevelCenterNetCodec:
    strides = _head_strides(cfg)
    if strides is None:
        return CenterNetCodec(cfg.data.input_size, num_classes, stride=DETECTION_STRIDE,
                              min_overlap=cfg.data.min_overlap, topk=cfg.eval.topk)
    try:
        return MultiLevelCenterNetCodec(cfg.data.input_size, num_classes, strides, cfg.model.level_size_bounds,
                                        min_overlap=cfg.data.min_overlap, topk=cfg.eval.topk)
    except ValueError as e:
        raise ConfigError(f"model.head_strides={strides}, model.level_size_bounds={cfg.model.level_size_bounds}, "
                          f"data.input_size={list(cfg.data.input_size)}: {e}") from e


def build_model(cfg, num_classes: int, pretrained: bool = True) -> CenterNetDetector | MultiLevelCenterNetDetector:
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
                               shared_head=m.shared_head, pretrained=m.pretrained and pretrained)
    except ValueError as e:
        if strides is None:
            raise
        raise ConfigError(f"model.head_strides={strides}, model.out_indices={list(m.out_indices)}: {e}") from e
    if w % model.max_stride or h % model.max_stride:
        log.warning("data.input_size %s is not a multiple of the backbone's coarsest stride %d: the model runs, "
                    "but the FPN levels are no longer exactly aligned", [w, h], model.max_stride)
    return model


def build_task(cfg, meta: DetectionMeta, val_gt: dict | None = None, progress: bool = True) -> DetectionTask:
    lo, ev = cfg.loss, cfg.eval
    return DetectionTask(build_codec(cfg, meta.num_classes), meta, val_gt=val_gt, heatmap_weight=lo.heatmap_weight,
                         size_weight=lo.size_weight, offset_weight=lo.offset_weight, giou_weight=lo.giou_weight,
                         focal_alpha=lo.focal_alpha, focal_beta=lo.focal_beta, score_threshold=ev.score_threshold,
                         nms=ev.nms, nms_iou=ev.nms_iou, progress=progress)


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
                                     on_bad_image=cfg.data.on_bad_image)


def make_loader(dataset, *, batch_size: int, shuffle: bool, seed: int, num_workers: int,
                max_objects: int | None = None, rank: int = 0, world_size: int = 1, pin_memory: bool = False,
                pad: bool = True):
    """A seeded loader (:func:`datasets.sampler.seeded_loader`, its own generator, so that a resumed detection
    run continues bit-identically too) batching with ``detection_collate_fn(max_objects)``."""
    return seeded_loader(dataset, batch_size=batch_size, shuffle=shuffle, seed=seed, num_workers=num_workers,
                         collate_fn=detection_collate_fn(max_objects), rank=rank, world_size=world_size,
                         pin_memory=pin_memory, pad=pad)


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


def check_checkpoint_classes(state: dict, meta: DetectionMeta, checkpoint: str, ann_file: str) -> None:
    """Refuse a detector whose classes are not the validation json's (its AP would be against other labels)."""
    saved = DetectionMeta.from_dict(state["meta"])
    if saved.category_ids != meta.category_ids:
        raise CheckpointError(f"{checkpoint} detects categories {saved.category_ids} ({saved.class_names}) but "
                              f"{ann_file} gives {meta.category_ids}; set data.category_ids to the checkpoint's")


def load_detector(state: dict, cfg, device: torch.device) -> tuple[CenterNetDetector, DetectionMeta]:
    """Model (eval mode, on ``device``) and meta from a detection checkpoint's state and config."""
    meta = DetectionMeta.from_dict(state["meta"])
    model = build_model(cfg, meta.num_classes, pretrained=False)
    load_model_state(model, state["model"], source="detection checkpoint")
    return model.to(device).eval(), meta
