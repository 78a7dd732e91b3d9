"""The embedded default end to end: synthetic data -> train -> evaluate -> infer -> pictures.

    python -m tools.demo [--config configs/hg-fpn_resnet18_synthetic-kpt_64x96.yaml] [--output-dir outputs/demo]

Each stage calls the same tool a user would run by hand (the commands are printed), in one process so the
libraries load once. Everything lands in the output folder: ``train/`` (checkpoints, logs, curves),
``eval/`` (COCO results, metrics), ``infer/vis/`` (drawn images), ``predictions.jpg`` (a contact sheet),
``training_curves.png``, ``demo_metrics.json`` (metrics and the time each stage took) and ``video/``: a short
clip of figures walking across the frame (``moving_figures.mp4``) run through the trained model with
tracking (``moving_figures_annotated.mp4``, its per-frame JSON and DeepLabCut-layout CSV).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time

import cv2
import numpy as np

from datasets.synthetic_video import render_moving_figures, truth_detections, write_video
from engine.tasks import keypoints as kp
from engine.tasks.registry import load_config
from tools import eval as eval_tool
from tools import infer as infer_tool
from tools import train as train_tool
from tools._common import add_debug_flag, run_cli, setup_logging

log = logging.getLogger("tools.demo")
DEFAULT_CONFIG = "configs/hg-fpn_resnet18_synthetic-kpt_64x96.yaml"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("overrides", nargs="*", help="dotted config overrides for training, e.g. train.epochs=2")
    p.add_argument("--output-dir", default="outputs/demo")
    p.add_argument("--num-pictures", type=int, default=12, help="validation images to draw")
    p.add_argument("--no-progress", action="store_true")
    return p


def write_gt_boxes_as_detections(ann_file: str, out_path: str, category_id: int) -> int:
    """The ground-truth boxes of a COCO file in detection-results format (score 1), for top-down inference."""
    with open(ann_file) as f:
        data = json.load(f)
    dets = [{"image_id": a["image_id"], "category_id": a.get("category_id", category_id), "bbox": a["bbox"],
             "score": 1.0} for a in data["annotations"]
            if not a.get("iscrowd", 0) and a.get("num_keypoints", 1) > 0]
    with open(out_path, "w") as f:
        json.dump(dets, f)
    return len(dets)


def contact_sheet(paths: list[str], out_path: str, tile: int = 224, columns: int = 4) -> None:
    tiles = []
    for p in paths:
        img = cv2.imread(p)
        if img is None:
            continue
        s = tile / max(img.shape[:2])
        img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
        canvas = np.full((tile, tile, 3), 255, np.uint8)
        canvas[: img.shape[0], : img.shape[1]] = img
        tiles.append(canvas)
    if not tiles:
        return
    while len(tiles) % columns:
        tiles.append(np.full((tile, tile, 3), 255, np.uint8))
    rows = [np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)]
    cv2.imwrite(out_path, np.vstack(rows), [cv2.IMWRITE_JPEG_QUALITY, 90])


def run_video_stage(checkpoint: str, out_dir: str, quiet: list[str], timings: dict, num_frames: int = 48) -> dict:
    """Write a clip of moving synthetic figures and run it through ``tools.infer`` with tracking, on the
    figures' true boxes (the demo trains no detector; its evaluation uses ground-truth boxes too)."""
    os.makedirs(out_dir, exist_ok=True)
    frames, truth = render_moving_figures(num_frames=num_frames, size=(256, 192), num_figures=2,
                                          figure_height=120, speed=2.5, seed=7)
    video = write_video(os.path.join(out_dir, "moving_figures.mp4"), frames, fps=15)
    boxes = os.path.join(out_dir, "moving_figures_boxes.json")
    with open(boxes, "w") as f:
        json.dump(truth_detections(truth, margin=10), f)
    return _run("video", infer_tool, ["--checkpoint", checkpoint, "--input", video, "--boxes", boxes, "--track",
                                      "--output-dir", out_dir, *quiet], timings)


def _run(stage: str, tool, argv: list[str], timings: dict):
    print(f"\n$ python -m tools.{tool.__name__.split('.')[-1]} {' '.join(argv)}", flush=True)
    start = time.time()
    out = tool.main(argv)
    timings[stage] = round(time.time() - start, 1)
    return out


def main(argv: list[str] | None = None) -> dict:
    args = add_debug_flag(get_args_parser()).parse_intermixed_args(argv)
    setup_logging()
    t0 = time.time()
    out = args.output_dir
    os.makedirs(out, exist_ok=True)
    cfg = load_config(args.config, args.overrides)
    timings: dict[str, float] = {}
    start = time.time()
    kp.prepare_data(cfg)
    timings["data"] = round(time.time() - start, 1)
    quiet = ["--no-progress"] if args.no_progress else []

    train_dir = os.path.join(out, "train")
    if os.path.isdir(train_dir):
        shutil.rmtree(train_dir)   # a fresh run each time; the demo never resumes an old one
    _run("train", train_tool, ["--config", args.config, "--run-dir", train_dir, *quiet, *args.overrides], timings)
    best = os.path.join(train_dir, "best.pt")
    report = _run("eval", eval_tool, ["--config", args.config, "--checkpoint", best, "--output-dir",
                                      os.path.join(out, "eval"), "--compare-flip", *quiet, *args.overrides], timings)

    boxes = os.path.join(out, "val_gt_boxes.json")
    write_gt_boxes_as_detections(cfg.data.val.ann_file, boxes, 1)
    val_images = os.path.join(cfg.data.val.image_root, "val")
    infer = _run("infer", infer_tool, ["--checkpoint", best, "--input", val_images, "--boxes", boxes,
                                       "--image-info", cfg.data.val.ann_file, "--output-dir",
                                       os.path.join(out, "infer"), "--max-images", str(args.num_pictures), *quiet],
                 timings)
    vis = sorted(os.path.join(infer["vis_dir"], f) for f in os.listdir(infer["vis_dir"]))
    contact_sheet(vis, os.path.join(out, "predictions.jpg"))
    shutil.copy(os.path.join(train_dir, "training_curves.png"), os.path.join(out, "training_curves.png"))
    video = run_video_stage(best, os.path.join(out, "video"), quiet, timings)["videos"][0]

    timings["total_after_install"] = round(time.time() - t0, 1)
    summary = {"config": args.config, "metrics": report["metrics"], "flip_gain": report.get("flip_gain"),
               "without_flip": report.get("without_flip"), "seconds": timings,
               "video": {"frames": video["frames"], "track_ids": video["track_ids"], **video["outputs"]},
               "evaluation": "top-down on ground-truth boxes; OKS area = the figure's silhouette area"}
    with open(os.path.join(out, "demo_metrics.json"), "w") as f:
        json.dump(summary, f, indent=2)
    m = report["metrics"]
    print(f"\nDemo finished in {timings['total_after_install']:.0f} s "
          f"(data {timings['data']:.0f} s, train {timings['train']:.0f} s, eval {timings['eval']:.0f} s, "
          f"infer {timings['infer']:.0f} s, video {timings['video']:.0f} s)")
    print(f"COCO keypoint AP {m['AP']:.3f} (AP50 {m['AP50']:.3f}, AP75 {m['AP75']:.3f}), AR {m['AR']:.3f}, "
          f"PCK@0.1 {m['PCK@0.1']:.3f}; flip test gain AP {report['flip_gain']['AP']:+.3f}")
    print(f"Outputs in {out}/: predictions.jpg, training_curves.png, demo_metrics.json, eval/, infer/, train/, "
          f"video/ ({video['outputs']['video']})")
    return summary


if __name__ == "__main__":
    run_cli(main)
