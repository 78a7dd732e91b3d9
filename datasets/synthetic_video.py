"""Short videos of the synthetic figures walking across a fixed background, with their true keypoints.

For tests and the demo: each figure keeps its pose and colours and moves at a constant velocity (bouncing
off the image border), so a tracker should keep one id per figure and a smoother should not move the
points off a straight line. Written with OpenCV (``mp4v``), like a user's clip.
"""

from __future__ import annotations

import copy
import os

import cv2
import numpy as np

from datasets.synthetic import SyntheticKeypointSpec, _background, _draw_figure, _place, _random_pose


def render_moving_figures(num_frames: int = 12, size: tuple[int, int] = (192, 160), num_figures: int = 2,
                          speed: float = 3.0, seed: int = 0, figure_height: float = 90.0
                          ) -> tuple[list[np.ndarray], np.ndarray]:
    """``(frames [RGB uint8 H x W x 3], keypoints [T, F, 17, 2])``; figures spread across the width."""
    w, h = size
    rng = np.random.default_rng(seed)
    background = _background(rng, w, h)
    spec = SyntheticKeypointSpec(min_figure_height=figure_height, max_figure_height=figure_height + 1,
                                 max_rotation_deg=0.0, truncation_prob=0.0)
    figures = []
    for f in range(num_figures):
        pose = _random_pose(rng)
        pts, scale = _place(pose, rng, w, h, spec)
        # Spread the figures over the width so they start apart.
        centre_x = (f + 0.5) * w / num_figures
        pts = pts + np.array([centre_x - pts[:17, 0].mean(), h / 2 - pts[:17, 1].mean()])
        angle = rng.uniform(0, 2 * np.pi)
        figures.append({"pose": pose, "pts": pts, "scale": scale, "seed": int(rng.integers(1 << 30)),
                        "velocity": speed * np.array([np.cos(angle), 0.5 * np.sin(angle)])})
    frames, truth = [], []
    for _ in range(num_frames):
        image = background.copy()
        frame_truth = []
        for fig in figures:
            silhouette = np.zeros((h, w), np.uint8)
            _draw_figure(image, silhouette, fig["pts"], copy.deepcopy(fig["pose"]), fig["scale"],
                         np.random.default_rng(fig["seed"]))
            frame_truth.append(fig["pts"][:17].copy())
            lo, hi = fig["pts"].min(0), fig["pts"].max(0)
            step = fig["velocity"]
            for axis, limit in ((0, w), (1, h)):
                if lo[axis] + step[axis] < 0 or hi[axis] + step[axis] > limit - 1:
                    step[axis] = -step[axis]
            fig["pts"] = fig["pts"] + step
        frames.append(image)
        truth.append(frame_truth)
    return frames, np.asarray(truth)


def write_video(path: str, frames: list[np.ndarray], fps: float = 10.0, fourcc: str = "mp4v") -> str:
    """Write RGB frames with codec ``fourcc`` (default ``mp4v`` in an MP4: what every OpenCV build can write
    and read back; ``MJPG`` for an AVI)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def truth_detections(truth: np.ndarray, margin: float = 8.0, category_id: int = 1) -> list[dict]:
    """Per-frame COCO detections (``image_id`` = frame index, score 1) of boxes around each figure's true
    keypoints widened by ``margin`` pixels: the boxes a perfect detector would give, for top-down inference.

    truth: [T, F, 17, 2] as :func:`render_moving_figures` returns it."""
    dets = []
    for t, figs in enumerate(np.asarray(truth)):
        for k in figs:
            x1, y1 = k.min(0) - margin
            x2, y2 = k.max(0) + margin
            dets.append({"image_id": t, "category_id": category_id, "score": 1.0,
                         "bbox": [round(float(x1), 2), round(float(y1), 2), round(float(x2 - x1 + 1), 2),
                                  round(float(y2 - y1 + 1), 2)]})
    return dets
