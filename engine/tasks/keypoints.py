"""The keypoint task: targets, loss, prediction (flip test, decode, back to the image) and evaluation.

Data flows one way: the loader ships uint8 crops and raw keypoints; here they move to the model's device,
the codec builds the targets there for the whole batch, the losses compare, and at prediction the codec
decodes and the crop matrices map the points back to the image.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from datasets.affine import apply_affine
from datasets.coco_common import load_validated_ground_truth
from datasets.coco_keypoints import KeypointDataset, load_coco_keypoints
from datasets.sampler import seeded_loader
from datasets.skeletons import COCO_SIGMAS
from datasets.synthetic import ensure_synthetic_dataset
from datasets.topdown import TopDownKeypointDataset, check_flip_index, collate_skipping_none
from engine.coco_eval import coco_eval
from engine.distributed import all_gather_list
from engine.face_metrics import FaceReport, build_face_report
from engine.keypoint_metrics import nme, pck
from engine.tasks.base import Experiment
from models.errors import ConfigError, DataError
from models.heatmap_codec import HeatmapCodec
from models.losses import HEATMAP_LOSSES, stacked_heatmap_loss
from models.pose import HEATMAP_STRIDE, TopDownPoseModel, build_pose_model
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
        ohkm_topk: use OHKM with this many keypoints per sample instead of plain MSE.
        loss: the heatmap loss, ``mse`` | ``ohkm`` | ``awing`` (``models.losses.stacked_heatmap_loss``).
        keypoint_weights: optional [K] loss weights.
        val_gt: COCO ground-truth dict of the validation images (for ``validate``).
        rescore_threshold: keypoints above this confidence enter the instance score.
        pck_thresholds: PCK alphas.
        face: the face-alignment report added to the metrics (``engine.face_metrics``).
    """

    name = "keypoints"

    def __init__(self, codec: HeatmapCodec, meta: KeypointMeta, flip_test: bool = True, ohkm_topk: int | None = None,
                 keypoint_weights: Sequence[float] | None = None, val_gt: dict | None = None,
                 rescore_threshold: float = 0.2, pck_thresholds: Sequence[float] = (0.05, 0.1, 0.2),
                 progress: bool = True, face: FaceReport | None = None, loss: str = "mse"):
        if loss not in HEATMAP_LOSSES:
            raise ConfigError(f"loss.heatmap={loss!r} is not one of {list(HEATMAP_LOSSES)}")
        self.codec = codec
        self.loss = loss
        self.meta = meta
        self.flip_test = flip_test
        self.ohkm_topk = ohkm_topk
        self.keypoint_weights = torch.tensor(keypoint_weights, dtype=torch.float32) if keypoint_weights else None
        self.val_gt = val_gt
        self.rescore_threshold = rescore_threshold
        self.pck_thresholds = tuple(pck_thresholds)
        self.progress = progress
        self.face = face            # the face-alignment report (NME/FR/AUC per face), landmark sets only

    # ------------------------------------------------------------------ training
    def training_step(self, model: nn.Module, batch: dict) -> dict:
        device = device_of(model)
        images = batch["image"].to(device, non_blocking=True)
        keypoints = batch["keypoints"].to(device, non_blocking=True)
        weights = self.keypoint_weights.to(device) if self.keypoint_weights is not None else None
        targets, target_weights = self.codec.encode(keypoints, weights)
        preds = model(images)
        total, per_stack = stacked_heatmap_loss(preds, targets, target_weights, self.ohkm_topk, self.loss)
        out = {"loss": total, "batch_size": images.shape[0]}
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
        heatmaps = model(images)[-1]
        if flip_test:
            flipped = model(images.flip(-1))[-1]
            heatmaps = 0.5 * (heatmaps + self.codec.flip_heatmaps(flipped, self.meta.flip_index))
        return heatmaps

    @torch.no_grad()
    def predict_batch(self, model: nn.Module, batch: dict, flip_test: bool | None = None) -> dict:
        """Keypoints of a batch in image coordinates: ``keypoints`` [B, K, 2], ``scores`` [B, K] (on device)."""
        device = device_of(model)
        heatmaps = self.predict_heatmaps(model, batch["image"].to(device, non_blocking=True), flip_test)
        crop_kpts, scores = self.codec.decode(heatmaps)
        to_image = batch["crop_to_image"].to(device)
        return {"keypoints": apply_affine(crop_kpts, to_image), "scores": scores}

    @torch.no_grad()
    def predict(self, model: nn.Module, loader, flip_test: bool | None = None) -> list[dict]:
        """Run the model over a loader; one record per instance with numpy keypoints in image pixels."""
        was_training = model.training
        model.eval()
        records: list[dict] = []
        try:
            for batch in tqdm(loader, desc="predict", disable=not self.progress, leave=False, dynamic_ncols=True):
                if batch is None:
                    continue
                out = self.predict_batch(model, batch, flip_test)
                kpts, scores = out["keypoints"].cpu().numpy(), out["scores"].cpu().numpy()
                for i in range(len(kpts)):
                    records.append({
                        "image_id": int(batch["image_id"][i]), "ann_id": int(batch["ann_id"][i]),
                        "index": int(batch["index"][i]), "bbox": batch["bbox"][i].numpy().astype(np.float64),
                        "box_score": float(batch["box_score"][i]) if "box_score" in batch else 1.0,
                        "keypoints": kpts[i].astype(np.float64), "scores": scores[i].astype(np.float64)})
        finally:
            model.train(was_training)
        return records

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
    def validate(self, model: nn.Module, loader) -> dict[str, float]:
        metrics, _ = self.evaluate(model, loader)
        return metrics

    def evaluate(self, model: nn.Module, loader, flip_test: bool | None = None,
                 gt: dict | None = None) -> tuple[dict[str, float], list[dict]]:
        """COCO keypoint AP/AR (OKS with ``meta.oks_sigmas``), PCK and NME on a loader of ground-truth boxes.

        Returns ``(metrics, coco_results)``.
        """
        gt = gt if gt is not None else self.val_gt
        if gt is None:
            raise ValueError("no ground truth to evaluate against (val_gt)")
        # Under DistributedDataParallel each rank predicts its share of the loader: gather them all.
        start = time.perf_counter()
        records = all_gather_list(self.predict(model, loader, flip_test))
        seconds = time.perf_counter() - start
        results = self.to_coco_results(records)
        metrics = coco_eval(gt, results, "keypoints", sigmas=self.meta.oks_sigmas)
        instances = loader.dataset.instances
        if records:
            pred = np.stack([r["keypoints"] for r in records])
            truth = np.stack([instances[r["index"]].keypoints for r in records])
            boxes = np.stack([instances[r["index"]].bbox for r in records])
            metrics.update(pck(pred, truth, boxes, self.pck_thresholds))
            metrics["NME"] = nme(pred, truth, boxes, self.meta.nme_pair)
            if self.face is not None:
                metrics.update(self.face.evaluate(pred, truth, boxes, seconds=seconds))
        return metrics, results


# ---------------------------------------------------------------------------------------------- builders
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
    return HeatmapCodec((w, h), (w // stride, h // stride), sigma=cfg.data.sigma,
                        refine=cfg.eval.refine, blur_kernel_size=cfg.eval.blur_kernel_size)


def build_model(cfg, num_keypoints: int, pretrained: bool = True) -> TopDownPoseModel:
    m = cfg.model
    model = build_pose_model(num_keypoints, backbone=m.backbone, out_indices=m.out_indices,
                             pretrained_path=m.pretrained_path if pretrained else None,
                             fpn_channels=m.fpn_channels, num_stacks=m.num_stacks, depth=m.depth,
                             head_channels=m.head_channels, num_blocks=m.num_blocks, normalization=m.normalization,
                             pretrained=m.pretrained and pretrained, heatmap_stride=m.heatmap_stride)
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
               flip_test: bool | None = None) -> KeypointTask:
    """The keypoint task of ``cfg`` (codec, flip testing, loss weights, rescoring, PCK); ``flip_test``
    overrides ``eval.flip_test``."""
    ev = cfg.eval
    return KeypointTask(build_codec(cfg), meta, flip_test=ev.flip_test if flip_test is None else flip_test,
                        keypoint_weights=cfg.data.keypoint_weights, val_gt=val_gt,
                        rescore_threshold=ev.rescore_threshold, pck_thresholds=ev.pck_thresholds, progress=progress,
                        face=build_face_report(ev.face, len(meta.keypoint_names), meta.nme_pair),
                        loss=cfg.loss.heatmap, ohkm_topk=cfg.loss.ohkm_topk if cfg.loss.heatmap == "ohkm" else None)


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
    task = build_task(cfg, meta, val_gt=val_gt, progress=progress)
    train_loader = make_loader(train_set, batch_size=cfg.train.batch_size, shuffle=True, seed=cfg.train.seed,
                               num_workers=cfg.train.num_workers, rank=rank, world_size=world_size,
                               pin_memory=device.type == "cuda")
    val_loader = make_val_loader(cfg, val_set, device, rank=rank, world_size=world_size)
    return Experiment(model=model, task=task, train_loader=train_loader, val_loader=val_loader, meta=meta,
                      annotation_files=[cfg.data.train.ann_file, cfg.data.val.ann_file],
                      checkpoint_extra={"meta": meta.to_dict()})
