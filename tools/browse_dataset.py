"""Look at training samples as the model sees them, before training on a new dataset.

    python -m tools.browse_dataset --config configs/X.yaml [--num 16] [--split train|val] [--output-dir D]

Each picture has three panels: the augmented crop with keypoints (index labels) and skeleton; the same crop
mirrored with the config's flip_index applied (if the flip map is right, the colours stay on the same body
side in both panels: orange for the lower index of each pair, e.g. COCO's left, blue for its partner); and
the heatmap targets the codec builds from it (maximum over keypoints).
"""

from __future__ import annotations

import argparse
import logging
import os

import cv2
import numpy as np
import torch

from engine.inference.drawing import draw_keypoints, save_rgb
from engine.tasks import keypoints as kp
from engine.tasks.registry import load_config
from tools._common import add_debug_flag, run_cli, setup_logging

log = logging.getLogger("tools.browse_dataset")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("overrides", nargs="*")
    p.add_argument("--split", choices=("train", "val"), default="train", help="train shows the augmentation")
    p.add_argument("--num", type=int, default=16, help="number of samples")
    p.add_argument("--scale", type=int, default=3, help="upscaling of the small crops for viewing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default="outputs/browse")
    return p


def render_sample(sample: dict, meta: kp.KeypointMeta, codec, scale: int) -> np.ndarray:
    image = sample["image"].permute(1, 2, 0).numpy()
    kpts = sample["keypoints"].numpy().astype(np.float64)
    h, w = image.shape[:2]
    big = cv2.resize(image, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)

    def upscale(k):
        out = k.copy()
        out[:, :2] = (out[:, :2] + 0.5) * scale - 0.5     # pixel-centre convention under a resize
        return out

    labelled = kpts.copy()
    labelled[:, 2] = (labelled[:, 2] > 0).astype(float)
    panel_a = draw_keypoints(big, upscale(labelled)[None], meta.skeleton, meta.flip_index, 0.5, labels=True)
    flipped = codec.flip_keypoints(torch.from_numpy(labelled)[None], meta.flip_index, w)[0].numpy()
    panel_b = draw_keypoints(np.ascontiguousarray(big[:, ::-1]), upscale(flipped)[None], meta.skeleton,
                             meta.flip_index, 0.5, labels=True)
    heat, weight = codec.encode(torch.from_numpy(kpts).float()[None])
    hm = (heat[0].amax(0).numpy() * 255).astype(np.uint8)
    hm = cv2.applyColorMap(cv2.resize(hm, (w * scale, h * scale), interpolation=cv2.INTER_LINEAR), cv2.COLORMAP_JET)
    panel_c = cv2.addWeighted(big, 0.5, cv2.cvtColor(hm, cv2.COLOR_BGR2RGB), 0.5, 0)
    cv2.putText(panel_c, f"{int(weight.sum())}/{len(kpts)} kpts weighted", (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                (255, 255, 255), 1, cv2.LINE_AA)
    sep = np.full((h * scale, 4, 3), 255, np.uint8)
    return np.hstack([panel_a, sep, panel_b, sep, panel_c])


def main(argv: list[str] | None = None) -> list[str]:
    args = add_debug_flag(get_args_parser()).parse_intermixed_args(argv)
    setup_logging()
    cfg = load_config(args.config, args.overrides)
    split_cfg = cfg.data.train if args.split == "train" else cfg.data.val
    data, meta = kp.load_split_and_meta(cfg, split_cfg)
    dataset = kp.make_topdown_dataset(cfg, data, meta, train=args.split == "train")
    codec = kp.build_codec(cfg)
    rng = np.random.default_rng(args.seed)
    picks = rng.choice(len(dataset), size=min(args.num, len(dataset)), replace=False)
    os.makedirs(args.output_dir, exist_ok=True)
    written = []
    for n, index in enumerate(picks):
        sample = dataset[(int(index), int(rng.integers(2**31)))]
        if sample is None:
            continue
        path = os.path.join(args.output_dir, f"{n:03d}_image{sample['image_id']}_ann{sample['ann_id']}.png")
        save_rgb(path, render_sample(sample, meta, codec, args.scale))
        written.append(path)
    log.info("wrote %d pictures to %s (left: crop; middle: mirrored with flip_index; right: targets)",
             len(written), args.output_dir)
    return written


if __name__ == "__main__":
    run_cli(main)
