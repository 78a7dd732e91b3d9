"""PyTorch eager against onnxruntime on the CPU, the same exported keypoint model, batch 1 and 16.

Builds the model of a config (untrained: speed does not depend on the weights), saves it as tools.train
would, exports it with tools.export (heatmaps out, normalisation inside the graph), and times the network
forward pass on uint8 crops in both runtimes with the same number of threads. Also checks that both give
the same heatmaps. Run from the repository root:

    .venv/bin/python bench/bench_onnx.py [--config configs/hg-fpn_resnet18_synthetic-kpt_64x96.yaml] [--threads 1]

Times are medians of ``--repeats`` timeit repeats; ratios are PyTorch / onnxruntime (> 1: onnxruntime faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import timeit

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from datasets.skeletons import COCO_FLIP_INDEX, COCO_KEYPOINT_NAMES, COCO_SIGMAS, COCO_SKELETON  # noqa: E402
from engine.checkpoint import save_checkpoint  # noqa: E402
from engine.config.loading import config_to_dict  # noqa: E402
from engine.export.exporter import export_onnx  # noqa: E402
from engine.export.runtime import OnnxModule  # noqa: E402
from engine.tasks import keypoints as kp  # noqa: E402
from engine.tasks.registry import load_config  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
    number = 1
    while timeit.timeit(fn, number=number) < 0.2:
        number *= 2
    return statistics.median(timeit.repeat(fn, number=number, repeat=repeats)) / number


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/hg-fpn_resnet18_synthetic-kpt_64x96.yaml")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for both runtimes")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [])
    torch.manual_seed(0)
    model = kp.build_model(cfg, 17, pretrained=False).eval()
    meta = kp.KeypointMeta(COCO_KEYPOINT_NAMES, [(a - 1, b - 1) for a, b in COCO_SKELETON], COCO_FLIP_INDEX,
                           COCO_SIGMAS)
    w, h = cfg.data.input_size
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "model.pt")
        save_checkpoint({"model": model.state_dict(), "config": config_to_dict(cfg), "meta": meta.to_dict()}, ckpt)
        export_onnx(ckpt, os.path.join(tmp, "model.onnx"), verify=False)
        ort_model = OnnxModule(os.path.join(tmp, "model.onnx"), threads=args.threads)
        print(f"{args.config}: input {w}x{h}, {cfg.model.backbone}, {args.threads} thread(s), "
              f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}")
        print(f"{'batch':>5} {'pytorch ms':>11} {'onnxruntime ms':>15} {'ratio':>7} {'max |diff|':>11}")
        for batch in (1, 16):
            x = torch.randint(0, 256, (batch, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
            xn = x.numpy()
            with torch.no_grad():
                ref = model(x)[-1].numpy()
                t_pt = median_seconds(lambda x=x: model(x), args.repeats)
            diff = float(np.abs(ort_model.run(xn)[0] - ref).max())
            t_ort = median_seconds(lambda xn=xn: ort_model.run(xn), args.repeats)
            print(f"{batch:>5} {1e3 * t_pt:>11.2f} {1e3 * t_ort:>15.2f} {t_pt / t_ort:>6.2f}x {diff:>11.2e}")


if __name__ == "__main__":
    main()
