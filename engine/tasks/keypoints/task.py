"""The keypoint task: targets, loss, prediction (flip test, decode, back to the image) and evaluation.

Data flows one way: the loader ships uint8 crops and raw keypoints; here they move to the model's device,
the codec builds the targets there for the whole batch, the losses compare, and at prediction the codec
decodes and the crop matrices map the points back to the image.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from datasets.affine import apply_affine
from engine.evaluation.evaluator import evaluate_model
from engine.evaluation.face_metrics import FaceReport
from engine.tasks.keypoints.evaluator import KeypointEvaluator
from models.errors import ConfigError
from models.heatmap_codec import HeatmapCodec
from models.losses import HEATMAP_LOSSES, stacked_heatmap_loss
from models.utils import device_of

log = logging.getLogger(__name__)


@dataclass
class KeypointMeta:
    """What a keypoint model needs to know about its skeleton; stored in every checkpoint."""

    keypoint_names: list[str]
    skeleton: list[tuple[int, int]]
    flip_index: list[int]
    oks_sigmas: list[float]
    category_id: int = 1
    nme_pair: tuple[int, int] | None = None

    def to_dict(self) -> dict:
        return {"keypoint_names": list(self.keypoint_names), "skeleton": [list(p) for p in self.skeleton],
                "flip_index": list(self.flip_index), "oks_sigmas": [float(s) for s in self.oks_sigmas],
                "category_id": int(self.category_id), "nme_pair": list(self.nme_pair) if self.nme_pair else None}

    @classmethod
    def from_dict(cls, d: dict) -> KeypointMeta:
        return cls(keypoint_names=list(d["keypoint_names"]), skeleton=[tuple(p) for p in d["skeleton"]],
                   flip_index=list(d["flip_index"]), oks_sigmas=list(d["oks_sigmas"]),
                   category_id=int(d.get("category_id", 1)),
                   nme_pair=tuple(d["nme_pair"]) if d.get("nme_pair") else None)


class KeypointTask:
    """Args:
        codec: the heatmap codec (input size, stride, sigma, refinement).
        meta: skeleton description (flip map, OKS sigmas, NME pair).
        flip_test: average the heatmaps of the crop and its mirror at prediction.
        flip_test_shift: input pixels by which the mirror's heatmaps move right before the average (0 for
            labels that are mirror-symmetric; ``eval.flip_test_shift``).
        ohkm_topk: use OHKM with this many keypoints per sample instead of plain MSE.
        loss: the heatmap loss, ``mse`` | ``ohkm`` | ``awing`` (``models.losses.stacked_heatmap_loss``).
        keypoint_weights: optional [K] loss weights.
        val_gt: COCO ground-truth dict of the validation images (for ``validate``).
        rescore_threshold: keypoints above this confidence enter the instance score.
        pck_thresholds: PCK alphas.
        face: the face-alignment report added to the metrics (``engine.evaluation.face_metrics``).
        teacher: heatmap distillation (``engine.tasks.keypoints.distill.HeatmapTeacher``): a frozen model whose
            heatmaps of the same crops are a second target for every stack, mixed with the labels' as
            ``(1 - distill_weight) * loss(labels) + distill_weight * loss(teacher)``.
    """

    name = "keypoints"

    def __init__(self, codec: HeatmapCodec, meta: KeypointMeta, flip_test: bool = True, ohkm_topk: int | None = None,
                 keypoint_weights: Sequence[float] | None = None, val_gt: dict | None = None,
                 rescore_threshold: float = 0.2, pck_thresholds: Sequence[float] = (0.05, 0.1, 0.2),
                 progress: bool = True, face: FaceReport | None = None, loss: str = "mse",
                 flip_test_shift: float = 0.0, teacher: nn.Module | None = None, distill_weight: float = 0.5):
        if loss not in HEATMAP_LOSSES:
            raise ConfigError(f"loss.heatmap={loss!r} is not one of {list(HEATMAP_LOSSES)}")
        self.codec = codec
        self.loss = loss
        self.meta = meta
        self.flip_test = flip_test
        self.flip_test_shift = float(flip_test_shift)
        self.ohkm_topk = ohkm_topk
        self.keypoint_weights = torch.tensor(keypoint_weights, dtype=torch.float32) if keypoint_weights else None
        self.val_gt = val_gt
        self.rescore_threshold = rescore_threshold
        self.pck_thresholds = tuple(pck_thresholds)
        self.progress = progress
        self.face = face            # the face-alignment report (NME/FR/AUC per face), landmark sets only
        self.teacher = teacher
        self.distill_weight = float(distill_weight)

    # ------------------------------------------------------------------ training
    def training_step(self, model: nn.Module, batch: dict) -> dict:
        device = device_of(model)
        images = batch["image"].to(device, non_blocking=True)
        keypoints = batch["keypoints"].to(device, non_blocking=True)
        weights = self.keypoint_weights.to(device) if self.keypoint_weights is not None else None
        targets, target_weights = self.codec.encode(keypoints, weights)
        preds = model(images)
        total, per_stack = stacked_heatmap_loss(preds, targets, target_weights, self.ohkm_topk, self.loss)
        out = {"batch_size": images.shape[0]}
        if self.teacher is not None:
            # The labels' weights also gate the teacher's heatmaps: an unlabelled keypoint teaches nothing.
            taught = self.teacher(images, tuple(targets.shape[-2:]))
            distill, distill_per_stack = stacked_heatmap_loss(preds, taught, target_weights, self.ohkm_topk,
                                                              self.loss)
            out.update(loss_labels=total.detach(), loss_teacher=distill.detach())
            w = self.distill_weight
            total = (1.0 - w) * total + w * distill
            per_stack = [(1.0 - w) * a + w * b for a, b in zip(per_stack, distill_per_stack)]
        out["loss"] = total
        if len(per_stack) > 1:
            out.update({f"loss_stack{i}": loss for i, loss in enumerate(per_stack)})
        return out

    @staticmethod
    def batch_ids(batch: dict) -> list:
        return [f"image {int(i)} / ann {int(a)}" for i, a in zip(batch["image_id"], batch["ann_id"])]

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def predict_heatmaps(self, model: nn.Module, images: torch.Tensor, flip_test: bool | None = None) -> torch.Tensor:
        """Final-stack heatmaps [B, K, h, w], averaged with the mirrored crop's when flip testing."""
        flip_test = self.flip_test if flip_test is None else flip_test
        return flip_tested_heatmaps(model, images, self.codec, self.meta.flip_index, flip_test, self.flip_test_shift)

    @torch.no_grad()
    def predict_batch(self, model: nn.Module, batch: dict, flip_test: bool | None = None) -> dict:
        """Keypoints of a batch in image coordinates: ``keypoints`` [B, K, 2], ``scores`` [B, K] (on device)."""
        device = device_of(model)
        heatmaps = self.predict_heatmaps(model, batch["image"].to(device, non_blocking=True), flip_test)
        crop_kpts, scores = self.codec.decode(heatmaps)
        to_image = batch["crop_to_image"].to(device)
        return {"keypoints": apply_affine(crop_kpts, to_image), "scores": scores}

    @torch.no_grad()
    def predict_batches(self, model: nn.Module, loader, flip_test: bool | None = None) -> Iterator[list[dict]]:
        """The records of each batch of a loader of ground-truth crops: one per instance, with numpy
        ``keypoints`` [K, 2] and ``scores`` [K] in image pixels, and the instance it was cropped from
        (``index`` into ``loader.dataset.instances``, its ``truth`` keypoints [K, 3] and ``truth_bbox`` [4])."""
        was_training = model.training
        model.eval()
        instances = loader.dataset.instances
        try:
            for batch in tqdm(loader, desc="predict", disable=not self.progress, leave=False, dynamic_ncols=True):
                if batch is None:
                    continue
                out = self.predict_batch(model, batch, flip_test)
                kpts, scores = out["keypoints"].cpu().numpy(), out["scores"].cpu().numpy()
                records = []
                for i in range(len(kpts)):
                    index = int(batch["index"][i])
                    records.append({
                        "image_id": int(batch["image_id"][i]), "ann_id": int(batch["ann_id"][i]),
                        "index": index, "bbox": batch["bbox"][i].numpy().astype(np.float64),
                        "box_score": float(batch["box_score"][i]) if "box_score" in batch else 1.0,
                        "keypoints": kpts[i].astype(np.float64), "scores": scores[i].astype(np.float64),
                        "truth": np.asarray(instances[index].keypoints, dtype=np.float64),
                        "truth_bbox": np.asarray(instances[index].bbox, dtype=np.float64)})
                yield records
        finally:
            model.train(was_training)

    def predict(self, model: nn.Module, loader, flip_test: bool | None = None) -> list[dict]:
        """:meth:`predict_batches`' records of the whole loader in one list."""
        return [r for records in self.predict_batches(model, loader, flip_test) for r in records]

    def with_flip_test(self, flip_test: bool) -> KeypointTask:
        """The same task predicting with flip testing on or off."""
        other = copy.copy(self)
        other.flip_test = flip_test
        return other

    def rescore(self, keypoint_scores: np.ndarray, box_scores: np.ndarray) -> np.ndarray:
        """Instance scores [N]: box score x mean confidence of the keypoints above ``rescore_threshold`` (0 when
        none is). keypoint_scores: [N, K] confidences, box_scores: [N]."""
        conf = np.asarray(keypoint_scores, dtype=np.float64).reshape(len(box_scores), -1)
        confident = conf > self.rescore_threshold
        # Per row, as numpy's mean of the selected values (a masked sum over the row would group the additions
        # differently and move the last bits of scores that are written rounded).
        kpt_score = np.array([c[m].mean() if m.any() else 0.0 for c, m in zip(conf, confident)], dtype=np.float64)
        return np.asarray(box_scores, dtype=np.float64).reshape(-1) * kpt_score

    def to_coco_results(self, records: list[dict]) -> list[dict]:
        """COCO keypoint results, one per record; the instance score is :meth:`rescore`'s."""
        if not records:
            return []
        scores = self.rescore(np.stack([r["scores"] for r in records]), np.array([r["box_score"] for r in records]))
        results = []
        for r, score in zip(records, scores):
            flat = np.concatenate([r["keypoints"], r["scores"][:, None]], axis=1).reshape(-1)
            results.append({"image_id": r["image_id"], "category_id": self.meta.category_id,
                            "keypoints": [round(float(v), 3) for v in flat], "score": round(float(score), 6)})
        return results

    # ------------------------------------------------------------------ evaluation
    def evaluator(self, boxes: str = "ground truth", instances: Sequence | None = None,
                  image_ids: Sequence[int] | None = None) -> KeypointEvaluator:
        """A :class:`KeypointEvaluator` of the validation ground truth. On detected boxes give their
        description as ``boxes`` and the ground-truth ``instances`` of the scored ``image_ids``."""
        if self.val_gt is None:
            raise ValueError("no ground truth to evaluate against (val_gt)")
        return KeypointEvaluator(self, self.val_gt, boxes, instances, image_ids)

    def validate(self, model: nn.Module, loader) -> dict[str, float]:
        """COCO keypoint AP/AR (OKS with ``meta.oks_sigmas``), PCK, NME and the face report on a loader of
        ground-truth boxes."""
        return evaluate_model(self, model, loader)[0]


def flip_tested_heatmaps(model: nn.Module, images: torch.Tensor, codec: HeatmapCodec, flip_index,
                         flip_test: bool, shift: float = 0.0) -> torch.Tensor:
    """The model's final-stack heatmaps [B, K, h, w] of uint8 crops [B, 3, H, W]; with ``flip_test`` averaged
    with those of the mirrored crops, mirrored back (``codec.flip_heatmaps``, keypoints swapped by
    ``flip_index``). The one flip-test merge of PyTorch inference, evaluation and the ONNX graph.

    ``shift`` (input pixels, ``eval.flip_test_shift``) moves the mirrored-back heatmaps right before the
    average. A model trained without flips on labels that sit ``b`` px right of a mirror-symmetric position
    learns ``+b``; on the mirrored crop it predicts the mirror of that, ``-b`` once mirrored back, so the plain
    average would land on the symmetric position again. ``shift = 2 b`` puts both passes on the labels'.
    """
    heatmaps = model(images)[-1]
    if flip_test:
        back = codec.flip_heatmaps(model(images.flip(-1))[-1], flip_index)
        if shift:
            back = codec.shift_heatmaps_x(back, shift * codec.heatmap_size[0] / codec.input_size[0])
        heatmaps = 0.5 * (heatmaps + back)
    return heatmaps
