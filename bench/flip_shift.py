"""The flip test's shift for a keypoint model trained without flips: twice the left-right offset it learnt.

A model trained without mirroring on labels that sit ``b`` px right of a mirror-symmetric position learns
``+b``; on a mirrored crop it predicts the mirror of that, ``-b`` once mirrored back. This script runs the
model on the crops of a split (the training split by default: the number is a setting, so it is read off the
training data, not the faces it will be judged on), both ways, and prints the mean x difference between the
direct and the mirrored-back keypoints in input pixels: ``2 b``, the value for ``eval.flip_test_shift``
(docs/keypoints.md, "Mirrors").

    python bench/flip_shift.py --config configs/hg-fpn_resnet18_300w-faces_192x192.yaml --checkpoint runs/X/last.pt
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.checkpoint import (  # noqa: E402
    check_checkpoint_task,
    checkpoint_weights,
    load_checkpoint,
    load_model_state,
)
from engine.tasks.registry import build_evaluation, load_config  # noqa: E402
from models.errors import ConfigError  # noqa: E402
from tools._common import add_debug_flag, run_cli  # noqa: E402


@torch.no_grad()
def mirror_offset(task, model, loader) -> tuple[float, float, int]:
    """Mean and spread over crops of ``mean_k (x_direct - x_mirrored_back)`` in input pixels, and the crop count."""
    codec, flip_index = task.codec, task.meta.flip_index
    per_crop = []
    for batch in loader:
        images = batch["image"]
        direct, _ = codec.decode(model(images)[-1])
        back, _ = codec.decode(codec.flip_heatmaps(model(images.flip(-1))[-1], flip_index))
        per_crop.append((direct - back)[..., 0].mean(1))
    d = torch.cat(per_crop)
    return float(d.mean()), float(d.std()), len(d)


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--weights", choices=("model", "ema"), default="model")
    p.add_argument("--split", choices=("train", "val"), default="train",
                   help="the crops to read: data.train's images (default) or data.val's, without augmentation")
    p.add_argument("--threads", type=int, default=2)
    args = add_debug_flag(p).parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    if cfg.task != "keypoints":
        raise ConfigError(f"{args.config} is a {cfg.task!r} config; the flip shift is a keypoint model's setting")
    if args.split == "train":
        cfg.data.val = cfg.data.train        # the evaluation loader (no augmentation) over the training images
    state = load_checkpoint(args.checkpoint, map_location="cpu")
    check_checkpoint_task(state, args.checkpoint, cfg.task, args.config)
    exp = build_evaluation(cfg, torch.device("cpu"), progress=False)
    load_model_state(exp.model, checkpoint_weights(state, args.checkpoint, args.weights), source=args.checkpoint)
    exp.model.eval()
    mean, std, n = mirror_offset(exp.task, exp.model, exp.val_loader)
    print(f"{n} crops of the {args.split} split: direct - mirrored back = {mean:+.3f} px (std over crops {std:.3f}); "
          f"eval.flip_test_shift: {mean:.2f}")
    return mean


if __name__ == "__main__":
    run_cli(main)
