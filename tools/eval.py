"""Evaluate a keypoint checkpoint on the config's validation split (top-down on ground-truth boxes).

    python -m tools.eval --config configs/X.yaml --checkpoint runs/X/best.pt [--output-dir D] [--compare-flip]

Reports COCO keypoint AP/AR through pycocotools (OKS with the config's per-keypoint sigmas), PCK@alpha
(normalised by the box's longer side) and NME (normalised by data.nme_normalize's keypoint pair, else the
box diagonal), and writes the COCO results JSON and the metrics JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os

from engine.checkpoint import load_checkpoint, load_model_state
from engine.config import load_config
from engine.tasks import keypoints as kp
from tools._common import resolve_device, setup_logging

log = logging.getLogger("tools.eval")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. eval.flip_test=false")
    p.add_argument("--output-dir", help="where to write results and metrics (default: next to the checkpoint)")
    p.add_argument("--device", help="auto | cpu | cuda (default: train.device from the config)")
    p.add_argument("--compare-flip", action="store_true", help="also evaluate without flip testing and report the gain")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    setup_logging()
    cfg = load_config(args.config, args.overrides)
    device = resolve_device(args.device or cfg.train.device)
    out_dir = args.output_dir or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "eval")
    os.makedirs(out_dir, exist_ok=True)

    kp.prepare_data(cfg)
    val_data = kp.load_split(cfg, cfg.data.val)
    meta = kp.resolve_meta(cfg, val_data)
    state = load_checkpoint(args.checkpoint, map_location=device)
    model = kp.build_model(cfg, len(meta.keypoint_names), pretrained=False)
    load_model_state(model, state["model"], source=args.checkpoint)
    model.to(device).eval()
    val_set = kp.make_topdown_dataset(cfg, val_data, meta, train=False)
    loader = kp.make_loader(val_set, cfg.data.val_batch_size, False, cfg.train.seed, cfg.train.num_workers)
    gt = kp.coco_subset(cfg.data.val.ann_file, val_data.image_ids, meta.category_id)
    task = kp.KeypointTask(kp.build_codec(cfg), meta, flip_test=cfg.eval.flip_test, val_gt=gt,
                           rescore_threshold=cfg.eval.rescore_threshold, pck_thresholds=cfg.eval.pck_thresholds,
                           progress=not args.no_progress)

    log.info("evaluating %s on %s (%d instances), top-down on ground-truth boxes, flip test %s",
             args.checkpoint, cfg.data.val.ann_file, len(val_set), "on" if cfg.eval.flip_test else "off")
    metrics, results = task.evaluate(model, loader)
    report = {"checkpoint": args.checkpoint, "ann_file": cfg.data.val.ann_file, "boxes": "ground truth",
              "flip_test": cfg.eval.flip_test, "refine": cfg.eval.refine, "instances": len(val_set),
              "metrics": metrics}
    if args.compare_flip:
        other, _ = task.evaluate(model, loader, flip_test=not cfg.eval.flip_test)
        with_flip, without = (metrics, other) if cfg.eval.flip_test else (other, metrics)
        report["without_flip"] = without
        report["with_flip"] = with_flip
        report["flip_gain"] = {k: with_flip[k] - without[k] for k in with_flip}
    kp.write_results(os.path.join(out_dir, "keypoint_results.json"), results)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(format_metrics(report))
    return report


def format_metrics(report: dict) -> str:
    m = report["metrics"]
    lines = [f"boxes: {report['boxes']}; flip test: {'on' if report['flip_test'] else 'off'}; "
             f"refine: {report['refine']}; {report['instances']} instances"]
    lines += [f"  {k:<9} {v:.4f}" for k, v in m.items()]
    if "flip_gain" in report:
        lines.append("flip test gain (with - without): " +
                     ", ".join(f"{k} {report['flip_gain'][k]:+.4f}" for k in ("AP", "AR", "PCK@0.05", "NME")
                               if k in report["flip_gain"]))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
