"""How a heatmap is regressed, in pictures: input crop, target heatmaps, predicted heatmaps, decoded points.

    python -m tools.show_heatmaps --config configs/X.yaml --checkpoint runs/X/best.pt [--num 4] [--output P]

One row per validation sample: (1) the crop the model sees, (2) the training target (a Gaussian per
keypoint, shown as the maximum over keypoints), (3) the final stack's predicted heatmaps, (4) the points
decoded from them (argmax + DARK step, circles) next to the ground truth (crosses), (5) one keypoint's
predicted heatmap at full heatmap resolution with its decoded position.
"""

from __future__ import annotations

import argparse
import logging
import os

import cv2
import numpy as np
import torch

from engine.checkpoint import load_checkpoint, load_model_state
from engine.inference.drawing import draw_keypoints, save_rgb
from engine.tasks import keypoints as kp
from engine.tasks.registry import load_config
from tools._common import add_debug_flag, run_cli, setup_logging

log = logging.getLogger("tools.show_heatmaps")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("overrides", nargs="*")
    p.add_argument("--num", type=int, default=4, help="validation samples (rows)")
    p.add_argument("--keypoint", default=None, help="name or index of the keypoint shown alone (default: 9)")
    p.add_argument("--scale", type=int, default=3, help="upscaling for viewing")
    p.add_argument("--output", default="outputs/heatmaps.png")
    return p


def _colour(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    u8 = (np.clip(heat, 0, 1) * 255).astype(np.uint8)
    big = cv2.resize(u8, size, interpolation=cv2.INTER_NEAREST)
    return cv2.cvtColor(cv2.applyColorMap(big, cv2.COLORMAP_VIRIDIS), cv2.COLOR_BGR2RGB)


def _label(img: np.ndarray, text: str) -> np.ndarray:
    out = img.copy()
    cv2.putText(out, text, (3, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
    return out


@torch.no_grad()
def render_row(sample: dict, model, task: kp.KeypointTask, meta: kp.KeypointMeta, k_show: int, scale: int):
    codec = task.codec
    image = sample["image"]
    h, w = image.shape[-2:]
    size = (w * scale, h * scale)
    crop = cv2.resize(image.permute(1, 2, 0).numpy(), size, interpolation=cv2.INTER_NEAREST)
    target, _ = codec.encode(sample["keypoints"][None])
    pred = task.predict_heatmaps(model, image[None], flip_test=False)
    xy, scores = codec.decode(pred)
    up = lambda p: (p + 0.5) * scale - 0.5  # noqa: E731  (pixel-centre convention under a resize)
    truth = sample["keypoints"].numpy().astype(np.float64)
    decoded = np.concatenate([up(xy[0].numpy()), scores[0].numpy()[:, None]], axis=1)
    points = draw_keypoints(crop, decoded[None], meta.skeleton, meta.flip_index, 0.1)
    for x, y, v in truth:
        if v > 0:
            cx, cy = int(round(up(x))), int(round(up(y)))
            cv2.drawMarker(points, (cx, cy), (255, 255, 255), cv2.MARKER_CROSS, 6, 1)
    hs, ws = pred.shape[-2:]
    single = _colour(pred[0, k_show].numpy(), (ws * 8, hs * 8))
    u, v = codec.to_heatmap_coords(xy[0, k_show]).tolist()
    cv2.circle(single, (int(round((u + 0.5) * 8 - 0.5)), int(round((v + 0.5) * 8 - 0.5))), 4, (255, 0, 0), 1,
               cv2.LINE_AA)
    single = cv2.resize(single, (single.shape[1] * size[1] // single.shape[0], size[1]),
                        interpolation=cv2.INTER_NEAREST)
    panels = [_label(crop, "input crop"), _label(_colour(target[0].amax(0).numpy(), size), "target (max over K)"),
              _label(_colour(pred[0].amax(0).numpy(), size), "predicted"),
              _label(points, "decoded (o) vs truth (+)"),
              _label(single, f"{meta.keypoint_names[k_show]} (cells)")]
    sep = np.full((size[1], 3, 3), 255, np.uint8)
    row = []
    for p in panels:
        row += [p, sep]
    return np.hstack(row[:-1])


def main(argv: list[str] | None = None) -> str:
    args = add_debug_flag(get_args_parser()).parse_args(argv)
    setup_logging()
    cfg = load_config(args.config, args.overrides)
    val, meta = kp.load_split_and_meta(cfg, cfg.data.val)
    state = load_checkpoint(args.checkpoint)
    model = kp.build_model(cfg, len(meta.keypoint_names), pretrained=False)
    load_model_state(model, state["model"], source=args.checkpoint)
    model.eval()
    dataset = kp.make_topdown_dataset(cfg, val, meta, train=False)
    task = kp.build_task(cfg, meta, progress=False)
    k_show = 9 if args.keypoint is None else kp._keypoint_index(args.keypoint, meta.keypoint_names)
    k_show = min(k_show, len(meta.keypoint_names) - 1)
    picks = np.random.default_rng(0).choice(len(dataset), size=min(args.num, len(dataset)), replace=False)
    rows = [render_row(dataset[int(i)], model, task, meta, k_show, args.scale) for i in picks]
    sheet = np.vstack([np.vstack([r, np.full((3, r.shape[1], 3), 255, np.uint8)]) for r in rows])
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    save_rgb(args.output, sheet)
    log.info("wrote %s", args.output)
    return args.output


if __name__ == "__main__":
    run_cli(main)
