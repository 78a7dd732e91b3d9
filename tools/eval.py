"""Evaluate a checkpoint on its config's validation split.

    python -m tools.eval --config configs/X.yaml --checkpoint runs/X/best.pt [--output-dir D] [--compare-flip]
    python -m tools.eval --config configs/X.yaml --checkpoint runs/X/best.pt --boxes detections.json
    python -m tools.eval --config configs/X.yaml --checkpoint runs/X/best.pt --det-checkpoint runs/D/best.pt
    python -m tools.eval --config configs/X.yaml --checkpoint runs/X/best.pt --boxes dets.json --first-pass small.onnx
    python -m tools.eval --config configs/centernet-X.yaml --checkpoint runs/D/best.pt      # a detector
    python -m tools.eval --config configs/cls_X.yaml --checkpoint runs/C/best.pt            # a classifier
    python -m tools.eval --config configs/X.yaml --checkpoint runs/X/last.pt --weights ema  # its EMA weights

Every task is scored by its own evaluator (engine/tasks/<task>/, the contract in
engine/evaluation/evaluator.py), the same object that scores training-time validation; this tool only
chooses what the model is run on and writes what the evaluator returns.

Keypoint models are evaluated top-down, and which boxes they were given decides the number, so the report
says which it used (``boxes`` in the printout and in metrics.json):

* ground-truth boxes (the default): one crop per annotated instance; COCO keypoint AP/AR through pycocotools
  (OKS with the config's per-keypoint sigmas), PCK@alpha (normalised by the box's longer side) and NME
  (normalised by data.nme_normalize's keypoint pair, else the box diagonal);
* detected boxes (``--boxes`` a COCO detection-results file, or ``--det-checkpoint`` a detector): the
  two-stage pipeline of tools.infer on every validation image (crop, keypoints, rescoring, OKS-NMS); COCO
  keypoint AP/AR, and with ``eval.face`` the face report on the faces matched to a box (IoU >= 0.3; a face
  without one counts as a failure). PCK needs a ground-truth instance per prediction. ``--det-category`` selects
  the categories of either source (detector: all by default; file: the keypoint model's category when the
  file has it, else all); ``--det-score-threshold`` is the detector's lowest score and
  ``--box-score-threshold`` the file's, both 0 by default (AP wants every box; tools.infer's detector default
  is 0.3).

A detection config is evaluated with COCO bbox AP/AR (AP, AP50, AP75, APs/m/l, AR1/10/100, ARs/m/l), a
classification config with top-k accuracy, mean class recall and loss. Writes the COCO results JSON (keypoints,
detection) and the metrics JSON. With ``eval.face`` (landmark sets, e.g. the 300-W config) the metrics add the
face-alignment report (engine/evaluation/face_metrics.py: ``NME``, ``FR@t``, ``AUC@t``, ``NME/<region>``,
``ms/face``) and ``ced.png`` is written beside them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import torch

from datasets.coco_common import resolve_image_path
from engine.checkpoint import (
    WEIGHT_CHOICES,
    check_checkpoint_task,
    checkpoint_weights,
    load_checkpoint,
    load_model_state,
)
from engine.distributed import resolve_device
from engine.evaluation.evaluator import WritesOutputs, evaluate_model
from engine.inference.box_sources import DetectionFileBoxes
from engine.inference.images import run_on_images
from engine.inference.pipeline import keypoint_pipeline
from engine.tasks.registry import build_evaluation, get_task, load_config
from models.errors import InputError
from models.utils import write_json
from tools._box_flags import add_box_source_flags, box_source_from_args, check_box_source_flags
from tools._common import add_debug_flag, run_cli, setup_logging

log = logging.getLogger("tools.eval")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. eval.flip_test=false")
    p.add_argument("--output-dir", help="where to write results and metrics (default: next to the checkpoint)")
    p.add_argument("--device", help="auto | cpu | cuda (default: train.device from the config)")
    p.add_argument("--weights", choices=WEIGHT_CHOICES, default="model",
                   help="the checkpoint's trained weights (default) or their EMA, kept when train.ema_decay was set")
    p.add_argument("--compare-flip", action="store_true",
                   help="keypoints: also evaluate without flip testing and report the gain")
    add_box_source_flags(
        p, boxes_help="keypoints: evaluate on the boxes of this COCO detection-results file instead of the "
                      "ground-truth boxes",
        det_checkpoint_help="keypoints: evaluate on the boxes of this detector instead of the ground-truth boxes",
        category_names_from="the validation json's categories",
        det_default="default 0: AP wants every box; tools.infer defaults to 0.3")
    p.add_argument("--oks-nms-threshold", type=float, default=0.9, help="OKS-NMS threshold with detected boxes")
    p.add_argument("--first-pass", metavar="MODEL",
                   help="keypoints on detected boxes: a cheaper keypoint model (checkpoint or .onnx, same keypoints) "
                        "makes the first prediction, and --checkpoint runs its eval.recrop_passes on that "
                        "prediction's tight boxes (a cascade)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = add_debug_flag(get_args_parser()).parse_intermixed_args(argv)
    setup_logging()
    check_box_source_flags(args, "tools.eval")
    cfg = load_config(args.config, args.overrides)
    entry = get_task(cfg.task)
    detected = bool(args.boxes or args.det_checkpoint)
    if detected and not entry.top_down:
        raise InputError(f"tools.eval: --boxes/--det-checkpoint give a top-down keypoint model its boxes; this "
                         f"config is a {cfg.task!r} model: leave them out")
    if args.first_pass and not detected:
        raise InputError(f"tools.eval: --first-pass {args.first_pass} places the re-crops of a model on detected "
                         f"boxes; add --boxes or --det-checkpoint (on ground-truth boxes there is nothing to place)")
    device = resolve_device(args.device or cfg.train.device)
    if cfg.train.num_threads:          # the same thread budget as the training it evaluates
        torch.set_num_threads(cfg.train.num_threads)
    out_dir = args.output_dir or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "eval")
    state = load_checkpoint(args.checkpoint, map_location=device)
    check_checkpoint_task(state, args.checkpoint, cfg.task, args.config)   # before reading data for the wrong task
    exp = build_evaluation(cfg, device, progress=not args.no_progress)
    if entry.check_checkpoint is not None:
        entry.check_checkpoint(state, exp, args.checkpoint)
    weights = checkpoint_weights(state, args.checkpoint, args.weights)
    load_model_state(exp.model, weights, source=f"{args.checkpoint} ({args.weights} weights)")
    exp.model.eval()
    if detected:
        report, evaluator = evaluate_on_detections(args, cfg, device, exp)
    else:
        report, evaluator = evaluate_on_loader(args, cfg, exp)
    os.makedirs(out_dir, exist_ok=True)
    if isinstance(evaluator, WritesOutputs):
        evaluator.write_outputs(out_dir, report)
    if evaluator.results or cfg.task in RESULTS_FILE:
        write_json(os.path.join(out_dir, RESULTS_FILE.get(cfg.task, f"{cfg.task}_results.json")), evaluator.results)
    write_json(os.path.join(out_dir, "metrics.json"), report, indent=2)
    print(format_metrics(report))
    return report


RESULTS_FILE = {"keypoints": "keypoint_results.json", "detection": "detection_results.json"}


def evaluate_on_loader(args, cfg, exp) -> tuple[dict, object]:
    """The task's evaluator on the validation loader (keypoints: one crop per annotated instance, on its
    ground-truth box); with ``--compare-flip`` also with flip testing the other way, and the gain."""
    ann_file = _val_ann_file(cfg)
    log.info("evaluating %s on %s (%d samples)%s", args.checkpoint, ann_file or "the validation split",
             len(exp.val_loader.dataset), f", flip test {'on' if exp.task.flip_test else 'off'}"
             if hasattr(exp.task, "flip_test") else "")
    metrics, evaluator = evaluate_model(exp.task, exp.model, exp.val_loader)
    report = {"checkpoint": args.checkpoint, "weights": args.weights, "ann_file": ann_file, **evaluator.describe(),
              "metrics": metrics}
    if args.compare_flip:
        if not hasattr(exp.task, "with_flip_test"):
            raise InputError(f"tools.eval: --compare-flip compares flip testing of keypoint models; this config is "
                             f"a {cfg.task!r} model")
        other, _ = evaluate_model(exp.task.with_flip_test(not exp.task.flip_test), exp.model, exp.val_loader)
        with_flip, without = (metrics, other) if exp.task.flip_test else (other, metrics)
        report.update(without_flip=without, with_flip=with_flip,
                      flip_gain={k: with_flip[k] - without[k] for k in with_flip})
    return report, evaluator


def evaluate_on_detections(args, cfg, device, exp) -> tuple[dict, object]:
    """A top-down keypoint model on detected boxes: the two-stage pipeline of tools.infer over every validation
    image, scored by the same evaluator with the boxes' description."""
    task, val_data = exp.task, exp.val_data
    cats = task.val_gt.get("categories", [])
    if args.boxes and args.det_category:                   # names of every category of the validation json
        with open(cfg.data.val.ann_file) as f:
            cats = json.load(f).get("categories") or cats
    names = {int(c["id"]): str(c["name"]) for c in cats if isinstance(c, dict) and "id" in c and "name" in c}
    source = box_source_from_args(args, device, det_default_threshold=0.0, default_category_id=task.meta.category_id,
                                  category_names=names)
    if isinstance(source, DetectionFileBoxes):
        source.check_image_ids(val_data.image_ids, what=f"image of the validation split ({cfg.data.val.ann_file})")
    pipeline = keypoint_pipeline(args.checkpoint, device, oks_nms_threshold=args.oks_nms_threshold, model=exp.model,
                                 cfg=cfg, meta=task.meta, first_pass=args.first_pass)
    log.info("evaluating %s on %s (%d images), top-down on DETECTED boxes: %s; flip test %s", args.checkpoint,
             cfg.data.val.ann_file, len(val_data.image_ids), source.description,
             "on" if cfg.eval.flip_test else "off")
    images = [(resolve_image_path(cfg.data.val.image_root, val_data.images[i]["file_name"], cfg.data.val.ann_file), i)
              for i in val_data.image_ids]
    evaluator = task.evaluator(boxes=source.description, instances=val_data.instances, image_ids=val_data.image_ids)
    start = time.perf_counter()
    run = run_on_images(images, source, pipeline, progress=not args.no_progress)
    evaluator.process(run.records, seconds=time.perf_counter() - start)
    metrics = evaluator.evaluate()
    report = {"checkpoint": args.checkpoint, "weights": args.weights, "ann_file": cfg.data.val.ann_file,
              **evaluator.describe(),
              "boxes_used": run.num_boxes, "box_stats": run.box_stats, "oks_nms_threshold": args.oks_nms_threshold,
              **({"first_pass": args.first_pass} if args.first_pass else {}), "metrics": metrics}
    return report, evaluator


def _val_ann_file(cfg) -> str | None:
    val = getattr(cfg.data, "val", None)
    return getattr(val, "ann_file", None)


def format_metrics(report: dict) -> str:
    """The report as the lines tools.eval prints: what was scored, then one metric per line."""
    described = {k: v for k, v in report.items() if k not in ("checkpoint", "ann_file", "metrics", "box_stats",
                                                               "without_flip", "with_flip", "flip_gain")}
    lines = ["; ".join(f"{k}: {v}" for k, v in described.items())]
    lines += [f"  {k:<9} {v:.4f}" for k, v in report["metrics"].items()]
    if "flip_gain" in report:
        lines.append("flip test gain (with - without): " +
                     ", ".join(f"{k} {report['flip_gain'][k]:+.4f}" for k in ("AP", "AR", "PCK@0.05", "NME")
                               if k in report["flip_gain"]))
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(main)
