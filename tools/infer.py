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
import logging
import os

from engine.distributed import resolve_device
from engine.image_inputs import category_names_of, inputs_with_ids
from engine.onnx_runtime import apply_backend_flags
from engine.two_stage import (
    DetectorBoxes,
    WholeImageBoxes,
    detection_file_boxes,
    detector_boxes,
    keypoint_pipeline,
    run_on_images,
)
from engine.video import split_inputs
from engine.video_infer import add_video_arguments, infer_videos_from_args
from engine.visualize import draw_image_result, save_rgb
from models.errors import InputError
from models.utils import write_json
from tools._common import add_box_source_flags, add_debug_flag, check_box_source_flags, run_cli, setup_logging

log = logging.getLogger("tools.infer")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a keypoint checkpoint written by tools.train")
    add_box_source_flags(
        p, boxes_help="COCO detection results JSON; without it (and without --det-checkpoint) the whole image is "
                      "one instance",
        det_checkpoint_help="a detection checkpoint: detect the instances first (two-stage)",
        category_names_from="--image-info's categories",
        det_default="default 0.3; tools.eval defaults to 0, since AP wants every box")
    p.add_argument("--input", required=True,
                   help="an image, a video, a folder (images and videos), a glob pattern (quote it) or a camera index")
    p.add_argument("--image-info", help="COCO json whose 'images' map file names to the ids used in --boxes. With "
                                        "--boxes every input needs an id (from here or a numeric file name); "
                                        "without --boxes, inputs without one get made-up ids")
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


def main(argv: list[str] | None = None) -> dict:
    args = add_debug_flag(get_args_parser()).parse_args(argv)
    setup_logging()
    apply_backend_flags(args)
    check_box_source_flags(args, "tools.infer", need_a_model=True)
    if args.max_images is not None and args.max_images < 1:
        raise InputError(f"--max-images {args.max_images}: must be >= 1 (leave it out to process every image)")
    files, videos = split_inputs(args.input)
    if files and videos and args.boxes:
        raise InputError(f"--boxes {args.boxes}: --input {args.input} holds images and videos, and a detection file's "
                         f"image_id is an image id for one and a frame index for the other; run them separately")
    video_summary = {}
    if videos:
        video_summary = infer_videos_from_args(args, videos, resolve_device(args.device))
        if not files:
            return video_summary
    det_threshold = 0.3 if args.det_score_threshold is None else args.det_score_threshold
    images, all_ids = inputs_with_ids(files, args.image_info, args.boxes, args.max_images)
    device = resolve_device(args.device)

    pipeline = keypoint_pipeline(args.checkpoint, device, no_flip=args.no_flip,
                                 oks_nms_threshold=None if args.no_oks_nms else args.oks_nms_threshold) \
        if args.checkpoint else None
    meta = pipeline.task.meta if pipeline else None
    unknown_ids = []
    if args.det_checkpoint:
        source = detector_boxes(args.det_checkpoint, device, args.det_category, det_threshold)
    elif args.boxes:
        source = detection_file_boxes(args.boxes, args.box_score_threshold or 0.0, args.det_category,
                                      category_names_of(args.image_info), meta.category_id)
        unknown_ids = source.check_image_ids(all_ids)
    else:
        source = WholeImageBoxes()
    log.info("boxes: %s", source.description)

    vis_dir = os.path.join(args.output_dir, "vis")

    def draw(image, result):
        drawn = draw_image_result(
            image, result, skeleton=meta.skeleton if meta else None, flip_index=meta.flip_index if meta else None,
            num_keypoints=len(meta.keypoint_names) if meta else 0, keypoint_threshold=args.draw_threshold,
            draw_boxes=not isinstance(source, WholeImageBoxes), class_names=getattr(source, "class_names", None),
            detection_threshold=det_threshold)
        save_rgb(os.path.join(vis_dir, os.path.splitext(os.path.basename(result.path))[0] + ".jpg"), drawn)

    run = run_on_images(images, source, pipeline, on_bad_image=args.on_bad_image, progress=not args.no_progress,
                        on_image=draw)
    summary = {"images": run.num_images, "boxes": run.num_boxes, "box_source": source.description,
               "skipped": run.unreadable, "vis_dir": vis_dir, "unknown_image_ids": unknown_ids,
               "box_stats": run.box_stats, **video_summary}
    if pipeline is not None:
        results = pipeline.task.to_coco_results(run.records)
        out_json = os.path.join(args.output_dir, "keypoint_results.json")
        write_json(out_json, results)
        # "instances": poses written (after OKS-NMS); "boxes": instances cropped before it.
        summary.update(instances=len(results), results=out_json)
        log.info("%d images, %d boxes from %s -> %d poses after OKS-NMS -> %s and %s", run.num_images,
                 run.num_boxes, source.description, len(results), vis_dir, out_json)
    if isinstance(source, DetectorBoxes):
        det_json = os.path.join(args.output_dir, "detection_results.json")
        write_json(det_json, source.predictor.task.to_coco_results(run.detections))
        summary["detection_results"] = det_json
        if pipeline is None:
            summary["instances"] = run.num_boxes
            log.info("%d images, %d detections (score >= %g) -> %s and %s", run.num_images, run.num_boxes,
                     det_threshold, vis_dir, det_json)
    return summary


if __name__ == "__main__":
    run_cli(main)
