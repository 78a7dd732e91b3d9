"""Batched HeatmapCodec against per-sample numpy baselines, measured in the same run (CPU).

(a) Targets: ``HeatmapCodec.encode`` on the whole batch vs an HRNet-style loop (one new array per sample, a
    (6 sigma + 1)^2 Gaussian patch per keypoint on the rounded cell, pasted with clipping).
(b) Decoding: ``HeatmapCodec.decode`` with DARK vs an MMPose-style numpy decode (argmax per keypoint, then
    per sample a zero-padded cv2.GaussianBlur of each map, log, and a Taylor step per keypoint).

Run from the repository root: ``.venv/bin/python bench/bench_codec.py``. Times are medians of ``--repeats``
timeit repeats; ratios are baseline / ours (> 1 means ours is faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import timeit

import cv2
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a script: bench/ is on sys.path
from models.heatmap_codec import HeatmapCodec  # noqa: E402


# ---------------------------------------------------------------------------------------------- inputs
def make_keypoints(batch: int, num_keypoints: int, input_w: int, input_h: int, seed: int = 0) -> np.ndarray:
    """[B, K, 3] float32 (x, y, v) inside the crop; about 10% unlabelled (v = 0)."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform([0, 0], [input_w - 1, input_h - 1], size=(batch, num_keypoints, 2))
    v = rng.choice([0, 1, 2], p=[0.1, 0.2, 0.7], size=(batch, num_keypoints, 1))
    return np.concatenate([xy, v], axis=-1).astype(np.float32)


# ---------------------------------------------------------------------------------------------- baselines
def hrnet_style_targets(keypoints: np.ndarray, heatmap_w: int, heatmap_h: int, stride: float,
                        sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample, per-keypoint numpy targets in the manner of HRNet's ``generate_target``.

    Each sample gets a fresh zero array; each labelled keypoint a Gaussian patch of side 6 sigma + 1 built on
    the spot and centred on the rounded cell, copied into the part of the heatmap it overlaps. A keypoint
    whose patch misses the heatmap entirely gets weight 0. Cell coordinates use our aligned convention
    u = (x + 0.5) / s - 0.5, so that only the rounding differs from ``HeatmapCodec.encode``.
    Returns heatmaps [B, K, h, w] and weights [B, K] (float32).
    """
    radius = 3 * sigma
    side = int(2 * radius + 1)
    targets, weights = [], []
    for sample in keypoints:
        target = np.zeros((len(sample), heatmap_h, heatmap_w), dtype=np.float32)
        weight = (sample[:, 2] > 0).astype(np.float32)
        for j, (x, y, _) in enumerate(sample):
            cu = int((x + 0.5) / stride - 0.5 + 0.5)          # rounded like HRNet: int(c + 0.5)
            cv = int((y + 0.5) / stride - 0.5 + 0.5)
            left, top = int(cu - radius), int(cv - radius)
            right, bottom = int(cu + radius + 1), int(cv + radius + 1)
            if left >= heatmap_w or top >= heatmap_h or right < 0 or bottom < 0:
                weight[j] = 0.0
                continue
            grid = np.arange(side, dtype=np.float32)
            mid = side // 2
            patch = np.exp(-((grid[None, :] - mid) ** 2 + (grid[:, None] - mid) ** 2) / (2 * sigma ** 2))
            # Overlap of the patch with the heatmap, in patch and in heatmap coordinates.
            px0, px1 = max(0, -left), min(right, heatmap_w) - left
            py0, py1 = max(0, -top), min(bottom, heatmap_h) - top
            hx0, hx1 = max(0, left), min(right, heatmap_w)
            hy0, hy1 = max(0, top), min(bottom, heatmap_h)
            if weight[j] > 0.5:
                target[j, hy0:hy1, hx0:hx1] = patch[py0:py1, px0:px1]
        targets.append(target)
        weights.append(weight)
    return np.stack(targets), np.stack(weights)


def _blur_like_dark(maps: np.ndarray, kernel: int) -> np.ndarray:
    """Blur each [h, w] map on a zero border with cv2 (sigma from the kernel size), keeping its maximum."""
    pad = (kernel - 1) // 2
    h, w = maps.shape[1:]
    out = np.empty_like(maps)
    for k, m in enumerate(maps):
        peak = m.max()
        canvas = np.zeros((h + 2 * pad, w + 2 * pad), dtype=np.float32)
        canvas[pad:pad + h, pad:pad + w] = m
        blurred = cv2.GaussianBlur(canvas, (kernel, kernel), 0)[pad:pad + h, pad:pad + w]
        top = blurred.max()
        out[k] = blurred * (peak / top) if top > 0 else blurred     # an all-zero map (unlabelled) stays zero
    return out


def mmpose_style_decode(heatmaps: np.ndarray, stride: float, kernel: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample numpy DARK decode in the manner of MMPose's MSRAHeatmap codec.

    For each sample: argmax of each keypoint's map (vectorised over K), blur every map, take the log, then
    for each keypoint one Newton step -H^-1 g with central differences (the second derivatives use a
    two-cell spacing as MMPose does) where the stencil fits inside the map.
    heatmaps: [B, K, h, w] float32. Returns keypoints [B, K, 2] in input pixels and scores [B, K].
    """
    b, k, h, w = heatmaps.shape
    all_xy, all_scores = [], []
    for sample in heatmaps:
        flat = sample.reshape(k, -1)
        idx = flat.argmax(axis=1)
        scores = flat[np.arange(k), idx]
        uv = np.stack([idx % w, idx // w], axis=-1).astype(np.float32)
        logm = np.log(np.maximum(_blur_like_dark(sample.copy(), kernel), 1e-10))
        for j in range(k):
            u, v = int(uv[j, 0]), int(uv[j, 1])
            if not (2 <= u < w - 2 and 2 <= v < h - 2):
                continue
            m = logm[j]
            gx = 0.5 * (m[v, u + 1] - m[v, u - 1])
            gy = 0.5 * (m[v + 1, u] - m[v - 1, u])
            hxx = 0.25 * (m[v, u + 2] - 2 * m[v, u] + m[v, u - 2])
            hyy = 0.25 * (m[v + 2, u] - 2 * m[v, u] + m[v - 2, u])
            hxy = 0.25 * (m[v + 1, u + 1] - m[v - 1, u + 1] - m[v + 1, u - 1] + m[v - 1, u - 1])
            hess = np.array([[hxx, hxy], [hxy, hyy]])
            if hxx * hyy - hxy ** 2 != 0:
                uv[j] -= np.linalg.inv(hess) @ np.array([gx, gy])
        all_xy.append((uv + 0.5) * stride - 0.5)
        all_scores.append(scores)
    return np.stack(all_xy), np.stack(all_scores)


# ---------------------------------------------------------------------------------------------- timing
def median_ms(fn, repeats: int, number: int) -> float:
    fn()  # warm-up (allocator, first-call dispatch)
    return 1e3 * statistics.median(timeit.repeat(fn, number=number, repeat=repeats)) / number


def time_ours(fn, repeats: int, number: int) -> dict[str, float]:
    """Median ms with torch's default thread count and with one thread."""
    default = torch.get_num_threads()
    result = {f"{default} threads": median_ms(fn, repeats, number)}
    torch.set_num_threads(1)
    try:
        result["1 thread"] = median_ms(fn, repeats, number)
    finally:
        torch.set_num_threads(default)
    return result


def report(title: str, baseline_name: str, baseline_ms: float, ours_name: str, ours: dict[str, float]):
    print(title)
    print(f"  {baseline_name:<38s} {baseline_ms:9.3f} ms")
    for threads, ms in ours.items():
        print(f"  {ours_name + ' (' + threads + ')':<38s} {ms:9.3f} ms   speed-up x{baseline_ms / ms:.1f}")


# ---------------------------------------------------------------------------------------------- main
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--keypoints", type=int, default=17)
    p.add_argument("--heatmap-h", type=int, default=64)
    p.add_argument("--heatmap-w", type=int, default=48)
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--sigma", type=float, default=2.0)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--number", type=int, default=5, help="calls per timeit repeat")
    return p


def main(argv: list[str] | None = None):
    args = get_args_parser().parse_args(argv)
    hw, hh, s = args.heatmap_w, args.heatmap_h, args.stride
    codec = HeatmapCodec((hw * s, hh * s), (hw, hh), sigma=args.sigma, refine="dark")
    kpts_np = make_keypoints(args.batch, args.keypoints, hw * s, hh * s)
    kpts = torch.from_numpy(kpts_np)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, cv2 {cv2.__version__} "
          f"({cv2.getNumThreads()} threads), numpy {np.__version__}")
    print(f"batch {args.batch} x {args.keypoints} keypoints, heatmaps {hh}x{hw} (h x w), stride {s}, "
          f"sigma {args.sigma}, DARK blur kernel {codec.blur_kernel_size}; median of {args.repeats} repeats "
          f"of {args.number} calls\n")

    # (a) targets
    base_ms = median_ms(lambda: hrnet_style_targets(kpts_np, hw, hh, s, args.sigma), args.repeats, args.number)
    ours = time_ours(lambda: codec.encode(kpts), args.repeats, args.number)
    report("(a) target generation", "HRNet-style per-sample numpy loop", base_ms, "HeatmapCodec.encode", ours)

    heat, weights = codec.encode(kpts)
    ref_heat, ref_weights = hrnet_style_targets(kpts_np, hw, hh, s, args.sigma)
    same_weights = int((weights.numpy() == ref_weights).sum())
    labelled = weights.numpy() > 0
    flat_ours = heat.flatten(2).argmax(-1).numpy()
    flat_ref = ref_heat.reshape(*ref_heat.shape[:2], -1).argmax(-1)
    ref_peak = np.stack([flat_ref % hw, flat_ref // hw], axis=-1)
    float_centre = codec.to_heatmap_coords(kpts[..., :2]).numpy()
    peak_diff = np.abs(ref_peak - float_centre)[labelled].max()
    print(f"  targets agree: weights equal for {same_weights}/{weights.numel()} keypoints; argmax cells equal for "
          f"{int((flat_ours == flat_ref)[labelled].sum())}/{int(labelled.sum())} labelled keypoints; max |HRNet peak"
          f" - our float centre| = {peak_diff:.3f} cells (<= 0.5: HRNet rounds the centre, we do not)\n")

    # (b) decoding, on the same noiseless targets for both
    heat_np = heat.numpy()
    base_ms = median_ms(lambda: mmpose_style_decode(heat_np, s, codec.blur_kernel_size), args.repeats, args.number)
    ours = time_ours(lambda: codec.decode(heat), args.repeats, args.number)
    report("(b) decoding with DARK", "MMPose-style per-sample numpy decode", base_ms, "HeatmapCodec.decode", ours)

    xy, _ = codec.decode(heat)
    ref_xy, _ = mmpose_style_decode(heat_np, s, codec.blur_kernel_size)
    true_xy = kpts_np[..., :2]
    # Compare away from the border, where both take a full Taylor step (MMPose's stencil needs 2 cells).
    uv = float_centre
    margin = codec.blur_kernel_size // 2
    interior = labelled & (uv[..., 0] >= margin) & (uv[..., 0] <= hw - 1 - margin) \
        & (uv[..., 1] >= margin) & (uv[..., 1] <= hh - 1 - margin)
    err_ours = np.abs(xy.numpy() - true_xy)[interior].max() / s
    err_ref = np.abs(ref_xy - true_xy)[interior].max() / s
    agree = np.abs(xy.numpy() - ref_xy)[interior].max() / s
    print(f"  decodes agree on {int(interior.sum())} keypoints >= {margin} cells from the border: max |ours - numpy| "
          f"= {agree:.4f} cells; max error vs the true centre: ours {err_ours:.4f}, numpy {err_ref:.4f} cells")


if __name__ == "__main__":
    main()
