"""Evaluate a checkpoint on its config's validation split.

    python -m tools.eval --config configs/X.yaml --checkpoint runs/X/best.pt [--output-dir D] [--compare-flip]
    python -m tools.eval --config configs/X.yaml --checkpoint runs/X/best.pt --boxes detections.json
    python -m tools.eval --config configs/X.yaml --checkpoint runs/X/best.pt --det-checkpoint runs/D/best.pt
    python -m tools.eval --config configs/centernet-X.yaml --checkpoint runs/D/best.pt      # a detector

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

A detection config is evaluated with COCO bbox AP/AR (AP, AP50, AP75, APs/m/l, AR1/10/100, ARs/m/l).
Writes the COCO results JSON and the metrics JSON. With ``eval.face`` (landmark sets, e.g. the 300-W config)
the metrics add the face-alignment report (engine/face_metrics.py: ``NME``, ``FR@t``, ``AUC@t``,
``NME/<region>``, ``ms/face``) and ``ced.png`` is written beside them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

from datasets.coco_common import resolve_image_path
from engine.checkpoint import check_checkpoint_task, load_checkpoint, load_model_state
from engine.coco_eval import coco_eval
from engine.config import load_config
from engine.distributed import resolve_device
from engine.face_metrics import evaluate_detected, write_face_outputs
from engine.tasks.detection import check_checkpoint_classes
from engine.tasks.registry import build_evaluation
from engine.two_stage import detection_file_boxes, detector_boxes, keypoint_pipeline, run_on_images
from models.errors import InputError
from models.utils import write_json
from tools._common import add_box_source_flags, add_debug_flag, check_box_source_flags, run_cli, setup_logging

log = logging.getLogger("tools.eval")
RESULTS_FILE = {"keypoints": "keypoint_results.json", "detection": "detection_results.json"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. eval.flip_test=false")
    p.add_argument("--output-dir", help="where to write results and metrics (default: next to the checkpoint)")
    p.add_argument("--device", help="auto | cpu | cuda (default: train.device from the config)")
    p.add_argument("--compare-flip", action="store_true", help="also evaluate without flip testing and report the gain")
    add_box_source_flags(
        p, boxes_help="keypoints: evaluate on the boxes of this COCO detection-results file instead of the "
                      "ground-truth boxes",
        det_checkpoint_help="keypoints: evaluate on the boxes of this detector instead of the ground-truth boxes",
        category_names_from="the validation json's categories",
        det_default="default 0: AP wants every box; tools.infer defaults to 0.3")
    p.add_argument("--oks-nms-threshold", type=float, default=0.9, help="OKS-NMS threshold with detected boxes")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = add_debug_flag(get_args_parser()).parse_args(argv)
    setup_logging()
    check_box_source_flags(args, "tools.eval")
    cfg = load_config(args.config, args.overrides)
    if cfg.task == "detection" and (args.boxes or args.det_checkpoint):
        raise InputError("tools.eval: --boxes/--det-checkpoint give a keypoint model its boxes; this config is a "
                         "detector: leave them out")
    device = resolve_device(args.device or cfg.train.device)
    out_dir = args.output_dir or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "eval")
    state = load_checkpoint(args.checkpoint, map_location=device)
    check_checkpoint_task(state, args.checkpoint, cfg.task, args.config)   # before reading data for the wrong task
    exp = build_evaluation(cfg, device, progress=not args.no_progress)
    if cfg.task == "detection":
        check_checkpoint_classes(state, exp.meta, args.checkpoint, cfg.data.val.ann_file)
    load_model_state(exp.model, state["model"], source=args.checkpoint)
    exp.model.eval()
    if cfg.task == "detection":
        report, results = evaluate_detector(args, cfg, exp)
    elif args.boxes or args.det_checkpoint:
        report, results = evaluate_on_detections(args, cfg, device, exp)
    else:
        report, results = evaluate_on_ground_truth(args, cfg, exp)
    os.makedirs(out_dir, exist_ok=True)
    if cfg.task == "keypoints":
        write_face_outputs(exp.task.face, out_dir, report)
    write_json(os.path.join(out_dir, RESULTS_FILE[cfg.task]), results)
    write_json(os.path.join(out_dir, "metrics.json"), report, indent=2)
    print(format_metrics(report))
    return report


def evaluate_on_ground_truth(args, cfg, exp) -> tuple[dict, list[dict]]:
    """Keypoint AP/AR, PCK and NME with one crop per annotated instance (optionally with and without flip)."""
    task, loader = exp.task, exp.val_loader
    log.info("evaluating %s on %s (%d instances), top-down on ground-truth boxes, flip test %s",
             args.checkpoint, cfg.data.val.ann_file, len(loader.dataset), "on" if task.flip_test else "off")
    metrics, results = task.evaluate(exp.model, loader)
    report = {"checkpoint": args.checkpoint, "ann_file": cfg.data.val.ann_file, "boxes": "ground truth",
              "flip_test": cfg.eval.flip_test, "refine": cfg.eval.refine, "instances": len(loader.dataset),
              "metrics": metrics}
    if args.compare_flip:
        face_nme = task.face and task.face.last_face_nme    # the CED is drawn for the configured flip setting
        other, _ = task.evaluate(exp.model, loader, flip_test=not cfg.eval.flip_test)
        with_flip, without = (metrics, other) if cfg.eval.flip_test else (other, metrics)
        report.update(without_flip=without, with_flip=with_flip,
                      flip_gain={k: with_flip[k] - without[k] for k in with_flip})
        if task.face:
            task.face.last_face_nme = face_nme
    return report, results


def evaluate_on_detections(args, cfg, device, exp) -> tuple[dict, list[dict]]:
    """Keypoint AP on detected boxes: the two-stage pipeline over every validation image."""
    task, val_data = exp.task, exp.val_data
    if args.det_checkpoint:
        source = detector_boxes(args.det_checkpoint, device, args.det_category, args.det_score_threshold or 0.0)
    else:
        cats = task.val_gt.get("categories", [])
        if args.det_category:                   # names of every category of the validation json
            with open(cfg.data.val.ann_file) as f:
                cats = json.load(f).get("categories") or cats
        names = {int(c["id"]): str(c["name"]) for c in cats if isinstance(c, dict) and "id" in c and "name" in c}
        source = detection_file_boxes(args.boxes, args.box_score_threshold or 0.0, args.det_category, names,
                                      task.meta.category_id)
        source.check_image_ids(val_data.image_ids, what=f"image of the validation split ({cfg.data.val.ann_file})")
    pipeline = keypoint_pipeline(args.checkpoint, device, oks_nms_threshold=args.oks_nms_threshold, model=exp.model,
                                 cfg=cfg, meta=task.meta)
    log.info("evaluating %s on %s (%d images), top-down on DETECTED boxes: %s; flip test %s", args.checkpoint,
             cfg.data.val.ann_file, len(val_data.image_ids), source.description,
             "on" if cfg.eval.flip_test else "off")
    images = [(resolve_image_path(cfg.data.val.image_root, val_data.images[i]["file_name"], cfg.data.val.ann_file), i)
              for i in val_data.image_ids]
    start = time.perf_counter()
    run = run_on_images(images, source, pipeline, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    results = task.to_coco_results(run.records)
    metrics = coco_eval(task.val_gt, results, "keypoints", sigmas=task.meta.oks_sigmas)
    metrics.update(evaluate_detected(task.face, run.records, val_data.instances, val_data.image_ids, seconds))
    report = {"checkpoint": args.checkpoint, "ann_file": cfg.data.val.ann_file, "boxes": source.description,
              "boxes_used": run.num_boxes, "box_stats": run.box_stats, "instances": len(results),
              "flip_test": cfg.eval.flip_test, "refine": cfg.eval.refine, "oks_nms_threshold": args.oks_nms_threshold,
              "metrics": metrics}
    return report, results


def evaluate_detector(args, cfg, exp) -> tuple[dict, list[dict]]:
    """COCO bbox AP/AR of a detection checkpoint on the config's validation split."""
    val_data = exp.val_data
    log.info("evaluating detector %s on %s (%d images, %d objects)", args.checkpoint, cfg.data.val.ann_file,
             len(val_data.images), val_data.num_objects)
    metrics, results = exp.task.evaluate(exp.model, exp.val_loader)
    report = {"checkpoint": args.checkpoint, "ann_file": cfg.data.val.ann_file, "task": "detection",
              "images": len(val_data.images), "objects": val_data.num_objects, "classes": exp.meta.class_names,
              "nms": cfg.eval.nms, "score_threshold": cfg.eval.score_threshold, "metrics": metrics}
    return report, results


def format_metrics(report: dict) -> str:
    m = report["metrics"]
    if report.get("task") == "detection":
        return "\n".join([f"detection: {report['images']} images, {report['objects']} objects, classes "
                          f"{report['classes']}"] + [f"  {k:<9} {v:.4f}" for k, v in m.items()])
    lines = [f"boxes: {report['boxes']}; flip test: {'on' if report['flip_test'] else 'off'}; "
             f"refine: {report['refine']}; {report['instances']} instances"]
    lines += [f"  {k:<9} {v:.4f}" for k, v in m.items()]
    if "flip_gain" in report:
        lines.append("flip test gain (with - without): " +
                     ", ".join(f"{k} {report['flip_gain'][k]:+.4f}" for k in ("AP", "AR", "PCK@0.05", "NME")
                               if k in report["flip_gain"]))
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(main)
