"""Classification data: an image folder (one sub-folder per class) and the per-sample pipeline all sets share.

    root/
      cat/  001.jpg  002.png ...
      dog/  ...

Class indices follow the sorted folder names, so two folders with the same classes give the same indices.
A sample is a dict: ``image`` uint8 [3, H, W] (the model normalises on the device), ``label`` int,
``valid_hw`` [2] (the part of ``image`` that shows the picture, for ``native`` inputs), ``index`` and ``id``
(the file's path relative to the root, for error reports). ``dataset[(index, seed)]`` draws all of the
sample's randomness (crop window, flip, photometric changes) from ``seed`` (datasets/sampler.py), so it is
the same in every run, every worker and after a resume.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.image_io import IMAGE_EXTENSIONS, read_image_rgb, report_unreadable_image
from datasets.input_policy import ClassificationAugment, check_policy, fit_to_input
from datasets.topdown_augment import photometric_transform

log = logging.getLogger(__name__)



class ClassificationDataset(Dataset):
    """Base of the classification sets: subclasses provide ``_load(index) -> (RGB uint8 image or None, id)``
    and ``labels``; this class applies the input policy and the training augmentation.

    Args:
        class_names: one name per class index.
        input_size: network input ``(width, height)`` (ignored by ``native``).
        policy: one of :data:`datasets.input_policy.INPUT_POLICIES`.
        train: apply ``augment`` (and random crops); otherwise deterministic.
        crop_scale: ``center_crop``/``random_crop`` zoom beyond covering the input (224 out of 256: 1.143).
        fill: letterbox padding colour (RGB uint8; the backbone's mean becomes 0 after normalisation).
        on_bad_image: ``"error"`` stops with the file's name; ``"skip"`` warns and drops the sample.
    """

    def __init__(self, class_names: Sequence[str], input_size: Sequence[int] = (64, 64), policy: str = "resize",
                 train: bool = False, augment: ClassificationAugment | None = None, crop_scale: float = 1.143,
                 fill: Sequence[int] = (0, 0, 0), on_bad_image: str = "error"):
        if on_bad_image not in ("error", "skip"):
            raise ValueError(f"on_bad_image={on_bad_image!r} is not one of ('error', 'skip')")
        self.class_names = list(class_names)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.policy = check_policy(policy)
        self.train = train
        self.augment = augment or ClassificationAugment()
        self.crop_scale = crop_scale
        self.fill = tuple(int(v) for v in fill)
        self.on_bad_image = on_bad_image
        self.photometric = photometric_transform(self.augment.photometric if train else "none")
        self.labels: list[int] = []

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def _load(self, index: int) -> tuple[np.ndarray | None, str]:
        raise NotImplementedError

    def __getitem__(self, item) -> dict | None:
        index, seed = item if isinstance(item, tuple) else (item, None)
        image, sample_id = self._load(index)
        if image is None:
            report_unreadable_image(f"{sample_id} (missing or corrupt)", self.on_bad_image)
            return None
        rng = np.random.default_rng(seed)
        image, valid = fit_to_input(image, self.input_size, self.policy, self.train, rng, self.crop_scale, self.fill)
        if self.train:
            if rng.random() < self.augment.flip_prob:
                image = np.ascontiguousarray(image[:, ::-1])
            if self.augment.photometric != "none":
                # albumentations ignores the global seeds: seed it from this sample's seed
                self.photometric.set_random_seed(int(rng.integers(2**31)))
                image = self.photometric(image=image)["image"]
        return {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
                "label": int(self.labels[index]), "valid_hw": torch.tensor(valid, dtype=torch.int64),
                "index": int(index), "id": sample_id}


def scan_image_folder(root: str) -> tuple[list[str], list[tuple[str, int]]]:
    """``(class_names, [(relative path, class index), ...])`` of an image folder, in sorted order."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder not found: {root}")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if not classes:
        raise ValueError(f"{root} has no class sub-folders; an image folder is root/<class name>/<image files>")
    samples = []
    for label, name in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(os.path.join(root, name))):
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    samples.append((os.path.relpath(os.path.join(dirpath, f), root), label))
    if not samples:
        raise ValueError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) under its class folders {classes}")
    empty = [c for i, c in enumerate(classes) if not any(lbl == i for _, lbl in samples)]
    if empty:
        log.warning("%s: classes without images: %s", root, empty)
    return classes, samples


class ImageFolderDataset(ClassificationDataset):
    """Images under ``root/<class>/``; ``class_names`` (e.g. the training set's) fixes the indices, and a class
    folder not among them is an error."""

    def __init__(self, root: str, class_names: Sequence[str] | None = None, **kwargs):
        found, samples = scan_image_folder(root)
        if class_names is None:
            class_names = found
        unknown = sorted(set(found) - set(class_names))
        if unknown:
            raise ValueError(f"{root} has class folders {unknown} that the training set does not have "
                             f"({list(class_names)})")
        super().__init__(class_names, **kwargs)
        remap = [list(class_names).index(c) for c in found]
        self.root = root
        self.paths = [p for p, _ in samples]
        self.labels = [remap[lbl] for _, lbl in samples]

    def _load(self, index: int):
        return read_image_rgb(os.path.join(self.root, self.paths[index])), self.paths[index]

    def listing_sha256(self) -> str:
        """A hash of the file list, labels and sizes: the 'annotation' of an image folder, for provenance."""
        h = hashlib.sha256()
        for path, label in zip(self.paths, self.labels):
            size = os.path.getsize(os.path.join(self.root, path))
            h.update(f"{path}\t{self.class_names[label]}\t{size}\n".encode())
        return h.hexdigest()
