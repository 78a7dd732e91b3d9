"""A ready keypoint config from a COCO keypoint file: every choice made from the data, and said why.

``starter_config(coco, ...)`` returns the config as a plain dict and the list of choices (printed by
``tools.make_config`` and written as comments at the top of the YAML):

- K and the names from the category; ``flip_index`` from the category when a converter wrote it, else from
  left/right names (``datasets.formats.names``), else the identity;
- OKS sigmas: COCO's when the names are COCO's 17; per-keypoint estimates (``estimate_oks_sigmas``) when the
  same images were labelled twice (repeated ``file_name``s, or a second file); else a uniform guess;
- input size: the median box aspect (width / height; square when the boxes are both wide and tall, as for an
  animal seen from above), about ``input_pixels`` pixels, each side a multiple of the backbone's coarsest stride;
- the model width, precision and memory layout of the hand-written configs that this choice was measured
  against (FPN and head at 64 channels; ``precision: auto``, bf16 where the processor has it; channels_last);
- batch from the number of training instances (at least ~8 steps per epoch), ``DEFAULT_EPOCHS`` epochs (the
  measured sets: docs/results.md, "Starter configs"), or as many as fit a time budget (``tools.make_config
  --minutes``, from a few timed steps);
- evaluation about ``EVALUATIONS`` times per run; with a hold-out of fewer than ``SMALL_HOLDOUT`` instances,
  half as often, and a note that ``best.pt`` is then chosen on noise;
- a 68-point face layout (Multi-PIE / 300-W) gets its flip partners, NME (inter-ocular) as the main metric, the
  face report, and the 300-W recipe's measured choices (``FACE68_RECIPE``: Adaptive Wing loss, sigma 1.5, two
  landmark re-crops; docs/results.md, "The levers");
- validation: the source's own split when its images carry ``"split"`` (train + val/valid/validation/test),
  written as two files beside the config; else a seeded hold-out of the images (``subset: holdout`` / ``rest``).
"""

from __future__ import annotations

import math
import os
from collections import Counter

import numpy as np

from datasets.formats.names import flip_index_from_names, is_coco_body
from datasets.formats.pts import FLIP_68
from datasets.skeletons import COCO_SIGMAS, COCO_UPPER_BODY_IDS
from engine.config.sections import SMALL_HOLDOUT
from engine.evaluation.keypoint_metrics import estimate_oks_sigmas
from models.errors import DataError

UNIFORM_SIGMA = 0.05         # a guess between COCO's eyes (0.025) and hips (0.107)
# The hand-written configs of the shared sets (100 to 1086 training instances) train 50-60 epochs, and their
# hold-out numbers stop moving well before the end (docs/results.md, "Starter configs"); so do a 55-frame
# DeepLabCut project's at ~45 epochs. Epochs, not steps, is what transfers between data sizes here.
DEFAULT_EPOCHS = 50
EVALUATIONS = 10             # validations per run (and at the end)
FACE68 = 68
# What the 300-W lever table measured on faces (docs/results.md, "The levers", 10-epoch proxies): the Adaptive
# Wing loss -0.21 to -0.25 NME points against MSE, sigma 1.5 against the default 2.0 -0.22, two re-crops on
# detector boxes close the gap to landmark-tight boxes from 0.46 to 0.06 points.
FACE68_RECIPE = {"loss": {"heatmap": "awing"}, "data": {"sigma": 1.5}, "eval": {"recrop_passes": 2}}
MIN_REPEATED_PAIRS = 5       # doubly labelled instances needed before estimated sigmas replace the guess
TRAIN_NAMES = ("train", "training")
VAL_NAMES = ("val", "valid", "validation", "test")


def keypoint_category(coco: dict, category_id: int | None, path: str) -> dict:
    cats = [c for c in coco.get("categories", []) if c.get("keypoints")]
    if category_id is not None:
        cats = [c for c in cats if int(c["id"]) == int(category_id)]
    if len(cats) != 1:
        found = [(c["id"], c["name"]) for c in coco.get("categories", []) if c.get("keypoints")]
        raise DataError(f"{path}: {'no' if not cats else 'several'} keypoint categories match (found {found}); "
                        f"pick one with --category-id")
    return cats[0]


def choose_flip(category: dict) -> tuple[list[int], str]:
    names = list(category["keypoints"])
    if category.get("flip_index") is not None:
        return [int(i) for i in category["flip_index"]], "flip_index: from the category (the format names it)"
    flip, pairs = flip_index_from_names(names)
    if pairs:
        return flip, "flip_index: inferred from left/right names: " + ", ".join(f"{a}<->{b}" for a, b in pairs)
    if len(names) == FACE68:
        return list(FLIP_68), "flip_index: the 68-point face layout's partners (Multi-PIE / 300-W)"
    return flip, "flip_index: identity (no left/right pairs in the names); set it if the skeleton has sides"


def repeated_pairs(coco: dict, category_id: int, second: dict | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                                     np.ndarray]:
    """Pairs of labels of the same instance: images whose ``file_name`` occurs twice (in ``coco``, or once
    in ``coco`` and once in ``second``), instances matched within an image by the nearest mean keypoint.
    Returns (kpts_a [N, K, 3], kpts_b [N, K, 3], areas [N])."""
    def by_file(data):
        names = {img["id"]: img["file_name"] for img in data["images"]}
        out: dict[str, list[list[dict]]] = {}
        per_image: dict[int, list[dict]] = {}
        for a in data["annotations"]:
            if int(a.get("category_id", category_id)) == category_id and not a.get("iscrowd"):
                per_image.setdefault(a["image_id"], []).append(a)
        for image_id, anns in per_image.items():
            out.setdefault(names[image_id], []).append(anns)
        return out

    groups = by_file(coco)
    if second is not None:
        for name, lists in by_file(second).items():
            if name in groups:
                groups[name] = groups[name][:1] + lists[:1]
    ka, kb, areas = [], [], []
    for lists in groups.values():
        if len(lists) < 2:
            continue
        left, right = list(lists[0]), list(lists[1])
        for a in left:
            if not right:
                break
            pa = np.asarray(a["keypoints"], float).reshape(-1, 3)
            dist = [_mean_distance(pa, np.asarray(b["keypoints"], float).reshape(-1, 3)) for b in right]
            b = right.pop(int(np.argmin(dist)))
            ka.append(pa)
            kb.append(np.asarray(b["keypoints"], float).reshape(-1, 3))
            areas.append(a.get("area") or a["bbox"][2] * a["bbox"][3])
    k = len(coco["categories"][0]["keypoints"]) if coco.get("categories") else 0
    if not ka:
        return np.zeros((0, k, 3)), np.zeros((0, k, 3)), np.zeros(0)
    return np.stack(ka), np.stack(kb), np.asarray(areas, float)


def _mean_distance(a: np.ndarray, b: np.ndarray) -> float:
    both = (a[:, 2] > 0) & (b[:, 2] > 0)
    return float(np.linalg.norm(a[both, :2] - b[both, :2], axis=1).mean()) if both.any() else math.inf


def choose_sigmas(names: list[str], pairs) -> tuple[list[float], str]:
    if is_coco_body(names):
        return list(COCO_SIGMAS), "oks_sigmas: COCO's (the names are COCO's 17 keypoints)"
    ka, kb, areas = pairs
    if len(ka) >= MIN_REPEATED_PAIRS:
        est = estimate_oks_sigmas(ka, kb, areas)
        fill = float(np.nanmedian(est)) if np.isfinite(est).any() else UNIFORM_SIGMA
        values = [round(float(s) if np.isfinite(s) and s > 0 else fill, 4) for s in est]
        return values, f"oks_sigmas: estimated from {len(ka)} doubly labelled instances (tools.estimate_sigmas)"
    return [UNIFORM_SIGMA] * len(names), (f"oks_sigmas: a GUESS, uniform {UNIFORM_SIGMA}; measure them with "
                                          f"python -m tools.estimate_sigmas on doubly labelled instances")


def choose_input_size(median_aspect: float, max_stride: int, input_pixels: int) -> list[int]:
    """(width, height) near ``input_pixels`` pixels at the boxes' median aspect, multiples of ``max_stride``."""
    aspect = min(max(median_aspect, 0.25), 4.0)
    w = max(2, round(math.sqrt(input_pixels * aspect) / max_stride)) * max_stride
    h = max(2, round(math.sqrt(input_pixels / aspect) / max_stride)) * max_stride
    return [int(w), int(h)]


def choose_schedule(num_train: int) -> tuple[int, int]:
    """(batch size, epochs): a power of two up to 16 that gives at least ~8 steps per epoch, and
    ``DEFAULT_EPOCHS``."""
    batch = 2 ** max(1, min(4, int(math.log2(max(2, num_train // 8)))))
    return batch, DEFAULT_EPOCHS


def choose_eval_interval(epochs: int, num_val: int) -> tuple[int, str | None]:
    """(epochs between validations, a note or None): about ``EVALUATIONS`` validations; half as many on a
    hold-out too small to choose a checkpoint on, with a note saying so."""
    interval = max(1, round(epochs / EVALUATIONS))
    if num_val >= SMALL_HOLDOUT:
        return interval, None
    return max(1, round(epochs / (EVALUATIONS // 2))), (
        f"eval_interval: the hold-out has {num_val} instances (< {SMALL_HOLDOUT}): its metric moves by chance "
        f"from one evaluation to the next, so it is evaluated every {max(1, round(epochs / (EVALUATIONS // 2)))} "
        f"epochs and best.pt is chosen on noise; compare last.pt, or label more validation images")


def source_splits(coco: dict) -> tuple[str, str] | None:
    """(train split name, val split name) when the images carry both, else None."""
    present = Counter(str(img["split"]).lower() for img in coco["images"] if img.get("split"))
    train = next((s for s in TRAIN_NAMES if s in present), None)
    val = next((s for s in VAL_NAMES if s in present), None)
    return (train, val) if train and val else None


def split_coco(coco: dict, split: str) -> dict:
    """The images whose ``split`` is ``split`` (case aside) and their annotations; categories as they are."""
    images = [img for img in coco["images"] if str(img.get("split", "")).lower() == split]
    ids = {img["id"] for img in images}
    return {"images": images, "annotations": [a for a in coco["annotations"] if a["image_id"] in ids],
            "categories": coco["categories"]}


def box_aspects(coco: dict, category_id: int) -> np.ndarray:
    """Width / height of every non-empty box of the category."""
    return np.asarray([a["bbox"][2] / a["bbox"][3] for a in coco["annotations"]
                       if int(a.get("category_id", category_id)) == category_id and a.get("bbox")
                       and a["bbox"][3] > 0 and a["bbox"][2] > 0], float)


def input_aspect(aspects: np.ndarray) -> tuple[float, str]:
    """The aspect to build the input size from: the median box aspect, or 1 when the middle half of the boxes
    has both wide and tall ones (an animal seen from above turns: no aspect fits most crops)."""
    if len(aspects) == 0:
        return 1.0, "no boxes: square"
    q25, med, q75 = np.percentile(aspects, [25, 50, 75])
    if q25 < 1 < q75:
        return 1.0, f"square: the boxes are both wide and tall (aspect w/h quartiles {q25:.2f}, {q75:.2f})"
    return float(med), f"median box aspect w/h {med:.2f}"


def starter_config(coco: dict, ann_file: str, image_root: str, output: str, backbone: str = "resnet18",
                   max_stride: int = 32, input_pixels: int = 256 * 192, input_size: list[int] | None = None,
                   epochs: int | None = None, batch_size: int | None = None, val_fraction: float = 0.1,
                   seed: int = 0, category_id: int | None = None, second: dict | None = None,
                   name: str | None = None) -> tuple[dict, list[str], dict[str, dict]]:
    """(config dict, the choices made, split files to write {path: coco dict}). See the module docstring."""
    category = keypoint_category(coco, category_id, ann_file)
    cid = int(category["id"])
    names = list(category["keypoints"])
    flip, flip_note = choose_flip(category)
    sigmas, sigma_note = choose_sigmas(names, repeated_pairs(coco, cid, second))
    notes = [f"keypoints: {len(names)} ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})", flip_note,
             sigma_note]

    splits = source_splits(coco)
    files: dict[str, dict] = {}
    stem = os.path.splitext(output)[0]
    if splits:
        parts = {}
        for role, split in zip(("train", "val"), splits):
            path = f"{stem}.{split}.json"
            files[path] = split_coco(coco, split)
            parts[role] = {"ann_file": path, "image_root": image_root}
        train_coco = files[parts["train"]["ann_file"]]
        notes.append(f"validation: the source's splits, {splits[0]} ({len(train_coco['images'])} images) and "
                     f"{splits[1]} ({len(files[parts['val']['ann_file']]['images'])}), written beside the config")
    else:
        hold = {"ann_file": ann_file, "image_root": image_root, "holdout_fraction": val_fraction,
                "holdout_seed": seed}
        parts = {"train": {**hold, "subset": "rest"}, "val": {**hold, "subset": "holdout"}}
        train_coco = coco
        n_val = max(1, round(val_fraction * len(coco["images"])))
        notes.append(f"validation: a seeded hold-out of about {n_val} of {len(coco['images'])} images "
                     f"(subset holdout/rest, fraction {val_fraction}, seed {seed}); the source names no val split")

    count = sum(1 for a in coco["annotations"] if int(a.get("category_id", cid)) == cid)
    num_train = sum(1 for a in train_coco["annotations"] if int(a.get("category_id", cid)) == cid)
    if not splits:   # the hold-out takes its share of the images (and, roughly, of the instances)
        num_train = max(1, round(num_train * (1 - val_fraction)))
    num_val = max(0, count - num_train)
    aspect, why = input_aspect(box_aspects(train_coco, cid))
    if input_size is None:
        input_size = choose_input_size(aspect, max_stride, input_pixels)
        notes.append(f"input_size: {input_size} ({why}; about {input_pixels} pixels, multiples of {backbone}'s "
                     f"stride {max_stride})")
    auto_batch, auto_epochs = choose_schedule(max(num_train, 1))
    batch_size, epochs = batch_size or auto_batch, epochs or auto_epochs
    total_steps = epochs * max(1, math.ceil(num_train / batch_size))
    notes.append(f"batch_size {batch_size}, epochs {epochs}: {num_train} training instances, about {total_steps} "
                 f"steps")
    eval_interval, holdout_note = choose_eval_interval(epochs, num_val)
    notes.append(holdout_note or f"eval_interval: {eval_interval} (about {EVALUATIONS} evaluations of "
                                 f"{num_val} validation instances)")

    data = {"train": parts["train"], "val": parts["val"], "category_id": cid, "input_size": list(input_size),
            "flip_index": flip, "oks_sigmas": sigmas}
    evaluation, loss = {}, {}
    if len(names) == FACE68:
        data["nme_normalize"] = [36, 45]    # outer eye corners of the 68-point layout
        data["sigma"] = FACE68_RECIPE["data"]["sigma"]
        loss = dict(FACE68_RECIPE["loss"])
        evaluation = {"main_metric": "NME", "face": {"normalize": "inter_ocular"}, **FACE68_RECIPE["eval"]}
        notes.append("68-point face layout: nme_normalize [36, 45] (outer eye corners), main metric NME and the "
                     "face report (NME, FR, AUC, per region); the 300-W recipe's measured choices: Adaptive Wing "
                     "loss, sigma 1.5, two landmark re-crops (docs/results.md, the 300-W levers)")
    if is_coco_body(names):
        data["upper_body_ids"] = list(COCO_UPPER_BODY_IDS)
    notes.append("precision: auto (bf16 where the processor runs it natively, else fp32) and channels_last")
    cfg = {
        "task": "keypoints",
        "name": name or os.path.splitext(os.path.basename(ann_file))[0],
        "model": {"backbone": backbone, "fpn_channels": 64, "head_channels": 64},
        "data": data,
        "train": {"epochs": int(epochs), "batch_size": int(batch_size),
                  "warmup_steps": int(min(100, max(1, total_steps // 20))), "eval_interval": int(eval_interval),
                  "precision": "auto", "channels_last": True},
    }
    if evaluation:
        cfg["eval"] = evaluation
    if loss:
        cfg["loss"] = loss
    return cfg, notes, files
