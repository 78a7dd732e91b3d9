"""CenterNet targets on the device in batch vs a per-sample numpy loop, and detector inference images/s (CPU).

(a) Targets: ``CenterNetCodec.encode`` on a padded batch ``(B, N, 4)`` vs the loop CenterNet's data loader
    runs per sample (``src/lib/datasets/sample/ctdet.py``): for each object ``gaussian_radius``, a Gaussian
    patch drawn into its class map with ``draw_umich_gaussian`` (a max), and the size / offset / index / mask
    entries written one by one. Both in our aligned cell convention, so the targets must be equal; the script
    checks that. Then the same for the multi-level codec (strides 4-32, objects assigned by size): the
    loop picks each object's level and draws it on that level's map.
(b) Inference: the detector of the given config (random init, it does not matter for speed) on letterboxed
    images, forward + decode + NMS, images/s at batch 1 and at ``--batch``; ``--override model.head=multi_level``
    measures the multi-level head, ``model.head=ltrb`` the ltrb head.

Run from the repository root: ``.venv/bin/python bench/bench_detection.py``. Times are medians of
``--repeats`` timeit repeats; ratios are baseline / ours (> 1 means ours is faster). The baseline is single
threaded, so the 1-thread line is the like-for-like one; on a machine whose cores are busy with other jobs
the multi-thread line mostly measures the contention.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import timeit

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a script: bench/ is on sys.path
from models.box_codec import CenterNetCodec, MultiLevelCenterNetCodec  # noqa: E402


# ---------------------------------------------------------------------------------------------- inputs
def make_boxes(batch: int, max_objects: int, input_w: int, input_h: int, num_classes: int, seed: int = 0):
    """Padded boxes [B, N, 4] (4-40% of the input large), labels [B, N], mask [B, N]; 1..N objects per image."""
    rng = np.random.default_rng(seed)
    boxes = np.zeros((batch, max_objects, 4), np.float32)
    labels = np.zeros((batch, max_objects), np.int64)
    mask = np.zeros((batch, max_objects), bool)
    for b in range(batch):
        n = int(rng.integers(1, max_objects + 1))
        wh = rng.uniform(0.04, 0.4, (n, 2)) * [input_w, input_h]
        xy = rng.uniform(0, 1, (n, 2)) * ([input_w, input_h] - wh)
        boxes[b, :n] = np.concatenate([xy, xy + wh - 1], 1)
        labels[b, :n] = rng.integers(0, num_classes, n)
        mask[b, :n] = True
    return boxes, labels, mask


# ---------------------------------------------------------------------------------------------- baseline
def _gaussian_radius(det_size, min_overlap=0.7):
    """CenterNet's gaussian_radius, verbatim (src/lib/utils/image.py)."""
    height, width = det_size
    a1 = 1
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + np.sqrt(b1 ** 2 - 4 * a1 * c1)) / 2
    a2 = 4
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + np.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + np.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def _gaussian2d(shape, sigma=1):
    m, n = [(ss - 1.0) / 2.0 for ss in shape]
    y, x = np.ogrid[-m:m + 1, -n:n + 1]
    h = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    h[h < np.finfo(h.dtype).eps * h.max()] = 0
    return h


def _draw_umich_gaussian(heatmap, center, radius, k=1):
    diameter = 2 * radius + 1
    gaussian = _gaussian2d((diameter, diameter), sigma=diameter / 6)
    x, y = int(center[0]), int(center[1])
    height, width = heatmap.shape[0:2]
    left, right = min(x, radius), min(width - x, radius + 1)
    top, bottom = min(y, radius), min(height - y, radius + 1)
    masked_heatmap = heatmap[y - top:y + bottom, x - left:x + right]
    masked_gaussian = gaussian[radius - top:radius + bottom, radius - left:radius + right]
    if min(masked_gaussian.shape) > 0 and min(masked_heatmap.shape) > 0:
        np.maximum(masked_heatmap, masked_gaussian * k, out=masked_heatmap)
    return heatmap


def centernet_style_targets(boxes, labels, mask, num_classes, out_w, out_h, stride):
    """Per-sample, per-object numpy targets in the manner of CenterNet's CTDetDataset.__getitem__.

    Cell coordinates use our aligned convention (u = (cx + 0.5) / s - 0.5, nearest cell), so the targets
    must equal ``CenterNetCodec.encode``'s. Returns heatmap [B, C, h, w], index [B, N], size [B, N, 2],
    offset [B, N, 2], mask [B, N].
    """
    hms, inds, whs, regs, masks = [], [], [], [], []
    for sb, sl, sm in zip(boxes, labels, mask):
        hm = np.zeros((num_classes, out_h, out_w), np.float32)
        n = len(sb)
        ind, wh, reg, reg_mask = np.zeros(n, np.int64), np.zeros((n, 2), np.float32), np.zeros((n, 2), np.float32), \
            np.zeros(n, np.float32)
        for k in range(n):
            if not sm[k]:
                continue
            x1, y1, x2, y2 = sb[k]
            w, h = (x2 - x1 + 1) / stride, (y2 - y1 + 1) / stride
            if w <= 0 or h <= 0:
                continue
            ct = np.array([((x1 + x2) / 2 + 0.5) / stride - 0.5, ((y1 + y2) / 2 + 0.5) / stride - 0.5], np.float32)
            ct_int = np.floor(ct + 0.5).astype(np.int32)
            if not (0 <= ct_int[0] < out_w and 0 <= ct_int[1] < out_h):
                continue
            radius = max(0, int(_gaussian_radius((math.ceil(h), math.ceil(w)))))
            _draw_umich_gaussian(hm[sl[k]], ct_int, radius)
            wh[k] = w, h
            ind[k] = ct_int[1] * out_w + ct_int[0]
            reg[k] = ct - ct_int
            reg_mask[k] = 1
        hms.append(hm)
        inds.append(ind)
        whs.append(wh)
        regs.append(reg)
        masks.append(reg_mask)
    return np.stack(hms), np.stack(inds), np.stack(whs), np.stack(regs), np.stack(masks)


# ---------------------------------------------------------------------------------------------- timing
def median_ms(fn, repeats: int, number: int) -> float:
    fn()
    return 1e3 * statistics.median(timeit.repeat(fn, number=number, repeat=repeats)) / number


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--objects", type=int, default=16, help="at most this many objects per image (padded N)")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--input-size", type=int, nargs=2, default=[512, 512], metavar=("W", "H"))
    p.add_argument("--config", default="configs/centernet-fpn_resnet18_synthetic-det_128x128.yaml",
                   help="detector for (b); its data.input_size is used there")
    p.add_argument("--override", nargs="*", default=[], help="dotted config overrides for (b), e.g. "
                   "model.head=multi_level")
    p.add_argument("--infer-batch", type=int, default=16)
    p.add_argument("--infer-seconds", type=float, default=8.0, help="time budget per inference measurement")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--number", type=int, default=3)
    return p


def bench_targets(args) -> None:
    w, h = args.input_size
    codec = CenterNetCodec((w, h), args.classes)
    boxes_np, labels_np, mask_np = make_boxes(args.batch, args.objects, w, h, args.classes)
    boxes, labels, mask = torch.from_numpy(boxes_np), torch.from_numpy(labels_np), torch.from_numpy(mask_np)
    hw, hh = codec.heatmap_size
    print(f"(a) targets: batch {args.batch}, up to {args.objects} objects ({int(mask_np.sum())} in all), "
          f"{args.classes} classes, input {w}x{h} -> maps {hw}x{hh}")
    base = median_ms(lambda: centernet_style_targets(boxes_np, labels_np, mask_np, args.classes, hw, hh,
                                                     codec.stride), args.repeats, args.number)
    print(f"  {'CenterNet-style per-sample numpy loop':<40s} {base:9.2f} ms")
    default = torch.get_num_threads()
    for threads in sorted({default, 1}, reverse=True):
        torch.set_num_threads(threads)
        ours = median_ms(lambda: codec.encode(boxes, labels, mask), args.repeats, args.number)
        print(f"  {f'CenterNetCodec.encode ({threads} threads)':<40s} {ours:9.2f} ms   speed-up x{base / ours:.1f}")
    torch.set_num_threads(default)
    t = codec.encode(boxes, labels, mask)
    ref = centernet_style_targets(boxes_np, labels_np, mask_np, args.classes, hw, hh, codec.stride)
    m = ref[4] > 0
    diff = np.abs(t.heatmap.numpy() - ref[0]).max()
    same = (np.array_equal(t.mask.numpy(), ref[4]) and np.array_equal(t.index.numpy()[m], ref[1][m])
            and np.allclose(t.size.numpy(), ref[2], atol=1e-5) and np.allclose(t.offset.numpy(), ref[3], atol=1e-5))
    print(f"  targets agree: heatmaps max |diff| {diff:.2e}; index/size/offset/mask equal: {same}\n")
    bench_multilevel_targets(args, boxes_np, labels_np, mask_np)


def multilevel_reference(boxes, labels, mask, codec: MultiLevelCenterNetCodec):
    """Per object: its level from max(w, h) against the bounds; then the per-sample loop on each level."""
    side = np.maximum(boxes[..., 2] - boxes[..., 0] + 1, boxes[..., 3] - boxes[..., 1] + 1)
    level = np.zeros(mask.shape, np.int64)
    for bound in codec.size_bounds:
        level += side >= bound
    return [centernet_style_targets(boxes, labels, mask & (level == i), codec.num_classes, *c.heatmap_size,
                                    c.stride) for i, c in enumerate(codec.levels)]


def bench_multilevel_targets(args, boxes_np, labels_np, mask_np) -> None:
    w, h = args.input_size
    codec = MultiLevelCenterNetCodec((w, h), args.classes, (4, 8, 16, 32))
    boxes, labels, mask = torch.from_numpy(boxes_np), torch.from_numpy(labels_np), torch.from_numpy(mask_np)
    print(f"(a') multi-level targets: strides {codec.strides}, size bounds {codec.size_bounds} px; objects per "
          f"level {np.bincount(codec.assign(boxes)[mask].numpy(), minlength=4).tolist()}")
    base = median_ms(lambda: multilevel_reference(boxes_np, labels_np, mask_np, codec), args.repeats, args.number)
    print(f"  {'per-sample numpy loop, per level':<40s} {base:9.2f} ms")
    default = torch.get_num_threads()
    for threads in sorted({default, 1}, reverse=True):
        torch.set_num_threads(threads)
        ours = median_ms(lambda: codec.encode(boxes, labels, mask), args.repeats, args.number)
        label = f"MultiLevelCenterNetCodec.encode ({threads} thr)"
        print(f"  {label:<40s} {ours:9.2f} ms   speed-up x{base / ours:.1f}")
    torch.set_num_threads(default)
    same = True
    for t, ref in zip(codec.encode(boxes, labels, mask), multilevel_reference(boxes_np, labels_np, mask_np, codec)):
        m = ref[4] > 0
        same &= (np.abs(t.heatmap.numpy() - ref[0]).max() < 1e-6 and np.array_equal(t.mask.numpy(), ref[4])
                 and np.array_equal(t.index.numpy()[m], ref[1][m]) and np.allclose(t.size.numpy(), ref[2], atol=1e-5))
    print(f"  targets agree on every level: {same}\n")


@torch.no_grad()
def bench_inference(args) -> None:
    from engine.inference.predictors import DetectionPredictor
    from engine.tasks import detection as det_task
    from engine.tasks.registry import load_config

    cfg = load_config(args.config, args.override)
    meta = det_task.DetectionMeta([f"c{i}" for i in range(args.classes)], list(range(1, args.classes + 1)))
    model = det_task.build_model(cfg, meta.num_classes, pretrained=False).eval()
    task = det_task.build_task(cfg, meta, progress=False)
    w, h = cfg.data.input_size
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (int(h * 1.2), int(w * 1.1), 3), dtype=np.uint8) for _ in range(args.infer_batch)]
    n_params = sum(p.numel() for p in model.parameters())
    head = ("CenterNet head" if cfg.model.head == "single"
            else f"{'ltrb' if cfg.model.head == 'ltrb' else 'multi-level CenterNet'} head {cfg.model.head_strides}")
    print(f"(b) detector inference: {cfg.model.backbone} -> FPN {cfg.model.fpn_channels} -> {head}, "
          f"{n_params / 1e6:.1f} M parameters, input {w}x{h}, {torch.get_num_threads()} threads; letterbox + "
          f"forward + decode (top-{cfg.eval.topk}) + NMS")
    for batch in (1, args.infer_batch):
        predictor = DetectionPredictor(model, task, (w, h), batch_size=batch)
        predictor.predict_many(images[:batch])                     # warm-up
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.infer_seconds:
            predictor.predict_many(images[:batch])
            done += batch
        rate = done / (time.perf_counter() - start)
        zeros = torch.zeros(batch, 3, h, w, dtype=torch.uint8)
        fwd = median_ms(lambda z=zeros: model(z), 3, 1)
        print(f"  batch {batch:>3}: {rate:7.1f} images/s end to end; forward alone {batch / fwd * 1e3:7.1f} images/s")


def main(argv: list[str] | None = None):
    args = get_args_parser().parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, numpy {np.__version__}; "
          f"median of {args.repeats} repeats of {args.number} calls\n")
    bench_targets(args)
    bench_inference(args)


if __name__ == "__main__":
    main()
