"""COCO-style keypoint annotations -> one record per person/animal instance (top-down).

Reads plain JSON (``images``, ``annotations``, ``categories`` with ``keypoints`` names and ``skeleton``) and
checks it on the way in, so a bad file fails here with its name, the field and the fix, not as a shape error
deep in training.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from datasets.coco_common import index_image_records, read_coco_json, resolve_image_path, split_image_ids
from models.bbox import coco_xywh_to_xyxy

log = logging.getLogger(__name__)


@dataclass
class KeypointInstance:
    """One annotated instance. Coordinates in pixel-index convention (pixel i centred at i)."""

    image_id: int
    ann_id: int
    image_path: str
    image_size: tuple[int, int]        # (width, height) from the json
    bbox: np.ndarray                   # [4] inclusive xyxy, float64
    keypoints: np.ndarray              # [K, 3] x, y, v (v: 0 unlabelled, 1 occluded, 2 visible)
    area: float


@dataclass
class KeypointDataset:
    """What a COCO keypoint file holds, checked: the instances and what describes the skeleton."""

    ann_file: str
    image_root: str
    instances: list[KeypointInstance]
    images: dict[int, dict]            # image id -> the json image record
    category_id: int
    keypoint_names: list[str]
    skeleton: list[tuple[int, int]]    # zero-based index pairs
    image_ids: list[int] = field(default_factory=list)   # the images of this split (readable ones)
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_names)


def load_coco_keypoints(ann_file: str, image_root: str, category_id: int | None = None,
                        missing_images: str = "error", subset: str = "all", holdout_fraction: float = 0.1,
                        holdout_seed: int = 0) -> KeypointDataset:
    """Read and check a COCO keypoint file.

    Args:
        ann_file: path of the json.
        image_root: folder the images' ``file_name`` are relative to.
        category_id: which category to read; may be omitted when only one has keypoints.
        missing_images: ``"error"`` or ``"skip"`` (drop the instances of images that are not on disk).
        subset: ``"all"``, or a deterministic split of the *images*: ``"holdout"`` (a ``holdout_fraction``
            share chosen with ``holdout_seed``) or ``"rest"`` (the others), for sets without a val split.

    Crowd instances and instances with no labelled keypoint are skipped (counted in ``stats``). Labelled
    keypoints outside the image are marked unlabelled (they would put targets on padding). A box with zero
    or negative width/height, or a keypoint list of the wrong length, is an error naming the annotation id.
    """
    data = read_coco_json(ann_file, image_root, missing_images, kind="keypoint")
    category = _pick_category(data["categories"], category_id, ann_file)
    names = list(category["keypoints"])
    num_k = len(names)
    skeleton = _read_skeleton(category.get("skeleton") or [], num_k, ann_file)

    images = index_image_records(data, ann_file)
    keep_ids = split_image_ids(sorted(images), subset, holdout_fraction, holdout_seed)

    stats = {"annotations": 0, "crowd": 0, "no_keypoints": 0, "missing_image": 0, "outside_image": 0,
             "other_category": 0, "other_subset": 0}
    paths: dict[int, str] = {}
    instances: list[KeypointInstance] = []
    for ann in data["annotations"]:
        stats["annotations"] += 1
        ann_id = ann.get("id", "?")
        if int(ann.get("category_id", category["id"])) != int(category["id"]):
            stats["other_category"] += 1
            continue
        image_id = int(ann["image_id"])
        if image_id not in images:
            raise ValueError(f"{ann_file}: annotation {ann_id} refers to image_id {image_id}, which is not in images")
        if image_id not in keep_ids:
            stats["other_subset"] += 1
            continue
        if ann.get("iscrowd", 0):
            stats["crowd"] += 1
            continue
        kpts = ann.get("keypoints")
        if kpts is None or len(kpts) != 3 * num_k:
            raise ValueError(f"{ann_file}: annotation {ann_id} has {0 if kpts is None else len(kpts)} keypoint values, "
                             f"expected 3 x {num_k} (x, y, v per keypoint of category {category['name']!r})")
        kpts = np.asarray(kpts, dtype=np.float64).reshape(num_k, 3)
        if not (kpts[:, 2] > 0).any():
            stats["no_keypoints"] += 1
            continue
        bbox = ann.get("bbox")
        if bbox is None or len(bbox) != 4:
            raise ValueError(f"{ann_file}: annotation {ann_id} has no 4-number 'bbox' [x, y, w, h]")
        if not (bbox[2] > 0 and bbox[3] > 0):
            raise ValueError(f"{ann_file}: annotation {ann_id} has a zero-area or negative box {list(bbox)} "
                             f"(w and h must be > 0); fix or remove the annotation")
        img = images[image_id]
        if image_id not in paths:
            paths[image_id] = resolve_image_path(image_root, img["file_name"], ann_file)
        width, height = int(img["width"]), int(img["height"])
        # Pixels span [-0.5, W - 0.5]; a labelled point beyond that is off the image.
        off = (kpts[:, 2] > 0) & ((kpts[:, 0] < -0.5) | (kpts[:, 0] > width - 0.5) |
                                  (kpts[:, 1] < -0.5) | (kpts[:, 1] > height - 0.5))
        if off.any():
            stats["outside_image"] += int(off.sum())
            kpts[off, 2] = 0
        area = float(ann.get("area") or bbox[2] * bbox[3])
        instances.append(KeypointInstance(
            image_id=image_id, ann_id=int(ann_id) if ann_id != "?" else -1, image_path=paths[image_id],
            image_size=(width, height), bbox=coco_xywh_to_xyxy(np.asarray(bbox, dtype=np.float64)),
            keypoints=kpts, area=area))

    missing = sorted({i.image_path for i in instances if not os.path.isfile(i.image_path)})
    if missing:
        if missing_images == "error":
            raise FileNotFoundError(f"{ann_file}: {len(missing)} image files are missing, e.g. {missing[:3]}; "
                                    f"fix image_root or set data.on_bad_image=skip to drop them")
        before = len(instances)
        gone = set(missing)
        keep_ids -= {i.image_id for i in instances if i.image_path in gone}
        instances = [i for i in instances if i.image_path not in gone]
        stats["missing_image"] = before - len(instances)
        log.warning("%s: skipped %d instances whose %d image files are missing, e.g. %s",
                    ann_file, stats["missing_image"], len(missing), missing[:3])
    stats["instances"] = len(instances)
    log.info("%s: %d instances (skipped %d crowd, %d without labelled keypoints; %d keypoints outside their "
             "image marked unlabelled)", ann_file, len(instances), stats["crowd"], stats["no_keypoints"],
             stats["outside_image"])
    return KeypointDataset(ann_file=ann_file, image_root=image_root, instances=instances, images=images,
                           category_id=int(category["id"]), keypoint_names=names, skeleton=skeleton,
                           image_ids=sorted(keep_ids), stats=stats)


def _pick_category(categories: list, category_id: int | None, ann_file: str) -> dict:
    with_kpts = [c for c in categories if c.get("keypoints")]
    if category_id is not None:
        found = [c for c in categories if int(c.get("id", -1)) == int(category_id)]
        if not found:
            raise ValueError(f"{ann_file}: no category with id {category_id}; ids present: "
                             f"{[c.get('id') for c in categories]}")
        if not found[0].get("keypoints"):
            raise ValueError(f"{ann_file}: category {category_id} has no 'keypoints' names")
        return found[0]
    if len(with_kpts) != 1:
        raise ValueError(f"{ann_file}: expected exactly one category with 'keypoints', found {len(with_kpts)}; "
                         f"set data.category_id")
    return with_kpts[0]


def _read_skeleton(skeleton: list, num_k: int, ann_file: str) -> list[tuple[int, int]]:
    """COCO skeletons are one-based index pairs; we keep zero-based ones."""
    pairs = []
    for pair in skeleton:
        if len(pair) != 2 or not all(1 <= int(p) <= num_k for p in pair):
            raise ValueError(f"{ann_file}: skeleton link {pair} is not a pair of one-based indices in 1..{num_k}")
        pairs.append((int(pair[0]) - 1, int(pair[1]) - 1))
    return pairs

