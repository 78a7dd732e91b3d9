"""Run a keypoint model, a detector, or both (two-stage) on images and draw the results.

    python -m tools.infer --checkpoint runs/X/best.pt --input photo.jpg
    python -m tools.infer --checkpoint runs/X/best.pt --input images/ --boxes detections.json \
        [--image-info annotations.json] [--output-dir out/]
    python -m tools.infer --det-checkpoint runs/D/best.pt --checkpoint runs/K/best.pt --input images/
    python -m tools.infer --det-checkpoint runs/D/best.pt --input images/          # detection only
    python -m tools.infer --checkpoint runs/X/best.pt --input clip.mp4 --track [--smooth]   # a video
    python -m tools.infer --backend onnxruntime --model model.onnx --input images/  # a tools.export model

Videos (files, folders that mix them with images, a camera index) go through engine.video_infer: the same
boxes and poses, batched over frames, with ids, optional smoothing, an annotated video, per-frame JSON and a
DeepLabCut-layout CSV (docs/inference.md).

Where the boxes come from (one of them, said in the log and the returned summary):

* ``--det-checkpoint``: a detector (tools.train with a ``task: detection`` config) finds the instances;
  ``--det-category`` picks which of its classes go to the keypoint model (all by default) and
  ``--det-score-threshold`` (0.3) its lowest score.
* ``--boxes``: a COCO detection-results file (``image_id``, ``bbox`` [x, y, w, h], ``score``), the standard
  top-down protocol. Image ids are matched to files through ``--image-info`` (a COCO json with ``images``),
  or else through numeric file names (``000000000785.jpg`` is id 785); ids that match no input are named, and
  an input whose id cannot be told is an error. ``--det-category`` picks the file's categories (default: the
  keypoint model's category when the file has it, else all) and ``--box-score-threshold`` (0) its lowest score.
  Boxes under one pixel (or not finite) are left out with a warning; boxes reaching beyond their image are
  clipped to it and boxes entirely outside it dropped, both counted in the log.
* neither: each image is one instance (its whole frame is the box).

Without ``--boxes``, an input whose id cannot be told (no ``--image-info`` entry, no numeric name) gets a
made-up id, above the largest known one, in ``keypoint_results.json``.

With a keypoint model, each box is cropped (padded to the model's aspect ratio), its keypoints estimated and
mapped back, each instance rescored (box score x mean keypoint confidence) and duplicates removed by OKS-NMS.
Writes the drawn images under ``vis/``, COCO keypoint results to ``keypoint_results.json`` and, with a
detector, COCO detection results to ``detection_results.json``.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import warnings

import numpy as np
from tqdm import tqdm

from datasets.image_io import read_image_rgb
from engine.distributed import resolve_device
from engine.inference import DetectionPredictor, TopDownPredictor, load_for_inference
from engine.onnx_runtime import apply_backend_flags
from engine.tasks import detection as det_task
from engine.tasks import keypoints as kp
from engine.two_stage import (
    DetectionFileBoxes,
    DetectorBoxes,
    TwoStagePipeline,
    WholeImageBoxes,
    check_box_source_flags,
    parse_categories,
    select_categories,
)
from engine.two_stage import load_detections as _load_detections
from engine.video import split_inputs
from engine.video_infer import add_video_arguments, infer_videos_from_args
from engine.visualize import draw_detections, draw_keypoints, save_rgb
from tools._common import add_debug_flag, run_cli, setup_logging

log = logging.getLogger("tools.infer")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a keypoint checkpoint written by tools.train")
    p.add_argument("--det-checkpoint", help="a detection checkpoint: detect the instances first (two-stage)")
    p.add_argument("--det-category",
                   help="categories to pass to the keypoint model, comma-separated names or category ids. With "
                        "--det-checkpoint: the detector's classes (default: all). With --boxes: the file's "
                        "category_id values, names through --image-info's categories (default: the keypoint "
                        "model's category if the file has it, else all)")
    p.add_argument("--det-score-threshold", type=float, default=None,
                   help="--det-checkpoint only: keep detector boxes at or above this score (default 0.3; "
                        "tools.eval defaults to 0, since AP wants every box)")
    p.add_argument("--input", required=True,
                   help="an image, a video, a folder (images and videos), a glob pattern (quote it) or a camera index")
    p.add_argument("--boxes", help="COCO detection results JSON; without it (and without --det-checkpoint) the "
                                   "whole image is one instance")
    p.add_argument("--image-info", help="COCO json whose 'images' map file names to the ids used in --boxes. With "
                                        "--boxes every input needs an id (from here or a numeric file name); "
                                        "without --boxes, inputs without one get made-up ids")
    p.add_argument("--box-score-threshold", type=float, default=None,
                   help="--boxes only: ignore the file's detections below this score (default 0)")
    p.add_argument("--output-dir", default="outputs/infer")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-images", type=int, help="process only the first N images (sorted by name)")
    p.add_argument("--no-flip", action="store_true", help="disable flip testing")
    p.add_argument("--draw-threshold", type=float, default=0.2, help="draw keypoints above this confidence")
    p.add_argument("--oks-nms-threshold", type=float, default=0.9,
                   help="drop a pose whose OKS with a higher-scored pose of the image exceeds this (default 0.9)")
    p.add_argument("--no-oks-nms", action="store_true", help="keep every pose (no OKS-NMS)")
    p.add_argument("--on-bad-image", choices=("skip", "error"), default="skip",
                   help="what to do with an unreadable image (default: warn and skip)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--backend", choices=("pytorch", "onnxruntime"), default="pytorch",
                   help="onnxruntime: run an exported model (--model, --det-model) without its checkpoint")
    p.add_argument("--model", help="--backend onnxruntime: a keypoint model written by tools.export")
    p.add_argument("--det-model", help="--backend onnxruntime: a detector written by tools.export")
    add_video_arguments(p)
    return p


def list_images(spec: str) -> list[str]:
    if os.path.isdir(spec):
        files = [os.path.join(spec, f) for f in os.listdir(spec) if f.lower().endswith(IMAGE_EXTENSIONS)]
    elif any(c in spec for c in "*?["):
        files = [f for f in glob.glob(spec, recursive=True) if f.lower().endswith(IMAGE_EXTENSIONS)]
    elif os.path.isfile(spec):
        files = [spec]
    else:
        raise FileNotFoundError(f"--input {spec!r} is neither an image, a folder nor a glob that matches files")
    if not files:
        raise FileNotFoundError(f"--input {spec!r} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
    return sorted(files)


def image_ids_for(files: list[str], image_info: str | None) -> list[int | None]:
    """Id of each file: from --image-info's file names, else from a numeric stem, else None."""
    if image_info:
        with open(image_info) as f:
            images = json.load(f).get("images")
        if not isinstance(images, list):
            raise ValueError(f"--image-info {image_info} has no 'images' list")
        by_name = {}
        for im in images:
            by_name[im["file_name"]] = int(im["id"])
            by_name.setdefault(os.path.basename(im["file_name"]), int(im["id"]))
        out = []
        for path in files:
            rel = [k for k in by_name if path.replace(os.sep, "/").endswith("/" + k) or path == k]
            out.append(by_name[max(rel, key=len)] if rel else None)
        return out
    return [int(stem) if (stem := os.path.splitext(os.path.basename(p))[0]).isdigit() else None for p in files]


def load_detections(path: str, score_threshold: float, category_ids=None) -> dict[int, list[dict]]:
    """COCO detection results grouped by image id (see :func:`engine.two_stage.load_detections`)."""
    return _load_detections(path, score_threshold, category_ids)


def category_names_of(image_info: str | None) -> dict[int, str]:
    """{category id: name} of --image-info's ``categories`` (empty without it)."""
    if not image_info:
        return {}
    with open(image_info) as f:
        cats = json.load(f).get("categories") or []
    return {int(c["id"]): str(c["name"]) for c in cats if isinstance(c, dict) and "id" in c and "name" in c}


def check_flags(args) -> None:
    """Refuse flag combinations that would silently do something else than asked."""
    if not args.checkpoint and not args.det_checkpoint:
        raise SystemExit("tools.infer: give --checkpoint (keypoints), --det-checkpoint (detection) or both")
    check_box_source_flags(args, "tools.infer")


def resolve_image_ids(files: list[str], ids: list[int | None], boxes: str | None,
                      image_info: str | None) -> list[int]:
    """Every file's id. With --boxes an unknown id is an error (a made-up id could be another image's and take
    its boxes); without, files get made-up ids above the largest known one, in file order."""
    unresolved = [f for f, i in zip(files, ids) if i is None]
    if unresolved and boxes:
        why = (f"--image-info {image_info} does not list them" if image_info else
               "their names are not numbers and no --image-info was given")
        raise ValueError(f"--boxes {boxes}: cannot tell the image id of {len(unresolved)} input files, e.g. "
                         f"{unresolved[:3]} ({why}); pass --image-info ann.json, the COCO json of these images whose "
                         f"'images' give each file_name its id, so that each image gets its own boxes")
    next_id = max((i for i in ids if i is not None), default=0) + 1
    out = []
    for i in ids:
        if i is None:
            i, next_id = next_id, next_id + 1
        out.append(i)
    return out


def main(argv: list[str] | None = None) -> dict:
    args = add_debug_flag(get_args_parser()).parse_args(argv)
    setup_logging()
    apply_backend_flags(args)
    check_flags(args)
    images, videos = split_inputs(args.input)
    video_summary = {}
    if videos:
        video_summary = infer_videos_from_args(args, videos, resolve_device(args.device))
        if not images:
            return video_summary
    det_threshold = 0.3 if args.det_score_threshold is None else args.det_score_threshold
    box_threshold = 0.0 if args.box_score_threshold is None else args.box_score_threshold
    files = list_images(args.input)
    ids = image_ids_for(files, args.image_info)
    # Only the images processed need an id; unknown-id warnings still look at every input.
    n_used = args.max_images or len(files)
    ids = resolve_image_ids(files[:n_used], ids[:n_used], args.boxes, args.image_info) + ids[n_used:]
    device = resolve_device(args.device)

    pipeline = meta = None
    if args.checkpoint:
        cfg, model, state = load_for_inference(args.checkpoint, device)
        if cfg.task != "keypoints":
            raise ValueError(f"--checkpoint {args.checkpoint} is a {cfg.task!r} checkpoint; pass a detector as "
                             f"--det-checkpoint and a keypoint model as --checkpoint")
        meta = kp.KeypointMeta.from_dict(state["meta"])
        task = kp.KeypointTask(kp.build_codec(cfg), meta, flip_test=not args.no_flip and cfg.eval.flip_test,
                               rescore_threshold=cfg.eval.rescore_threshold)
        predictor = TopDownPredictor(model, task, cfg.data.input_size, cfg.data.bbox_padding)
        pipeline = TwoStagePipeline(predictor, meta.oks_sigmas,
                                    None if args.no_oks_nms else args.oks_nms_threshold)

    det_meta, unknown_ids = None, []
    if args.det_checkpoint:
        dcfg, dmodel, dstate = load_for_inference(args.det_checkpoint, device)
        if dcfg.task != "detection":
            raise ValueError(f"--det-checkpoint {args.det_checkpoint} is a {dcfg.task!r} checkpoint, not a detector")
        det_meta = det_task.DetectionMeta.from_dict(dstate["meta"])
        cats = select_categories(det_meta.class_names, det_meta.category_ids, args.det_category)
        det_predictor = DetectionPredictor(dmodel, det_task.build_task(dcfg, det_meta, progress=False),
                                           dcfg.data.input_size)
        source = DetectorBoxes(det_predictor, cats, det_threshold, args.det_checkpoint)
    elif args.boxes:
        names = category_names_of(args.image_info)
        source = DetectionFileBoxes(args.boxes, box_threshold, parse_categories(args.det_category, names),
                                    default_category_id=meta.category_id, category_names=names)
        unknown_ids = source.check_image_ids(ids)
    else:
        source = WholeImageBoxes()
    log.info("boxes: %s", source.description)
    if args.max_images:
        files, ids = files[: args.max_images], ids[: args.max_images]

    vis_dir = os.path.join(args.output_dir, "vis")
    records, detections, n_boxes, skipped = [], [], 0, []
    for path, image_id in tqdm(list(zip(files, ids)), desc="infer", disable=args.no_progress):
        image = read_image_rgb(path)
        if image is None:
            if args.on_bad_image == "error":
                raise OSError(f"cannot read image {path} (missing or corrupt)")
            warnings.warn(f"cannot read image {path} (missing or corrupt); skipped", stacklevel=1)
            skipped.append(path)
            continue
        boxes, box_scores = source.boxes_for(image_id, image)
        n_boxes += len(boxes)
        if isinstance(source, DetectorBoxes):
            detections.append({"image_id": image_id, **source.last})
        drawn = image
        if pipeline is not None:
            kept = pipeline.run(image, image_id, boxes, box_scores)
            records.extend(kept)
            poses = np.stack([np.concatenate([r["keypoints"], r["scores"][:, None]], 1) for r in kept]) if kept \
                else np.zeros((0, len(meta.keypoint_names), 3))
            drawn = draw_keypoints(image, poses, meta.skeleton, meta.flip_index, args.draw_threshold,
                                   boxes=None if isinstance(source, WholeImageBoxes) else
                                   np.array([r["bbox"] for r in kept]).reshape(-1, 4))
        else:
            names = [det_meta.class_names[int(c)] for c in source.last["labels"]]
            keep = source.last["scores"] >= det_threshold
            drawn = draw_detections(image, source.last["boxes"][keep], source.last["scores"][keep],
                                    [nm for nm, k in zip(names, keep) if k])
        save_rgb(os.path.join(vis_dir, os.path.splitext(os.path.basename(path))[0] + ".jpg"), drawn)

    summary = {"images": len(files) - len(skipped), "boxes": n_boxes, "box_source": source.description,
               "skipped": skipped, "vis_dir": vis_dir, "unknown_image_ids": unknown_ids,
               "box_stats": source.log_summary(), **video_summary}
    if pipeline is not None:
        results = pipeline.task.to_coco_results(records)
        out_json = os.path.join(args.output_dir, "keypoint_results.json")
        kp.write_results(out_json, results)
        # "instances": poses written (after OKS-NMS); "boxes": instances cropped before it.
        summary.update(instances=len(results), results=out_json)
        log.info("%d images, %d boxes from %s -> %d poses after OKS-NMS -> %s and %s", summary["images"], n_boxes,
                 source.description, len(results), vis_dir, out_json)
    if detections:
        det_json = os.path.join(args.output_dir, "detection_results.json")
        kp.write_results(det_json, det_task.DetectionTask.to_coco_results(detections))
        summary["detection_results"] = det_json
        if pipeline is None:
            summary["instances"] = n_boxes
            log.info("%d images, %d detections (score >= %g) -> %s and %s", summary["images"], n_boxes,
                     det_threshold, vis_dir, det_json)
    return summary


if __name__ == "__main__":
    run_cli(main)
