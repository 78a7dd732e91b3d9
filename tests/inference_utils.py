"""Helpers for the inference tests: a tiny untrained keypoint checkpoint saved like tools.train saves one, and a
fake model that learnt a label offset (for the flip test's shift)."""

from __future__ import annotations

import torch

from datasets.skeletons import COCO_FLIP_INDEX, COCO_KEYPOINT_NAMES, COCO_SIGMAS, COCO_SKELETON
from engine.checkpoint import save_checkpoint
from engine.config.loading import config_to_dict
from engine.tasks import keypoints as kp
from engine.tasks.registry import config_from_dict

TINY_KPT_MODEL = {"out_indices": [1, 2, 3], "fpn_channels": 16, "head_channels": 16, "depth": 2, "num_stacks": 1}


def tiny_keypoint_checkpoint(path: str, input_size=(32, 48), seed: int = 0, refine: str = "dark",
                             flip_test: bool = True) -> str:
    """An untrained tiny COCO-17 keypoint model with its config and meta, at ``path``."""
    torch.manual_seed(seed)
    split = {"ann_file": "x", "image_root": "x"}
    cfg = config_from_dict({"task": "keypoints", "name": "tiny", "model": TINY_KPT_MODEL,
                            "data": {"input_size": list(input_size), "flip_index": COCO_FLIP_INDEX,
                                     "train": split, "val": split},
                            "eval": {"refine": refine, "flip_test": flip_test}, "train": {"num_workers": 0}})
    model = kp.build_model(cfg, 17, pretrained=False)
    meta = kp.KeypointMeta(COCO_KEYPOINT_NAMES, [(a - 1, b - 1) for a, b in COCO_SKELETON], COCO_FLIP_INDEX,
                           COCO_SIGMAS, category_id=1)
    save_checkpoint({"model": model.state_dict(), "config": config_to_dict(cfg), "meta": meta.to_dict()}, path)
    return path


class OffsetModel(torch.nn.Module):
    """A mirror-consistent 'model' that learnt a label offset: one keypoint at the brightest column + ``b`` cells
    (stride 4), a Gaussian along x; no flips in its training, so a mirrored crop gets the same +b."""

    def __init__(self, b_cells: float):
        super().__init__()
        self.b = b_cells

    def forward(self, images):
        col = (images[:, 0].float().sum(1).argmax(-1).float() + 0.5) / 4.0 - 0.5   # bright column, in cells [B]
        x = torch.arange(16, dtype=torch.float32)
        row = torch.exp(-((x[None] - (col[:, None] + self.b)) ** 2) / (2 * 1.5 ** 2))
        y = torch.exp(-((x - 7.5) ** 2) / (2 * 1.5 ** 2))
        return [y[None, None, :, None] * row[:, None, None, :]]
