"""The detection task (CenterNet-style, or the ltrb head): targets, loss, prediction (decode, back to the image)
and COCO bbox AP.

Data flows one way, as for keypoints: the loader ships uint8 letterboxed images and raw padded boxes with a
mask; here they move to the model's device, the codec builds the heatmap, size and offset targets there for
the whole batch (for the ltrb head, :class:`models.ltrb.LtrbLoss` assigns cells and builds its targets there),
the losses compare, and at prediction the codec decodes peaks (or the top cells) into boxes that the
input -> image matrices map back to the image (through the boxes' pixel edges).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from engine.evaluation.evaluator import evaluate_model
from engine.tasks.detection.evaluator import DetectionEvaluator
from models.bbox import affine_boxes, batched_nms, box_is_empty, clip_boxes, xyxy_to_coco_xywh
from models.box_codec import BoxTargets, CenterNetCodec, MultiLevelCenterNetCodec
from models.losses import centernet_focal_loss, giou_loss, masked_l1_loss
from models.ltrb import LtrbCodec, LtrbLoss
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
            ``MultiLevelCenterNetCodec`` for a multi-level head (whose outputs are lists, one map per level); an
            :class:`models.ltrb.LtrbCodec` for the ltrb head (outputs ``cls`` and ``reg``, lists per level).
        meta: class names and COCO category ids.
        val_gt: COCO ground-truth dict of the validation images (for ``validate``).
        heatmap_weight, size_weight, offset_weight, giou_weight: loss weights (giou 0 disables it).
        focal_alpha, focal_beta: focal loss exponents.
        score_threshold: detections below this score are dropped at prediction.
        nms, nms_iou: class-wise NMS (+1 IoU through torchvision) after decoding.
        ltrb_loss: the ltrb head's :class:`models.ltrb.LtrbLoss` (its defaults when None); unused otherwise.
        max_detections: detections kept per image after NMS (the ltrb head decodes the codec's ``topk``
            candidates, which NMS thins); None keeps every one (the CenterNet heads: ``topk`` peaks already).
    """

    name = "detection"

    def __init__(self, codec: CenterNetCodec | MultiLevelCenterNetCodec | LtrbCodec, meta: DetectionMeta,
                 val_gt: dict | None = None,
                 heatmap_weight: float = 1.0, size_weight: float = 0.1, offset_weight: float = 1.0,
                 giou_weight: float = 0.0, focal_alpha: float = 2.0, focal_beta: float = 4.0,
                 score_threshold: float = 0.01, nms: bool = True, nms_iou: float = 0.6, progress: bool = True,
                 ltrb_loss: LtrbLoss | None = None, max_detections: int | None = None):
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
        if isinstance(codec, LtrbCodec):
            self.ltrb_loss = ltrb_loss if ltrb_loss is not None else LtrbLoss(codec)
            if self.ltrb_loss.codec is not codec:
                raise ValueError("ltrb_loss was built for another codec than the task's")
        else:
            self.ltrb_loss = None
        self.max_detections = max_detections

    # ------------------------------------------------------------------ training
    def losses(self, outputs: dict, boxes: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
               window_radii: list[int] | None = None) -> dict:
        """Loss terms of model ``outputs`` against padded boxes [B, N, 4] (input pixels), labels and mask.

        window_radii: :meth:`window_radii` of the same boxes, computed on the host before they moved to the
        device (None: the codec computes them, one read-back per level on a GPU). The ltrb head needs none: its
        targets are :class:`models.ltrb.LtrbLoss`'s (terms ``loss_cls``, ``loss_giou``, ``loss_dfl``,
        ``num_positives`` and ``positive_iou``)."""
        if self.ltrb_loss is not None:
            if not isinstance(outputs.get("cls"), (list, tuple)) or not isinstance(outputs.get("reg"), (list, tuple)):
                raise ValueError(f"the ltrb codec needs the ltrb head's outputs (per-level lists 'cls' and 'reg'), got "
                                 f"keys {sorted(outputs)}: model.head and the codec disagree")
            return self.ltrb_loss(outputs["cls"], outputs["reg"], boxes, labels, mask)
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

    def window_radii(self, boxes: torch.Tensor, mask: torch.Tensor) -> list[int] | None:
        """The Gaussian window half-width of every level for these boxes, where they live (the loader's CPU
        tensors), so that target building on the device needs no read-back. None for the ltrb head (no
        Gaussians)."""
        if isinstance(self.codec, LtrbCodec):
            return None
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
        if isinstance(self.codec, LtrbCodec):
            boxes, scores, labels = self.codec.decode(out["cls"], out["reg"])
        elif isinstance(self.codec, MultiLevelCenterNetCodec):
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
            if self.max_detections is not None:
                b, s, c = b[:self.max_detections], s[:self.max_detections], c[:self.max_detections]
            c = c.cpu().numpy()
            results.append({"boxes": b.cpu().numpy().astype(np.float64), "scores": s.cpu().numpy().astype(np.float64),
                            "labels": c, "category_ids": category_ids[c]})
        return results

    @torch.no_grad()
    def predict_batches(self, model: nn.Module, loader) -> Iterator[list[dict]]:
        """The records of each batch of a loader: one per image (``image_id`` plus :meth:`predict_batch`'s
        fields)."""
        was_training = model.training
        model.eval()
        try:
            for batch in tqdm(loader, desc="detect", disable=not self.progress, leave=False, dynamic_ncols=True):
                if batch is None:
                    continue
                yield [{"image_id": int(image_id), **det}
                       for image_id, det in zip(batch["image_id"], self.predict_batch(model, batch))]
        finally:
            model.train(was_training)

    def predict(self, model: nn.Module, loader) -> list[dict]:
        """:meth:`predict_batches`' records of the whole loader in one list."""
        return [r for records in self.predict_batches(model, loader) for r in records]

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
    def evaluator(self) -> DetectionEvaluator:
        """A :class:`DetectionEvaluator` of the validation ground truth."""
        if self.val_gt is None:
            raise ValueError("no ground truth to evaluate against (val_gt)")
        return DetectionEvaluator(self, self.val_gt)

    def validate(self, model: nn.Module, loader) -> dict[str, float]:
        """COCO bbox AP/AR (AP, AP50, AP75, APs/m/l, AR1/10/100, ARs/m/l) on the validation loader."""
        return evaluate_model(self, model, loader)[0]
