"""Top-down keypoint samples: one instance's box cropped (and augmented) by a single affine matrix.

A sample holds the crop as uint8 (the model normalises on the device), the keypoints in crop pixel
coordinates (heatmap targets are built on the device by the codec, not here), and the crop -> image matrix
that maps predictions back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from datasets.affine import apply_affine, crop_matrix, invert_affine
from datasets.coco_keypoints import KeypointInstance, KeypointInstances
from datasets.image_io import BAD_IMAGE_POLICIES, read_record_image
from datasets.topdown_augment import TopDownAugment, jitter_box, pixel_transform
from models.bbox import DEFAULT_CROP_PADDING, box_to_center_size
from models.errors import ConfigError

log = logging.getLogger(__name__)

def check_flip_index(flip_index: Sequence[int], num_keypoints: int, names: Sequence[str] | None = None) -> list[int]:
    """Validate a left/right flip map: a permutation of 0..K-1 that is its own inverse."""
    flip_index = [int(i) for i in flip_index]
    if len(flip_index) != num_keypoints:
        raise ConfigError(f"flip_index has {len(flip_index)} entries but the data has {num_keypoints} keypoints "
                         f"(data.flip_index)")
    if sorted(flip_index) != list(range(num_keypoints)):
        raise ConfigError(f"flip_index {flip_index} is not a permutation of 0..{num_keypoints - 1} (data.flip_index)")
    for i, j in enumerate(flip_index):
        if flip_index[j] != i:
            who = f" ({names[i]} -> {names[j]} -> {names[flip_index[j]]})" if names else ""
            raise ConfigError(f"flip_index is not its own inverse: {i} -> {j} but {j} -> {flip_index[j]}{who}; "
                             f"a horizontal flip applied twice must give every keypoint back (data.flip_index)")
    return flip_index


class TopDownKeypointDataset(Dataset):
    """Crops of keypoint instances for a top-down model.

    Args:
        instances: from :func:`datasets.coco_keypoints.load_coco_keypoints` (a :class:`KeypointInstances`), or
            any sequence of :class:`KeypointInstance`, which is packed into one (arrays, not per-instance
            objects: forked loader workers then share it instead of copying it as they touch it).
        input_size: model input ``(width, height)``.
        flip_index: left/right partner of each keypoint (checked to be its own inverse).
        train: apply ``augment``; otherwise the plain centred crop.
        augment: geometry and photometric settings.
        upper_body_ids: keypoints of the upper body, for half-body crops (empty disables them).
        bbox_padding: crop extent relative to the box (after matching the input's aspect ratio).
        on_bad_image: ``"error"`` stops with the file's name; ``"skip"`` warns and drops the sample (the
            collate function then builds the batch from the rest).

    ``dataset[i]`` or ``dataset[(i, seed)]`` (from :class:`datasets.sampler.SeededSampler`) returns a dict:
    ``image`` uint8 [3, H, W]; ``keypoints`` float32 [K, 3] (x, y, v) in crop pixels; ``crop_to_image``
    float32 [2, 3]; ``bbox`` float32 [4] inclusive xyxy in the image; ``image_id``, ``ann_id``, ``index``,
    ``area``.
    """

    def __init__(self, instances: Sequence[KeypointInstance], input_size: Sequence[int], flip_index: Sequence[int],
                 train: bool = False, augment: TopDownAugment | None = None,
                 upper_body_ids: Sequence[int] = (), bbox_padding: float = DEFAULT_CROP_PADDING,
                 on_bad_image: str = "error"):
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ConfigError(f"on_bad_image={on_bad_image!r} is not one of {BAD_IMAGE_POLICIES}")
        self.instances = KeypointInstances.from_instances(instances, num_keypoints=len(flip_index))
        self.input_size = (int(input_size[0]), int(input_size[1]))
        num_k = self.instances.num_keypoints if len(self.instances) else len(flip_index)
        self.flip_index = np.asarray(check_flip_index(flip_index, num_k), dtype=np.int64)
        self.train = train
        self.augment = augment or TopDownAugment()
        self.upper_body_ids = np.asarray(sorted(set(upper_body_ids)), dtype=np.int64)
        self.lower_body_ids = np.asarray(sorted(set(range(num_k)) - set(upper_body_ids)), dtype=np.int64)
        self.bbox_padding = bbox_padding
        self.on_bad_image = on_bad_image
        self.photometric = pixel_transform(self.augment) if train else None
        self._size_warned: set[int] = set()

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, item) -> dict | None:
        index, seed = item if isinstance(item, tuple) else (item, None)
        inst = self.instances[index]
        image = read_record_image(inst.image_path, inst.image_id, inst.image_size, self.on_bad_image,
                                  self._size_warned, "keypoints")
        if image is None:
            return None
        rng = np.random.default_rng(seed)
        center, size, rotation, flip = self._crop_params(inst, rng)
        matrix = crop_matrix(center, size, self.input_size, rotation, flip)
        crop = cv2.warpAffine(image, matrix, self.input_size, flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        kpts = inst.keypoints.copy()
        kpts[:, :2] = apply_affine(kpts[:, :2], matrix)
        if flip:
            kpts = kpts[self.flip_index]
        if self.photometric is not None and self.photometric.transforms:
            self.photometric.set_random_seed(int(rng.integers(2**31)))
            crop = self.photometric(image=crop)["image"]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))),
            "keypoints": torch.from_numpy(kpts.astype(np.float32)),
            "crop_to_image": torch.from_numpy(invert_affine(matrix).astype(np.float32)),
            "bbox": torch.from_numpy(inst.bbox.astype(np.float32)),
            "image_id": inst.image_id,
            "ann_id": inst.ann_id,
            "index": index,
            "area": float(inst.area),
        }

    def _crop_params(self, inst: KeypointInstance, rng: np.random.Generator):
        """Crop centre, size (image pixels), rotation (degrees) and flip for one sample."""
        aspect = self.input_size[0] / self.input_size[1]
        if not self.train:
            center, size = box_to_center_size(inst.bbox, aspect, self.bbox_padding)
            return center, size, 0.0, False
        aug = self.augment
        box = inst.bbox
        if aug.box_jitter > 0 and rng.random() < aug.box_jitter_prob:
            box = jitter_box(box, aug.box_jitter, rng)
        center, size = box_to_center_size(box, aspect, self.bbox_padding)
        if aug.half_body_prob > 0 and len(self.upper_body_ids) and rng.random() < aug.half_body_prob:
            half = self._half_body(inst.keypoints, aspect, rng)
            if half is not None:
                center, size = half
        size = size * rng.uniform(*aug.scale_range)
        if rng.random() < aug.shift_prob:
            center = center + rng.uniform(-aug.shift_fraction, aug.shift_fraction, size=2) * size
        rotation = rng.uniform(-aug.rotation_deg, aug.rotation_deg) if rng.random() < aug.rotation_prob else 0.0
        flip = bool(rng.random() < aug.flip_prob)
        return center, size, rotation, flip

    def _half_body(self, kpts: np.ndarray, aspect: float, rng: np.random.Generator):
        """Box around the labelled upper- or lower-body keypoints, padded 1.5x (as MMPose/HRNet)."""
        labelled = kpts[:, 2] > 0
        if labelled.sum() < self.augment.half_body_min_keypoints:
            return None
        upper = self.upper_body_ids[labelled[self.upper_body_ids]]
        lower = self.lower_body_ids[labelled[self.lower_body_ids]]
        chosen = upper if (rng.random() < 0.5 and len(upper) > 2) or len(lower) <= 2 else lower
        if len(chosen) < 2:
            return None
        pts = kpts[chosen, :2]
        lo, hi = pts.min(0), pts.max(0)
        w, h = max(hi[0] - lo[0] + 1, 1.0), max(hi[1] - lo[1] + 1, 1.0)
        if w > aspect * h:
            h = w / aspect
        else:
            w = h * aspect
        return (lo + hi) / 2, np.array([w, h]) * 1.5


def collate_skipping_none(batch: list) -> dict | None:
    """``default_collate`` over the samples that loaded (``None`` marks a skipped bad image)."""
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    return default_collate(batch)
