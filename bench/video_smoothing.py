"""What One-Euro smoothing changes on a real video: jitter removed against displacement added, in one run.

Runs a keypoint checkpoint over a video twice through the same batched, tracked pipeline as
``tools.infer`` (engine.video.runner), once raw and once smoothed, and prints per keypoint:

* jitter: the mean magnitude of the second difference ``|x[t+1] - 2 x[t] + x[t-1]|`` (px), which is zero
  for motion at constant velocity, so it measures frame-to-frame shake rather than motion;
* shift: the mean distance between the smoothed and the raw keypoint (px), the price (lag at speed).

Boxes: ``--boxes`` (a per-frame COCO detection file, ``image_id`` = frame index) or, for a dark animal on
a light arena such as DeepLabCut's open field, ``--dark-blob``: the largest dark blob of each frame
(grey below 60), padded, written to ``--write-boxes`` as such a file. Example:

    .venv/bin/python bench/video_smoothing.py --checkpoint runs/openfield/best.pt \\
        --video ../shared/data/raw_formats/dlc_openfield/videos/m3v1mp4.mp4 --end-frame 600 --dark-blob
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import cv2
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from engine.inference.box_sources import DetectionFileBoxes  # noqa: E402
from engine.inference.loading import load_keypoint_predictor  # noqa: E402
from engine.video.frames import VideoSource  # noqa: E402
from engine.video.runner import VideoPoseRunner  # noqa: E402
from engine.video.smoothing import TrackSmoother, jitter  # noqa: E402
from engine.video.tracking import PoseTracker  # noqa: E402


def dark_blob_boxes(video: str, start: int, stop: int | None, stride: int, pad: float = 0.15,
                    threshold: int = 60, min_area: int = 800) -> list[dict]:
    """Per-frame COCO detections: the bounding box of the largest dark blob that does not touch the
    frame's edge and covers at least ``min_area`` pixels (grey below ``threshold``, opened with a 5x5
    ellipse to drop thin lines such as the tail), padded by ``pad`` of its size on each side."""
    dets = []
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    for idx, rgb in VideoSource(video, start, stop, stride):
        grey = cv2.GaussianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (5, 5), 0)
        _, mask = cv2.threshold(grey, threshold, 255, cv2.THRESH_BINARY_INV)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
        fh, fw = grey.shape
        # The dark surround of the arena touches the frame's edge; the animal does not.
        inside = [i for i in range(1, n) if stats[i, 0] > 0 and stats[i, 1] > 0
                  and stats[i, 0] + stats[i, 2] < fw and stats[i, 1] + stats[i, 3] < fh
                  and stats[i, cv2.CC_STAT_AREA] >= min_area]
        if not inside:
            continue
        x, y, w, h, _ = stats[max(inside, key=lambda i: stats[i, cv2.CC_STAT_AREA])]
        px, py = pad * w, pad * h
        dets.append({"image_id": int(idx), "category_id": 1, "score": 1.0,
                     "bbox": [float(x - px), float(y - py), float(w + 2 * px), float(h + 2 * py)]})
    return dets


def run(predictor, boxes: str, args, smooth: bool) -> dict[int, np.ndarray]:
    """{frame: keypoints [K, 3]} of track 0 (the single animal)."""
    source = VideoSource(args.video, args.start_frame, args.end_frame, args.frame_stride)
    tracker = PoseTracker(predictor.task.meta.oks_sigmas)
    smoother = TrackSmoother(source.fps, args.min_cutoff, args.beta, args.d_cutoff) if smooth else None
    runner = VideoPoseRunner(predictor, DetectionFileBoxes(boxes), batch_size=16, tracker=tracker,
                             smoother=smoother)
    out = {}
    for r in runner.run(source):
        if len(r.keypoints):
            out[r.frame] = r.keypoints[0]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--video", required=True)
    p.add_argument("--boxes", help="per-frame COCO detections (image_id = frame index)")
    p.add_argument("--dark-blob", action="store_true", help="boxes from the largest dark blob of each frame")
    p.add_argument("--write-boxes", default="outputs/video_smoothing/boxes.json")
    p.add_argument("--start-frame", type=int, default=0)
    p.add_argument("--end-frame", type=int, default=None)
    p.add_argument("--frame-stride", type=int, default=1)
    p.add_argument("--min-cutoff", type=float, default=1.0)
    p.add_argument("--beta", type=float, default=0.01)
    p.add_argument("--d-cutoff", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    boxes = args.boxes
    if args.dark_blob:
        os.makedirs(os.path.dirname(os.path.abspath(args.write_boxes)), exist_ok=True)
        with open(args.write_boxes, "w") as f:
            json.dump(dark_blob_boxes(args.video, args.start_frame, args.end_frame, args.frame_stride), f)
        boxes = args.write_boxes
    if not boxes:
        p.error("give --boxes or --dark-blob")
    predictor, _ = load_keypoint_predictor(args.checkpoint, torch.device("cpu"), batch_size=32)
    raw, smooth = run(predictor, boxes, args, False), run(predictor, boxes, args, True)
    frames = sorted(set(raw) & set(smooth))
    # Consecutive processed frames only: a gap would count as shake.
    step = args.frame_stride
    runs = np.split(np.array(frames), np.flatnonzero(np.diff(frames) != step) + 1)
    names = predictor.task.meta.keypoint_names
    print(f"{args.video}: {len(frames)} frames with the animal, One-Euro min_cutoff={args.min_cutoff} "
          f"beta={args.beta} d_cutoff={args.d_cutoff}")
    print(f"{'keypoint':>10} {'jitter raw px':>14} {'smoothed px':>12} {'ratio':>7} {'shift px':>9}")
    for k, name in enumerate(names):
        jr = [jitter(np.stack([raw[f][k:k + 1, :2] for f in r])) for r in runs if len(r) >= 3]
        js = [jitter(np.stack([smooth[f][k:k + 1, :2] for f in r])) for r in runs if len(r) >= 3]
        w = [len(r) - 2 for r in runs if len(r) >= 3]
        jr, js = np.average(jr, weights=w), np.average(js, weights=w)
        shift = np.mean([np.linalg.norm(smooth[f][k, :2] - raw[f][k, :2]) for f in frames])
        print(f"{name:>10} {jr:>14.2f} {js:>12.2f} {jr / js:>6.2f}x {shift:>9.2f}")


if __name__ == "__main__":
    main()
