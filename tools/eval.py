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

from tqdm import tqdm

from datasets.coco_common import resolve_image_path
from datasets.image_io import read_image_rgb
from engine.checkpoint import load_checkpoint, load_model_state
from engine.coco_eval import coco_eval
from engine.config import config_from_dict, load_config
from engine.distributed import resolve_device
from engine.face_metrics import build_face_report, evaluate_detected, write_face_outputs
from engine.inference import DetectionPredictor, TopDownPredictor
from engine.tasks import detection as det_task
from engine.tasks import keypoints as kp
from engine.two_stage import (
    DetectionFileBoxes,
    DetectorBoxes,
    TwoStagePipeline,
    check_box_source_flags,
    parse_categories,
    select_categories,
)
from tools._common import add_debug_flag, run_cli, setup_logging

log = logging.getLogger("tools.eval")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. eval.flip_test=false")
    p.add_argument("--output-dir", help="where to write results and metrics (default: next to the checkpoint)")
    p.add_argument("--device", help="auto | cpu | cuda (default: train.device from the config)")
    p.add_argument("--compare-flip", action="store_true", help="also evaluate without flip testing and report the gain")
    p.add_argument("--boxes", help="keypoints: evaluate on the boxes of this COCO detection-results file instead of "
                                   "the ground-truth boxes")
    p.add_argument("--det-checkpoint", help="keypoints: evaluate on the boxes of this detector instead of the "
                                            "ground-truth boxes")
    p.add_argument("--det-category",
                   help="categories whose boxes to use, comma-separated names or category ids. With "
                        "--det-checkpoint: the detector's classes (default: all). With --boxes: the file's "
                        "category_id values, names through the validation json's categories (default: the "
                        "keypoint model's category if the file has it, else all)")
    p.add_argument("--det-score-threshold", type=float, default=None,
                   help="--det-checkpoint only: keep detector boxes at or above this score (default 0: AP wants "
                        "every box; tools.infer defaults to 0.3)")
    p.add_argument("--box-score-threshold", type=float, default=None,
                   help="--boxes only: ignore the file's detections below this score (default 0: all, as COCO's "
                        "protocol)")
    p.add_argument("--oks-nms-threshold", type=float, default=0.9, help="OKS-NMS threshold with detected boxes")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = add_debug_flag(get_args_parser()).parse_args(argv)
    setup_logging()
    check_box_source_flags(args, "tools.eval")
    cfg = load_config(args.config, args.overrides)
    device = resolve_device(args.device or cfg.train.device)
    out_dir = args.output_dir or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "eval")
    os.makedirs(out_dir, exist_ok=True)
    if cfg.task == "detection":
        if args.boxes or args.det_checkpoint:
            raise SystemExit("tools.eval: --boxes/--det-checkpoint are for keypoint configs; this is a detector")
        return evaluate_detector(args, cfg, device, out_dir)

    val_data, meta = kp.load_split_and_meta(cfg, cfg.data.val)
    state = load_checkpoint(args.checkpoint, map_location=device)
    model = kp.build_model(cfg, len(meta.keypoint_names), pretrained=False)
    load_model_state(model, state["model"], source=args.checkpoint)
    model.to(device).eval()
    val_set = kp.make_topdown_dataset(cfg, val_data, meta, train=False)
    loader = kp.make_loader(val_set, cfg.data.val_batch_size, False, cfg.train.seed, cfg.train.num_workers)
    gt = kp.coco_subset(cfg.data.val.ann_file, val_data.image_ids, meta.category_id)
    task = kp.KeypointTask(kp.build_codec(cfg), meta, flip_test=cfg.eval.flip_test, val_gt=gt,
                           rescore_threshold=cfg.eval.rescore_threshold, pck_thresholds=cfg.eval.pck_thresholds,
                           progress=not args.no_progress,
                           face=build_face_report(cfg.eval.face, len(meta.keypoint_names), meta.nme_pair))

    if args.boxes or args.det_checkpoint:
        return evaluate_on_detections(args, cfg, device, out_dir, model, task, val_data, gt)
    log.info("evaluating %s on %s (%d instances), top-down on ground-truth boxes, flip test %s",
             args.checkpoint, cfg.data.val.ann_file, len(val_set), "on" if cfg.eval.flip_test else "off")
    metrics, results = task.evaluate(model, loader)
    report = {"checkpoint": args.checkpoint, "ann_file": cfg.data.val.ann_file, "boxes": "ground truth",
              "flip_test": cfg.eval.flip_test, "refine": cfg.eval.refine, "instances": len(val_set),
              "metrics": metrics}
    if args.compare_flip:
        face_nme = task.face and task.face.last_face_nme    # the CED is drawn for the configured flip setting
        other, _ = task.evaluate(model, loader, flip_test=not cfg.eval.flip_test)
        with_flip, without = (metrics, other) if cfg.eval.flip_test else (other, metrics)
        report["without_flip"] = without
        report["with_flip"] = with_flip
        report["flip_gain"] = {k: with_flip[k] - without[k] for k in with_flip}
        if task.face:
            task.face.last_face_nme = face_nme
    write_face_outputs(task.face, out_dir, report)
    kp.write_results(os.path.join(out_dir, "keypoint_results.json"), results)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(format_metrics(report))
    return report


def evaluate_on_detections(args, cfg, device, out_dir: str, model, task, val_data, gt: dict) -> dict:
    """Keypoint AP on detected boxes: the two-stage pipeline over every validation image."""
    if args.det_checkpoint:
        dstate = load_checkpoint(args.det_checkpoint, map_location=device)
        dcfg = config_from_dict(dstate["config"])
        if dcfg.task != "detection":
            raise ValueError(f"--det-checkpoint {args.det_checkpoint} is a {dcfg.task!r} checkpoint, not a detector")
        dmodel, dmeta = det_task.load_detector(dstate, dcfg, device)
        cats = select_categories(dmeta.class_names, dmeta.category_ids, args.det_category)
        predictor = DetectionPredictor(dmodel, det_task.build_task(dcfg, dmeta, progress=False), dcfg.data.input_size)
        source = DetectorBoxes(predictor, cats, args.det_score_threshold or 0.0, args.det_checkpoint)
    else:
        cats = gt.get("categories", [])
        if args.det_category:                   # names of every category of the validation json
            with open(cfg.data.val.ann_file) as f:
                cats = json.load(f).get("categories") or cats
        names = {int(c["id"]): str(c["name"]) for c in cats if isinstance(c, dict) and "id" in c and "name" in c}
        source = DetectionFileBoxes(args.boxes, args.box_score_threshold or 0.0,
                                    parse_categories(args.det_category, names),
                                    default_category_id=task.meta.category_id, category_names=names)
        source.check_image_ids(val_data.image_ids, what=f"image of the validation split ({cfg.data.val.ann_file})")
    pipeline = TwoStagePipeline(TopDownPredictor(model, task, cfg.data.input_size, cfg.data.bbox_padding),
                                task.meta.oks_sigmas, args.oks_nms_threshold)
    log.info("evaluating %s on %s (%d images), top-down on DETECTED boxes: %s; flip test %s", args.checkpoint,
             cfg.data.val.ann_file, len(val_data.image_ids), source.description,
             "on" if cfg.eval.flip_test else "off")
    records, n_boxes, unreadable, start = [], 0, [], time.perf_counter()
    for image_id in tqdm(val_data.image_ids, desc="two-stage", disable=args.no_progress):
        path = resolve_image_path(cfg.data.val.image_root, val_data.images[image_id]["file_name"],
                                  cfg.data.val.ann_file)
        image = read_image_rgb(path)
        if image is None:
            unreadable.append(path)
            continue
        boxes, scores = source.boxes_for(image_id, image)
        n_boxes += len(boxes)
        records.extend(pipeline.run(image, image_id, boxes, scores))
    seconds, box_stats = time.perf_counter() - start, source.log_summary()
    if unreadable:
        log.warning("%d validation images could not be read and have no predictions, e.g. %s", len(unreadable),
                    unreadable[:3])
    results = task.to_coco_results(records)
    metrics = coco_eval(gt, results, "keypoints", sigmas=task.meta.oks_sigmas)
    metrics.update(evaluate_detected(task.face, records, val_data.instances, val_data.image_ids, seconds))
    report = {"checkpoint": args.checkpoint, "ann_file": cfg.data.val.ann_file, "boxes": source.description,
              "boxes_used": n_boxes, "box_stats": box_stats, "instances": len(results), "flip_test": cfg.eval.flip_test,
              "refine": cfg.eval.refine, "oks_nms_threshold": args.oks_nms_threshold, "metrics": metrics}
    write_face_outputs(task.face, out_dir, report)
    kp.write_results(os.path.join(out_dir, "keypoint_results.json"), results)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(format_metrics(report))
    return report


def evaluate_detector(args, cfg, device, out_dir: str) -> dict:
    """COCO bbox AP/AR of a detection checkpoint on the config's validation split."""
    det_task.prepare_data(cfg)
    val_data = det_task.load_split(cfg, cfg.data.val)
    state = load_checkpoint(args.checkpoint, map_location=device)
    model, meta = det_task.load_detector(state, cfg, device)
    if meta.category_ids != val_data.category_ids:
        raise ValueError(f"{args.checkpoint} detects categories {meta.category_ids} ({meta.class_names}) but "
                         f"{cfg.data.val.ann_file} gives {val_data.category_ids}; set data.category_ids")
    gt = det_task.coco_detection_subset(cfg.data.val.ann_file, val_data.image_ids, meta.category_ids)
    task = det_task.build_task(cfg, meta, gt, progress=not args.no_progress)
    loader = det_task.make_loader(det_task.make_dataset(cfg, val_data, train=False), cfg.data.val_batch_size,
                                  False, cfg.train.seed, cfg.train.num_workers, cfg.data.max_objects)
    log.info("evaluating detector %s on %s (%d images, %d objects)", args.checkpoint, cfg.data.val.ann_file,
             len(val_data.images), val_data.num_objects)
    metrics, results = task.evaluate(model, loader)
    report = {"checkpoint": args.checkpoint, "ann_file": cfg.data.val.ann_file, "task": "detection",
              "images": len(val_data.images), "objects": val_data.num_objects, "classes": meta.class_names,
              "nms": cfg.eval.nms, "score_threshold": cfg.eval.score_threshold, "metrics": metrics}
    kp.write_results(os.path.join(out_dir, "detection_results.json"), results)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(f"detection: {report['images']} images, {report['objects']} objects, classes {meta.class_names}")
    print("\n".join(f"  {k:<9} {v:.4f}" for k, v in metrics.items()))
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
    run_cli(main)
