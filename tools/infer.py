"""Run a keypoint model, a detector, or both (two-stage) on images and draw the results.

    python -m tools.infer --checkpoint runs/X/best.pt --input photo.jpg
    python -m tools.infer --checkpoint runs/X/best.pt --input images/ --boxes detections.json \
        [--image-info annotations.json] [--output-dir out/]
    python -m tools.infer --det-checkpoint runs/D/best.pt --checkpoint runs/K/best.pt --input images/
    python -m tools.infer --det-checkpoint runs/D/best.pt --input images/          # detection only
    python -m tools.infer --checkpoint runs/X/best.pt --input clip.mp4 --track [--smooth]   # a video
    python -m tools.infer --checkpoint runs/X/best.pt --first-pass runs/S/best.pt --input faces/ --boxes d.json
    python -m tools.infer --backend onnxruntime --model model.onnx --input images/  # a tools.export model

Videos (files, folders that mix them with images, a camera index) go through engine.video.runner: the same
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

import torch

from engine.distributed import resolve_device
from engine.export.runtime import check_matches_checkpoint, read_metadata
from engine.inference.box_sources import DetectionFileBoxes, DetectorBoxes, WholeImageBoxes
from engine.inference.drawing import draw_image_result, save_rgb
from engine.inference.images import category_names_of, inputs_with_ids, run_on_images
from engine.inference.loading import load_keypoint_predictor
from engine.inference.pipeline import keypoint_pipeline
from engine.video.frames import VideoSource, split_inputs
from engine.video.runner import VideoPoseRunner, infer_video
from engine.video.smoothing import TrackSmoother
from engine.video.tracking import PoseTracker
from models.errors import InputError
from models.utils import write_json
from tools._box_flags import add_box_source_flags, box_source_from_args, check_box_source_flags
from tools._common import add_debug_flag, run_cli, setup_logging

log = logging.getLogger("tools.infer")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a keypoint checkpoint written by tools.train")
    p.add_argument("--first-pass", metavar="MODEL",
                   help="a cheaper keypoint model (checkpoint or .onnx, same keypoints) that makes the first "
                        "prediction; the keypoint model then runs its eval.recrop_passes on that prediction's tight "
                        "boxes (a cascade: the small model places the crop, the large one reads it)")
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
    if args.first_pass and not args.checkpoint:
        raise InputError(f"tools.infer: --first-pass {args.first_pass} places a keypoint model's crops; add the "
                         f"keypoint model (--checkpoint, or --model with --backend onnxruntime)")
    if args.max_images is not None and args.max_images < 1:
        raise InputError(f"--max-images {args.max_images}: must be >= 1 (leave it out to process every image)")
    files, videos = split_inputs(args.input)
    if files and videos and args.boxes:
        raise InputError(f"--boxes {args.boxes}: --input {args.input} holds images and videos, and a detection file's "
                         f"image_id is an image id for one and a frame index for the other; run them separately")
    video_summary = {}
    if videos:
        video_summary = infer_videos(args, videos, resolve_device(args.device))
        if not files:
            return video_summary
    det_threshold = 0.3 if args.det_score_threshold is None else args.det_score_threshold
    images, all_ids = inputs_with_ids(files, args.image_info, args.boxes, args.max_images)
    device = resolve_device(args.device)

    pipeline = keypoint_pipeline(args.checkpoint, device, no_flip=args.no_flip,
                                 oks_nms_threshold=None if args.no_oks_nms else args.oks_nms_threshold,
                                 first_pass=args.first_pass) \
        if args.checkpoint else None
    meta = pipeline.task.meta if pipeline else None
    source = box_source_from_args(args, device, det_default_threshold=0.3,
                                  default_category_id=meta.category_id if meta else None,
                                  category_names=category_names_of(args.image_info) if args.boxes else None)
    unknown_ids = source.check_image_ids(all_ids) if isinstance(source, DetectionFileBoxes) else []
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


# ---------------------------------------------------------------------------------------------- videos
def check_video_box_source(box_source, n_videos: int, boxes_path: str | None) -> None:
    """Refuse one per-frame detection file for several videos (its frame indices would apply to each)."""
    if isinstance(box_source, DetectionFileBoxes) and n_videos > 1:
        raise InputError(f"--boxes {boxes_path}: a per-frame detection file (image_id = frame index) belongs to "
                         f"one video, but --input names {n_videos}; run each video on its own")

def infer_videos(args, videos: list[str], device: torch.device) -> dict:
    """``tools.infer`` on videos (and cameras): builds the models and box source from its flags, runs every
    video through :func:`infer_video` into ``args.output_dir``, and returns ``{"videos": [summaries]}``."""
    predictor = meta = None
    category_id, scorer = 1, "model"
    if args.checkpoint:
        predictor, cfg = load_keypoint_predictor(args.checkpoint, device, False if args.no_flip else None,
                                                 batch_size=max(args.video_batch_size, 8), first_pass=args.first_pass)
        meta, category_id = predictor.task.meta, predictor.task.meta.category_id
        scorer = cfg.name or os.path.splitext(os.path.basename(args.checkpoint))[0]
    box_source = box_source_from_args(args, device, det_default_threshold=0.3, default_category_id=category_id,
                                      det_batch_size=args.video_batch_size)
    class_names = box_source.class_names if isinstance(box_source, DetectorBoxes) else None
    check_video_box_source(box_source, len(videos), args.boxes)
    if (args.track or args.smooth) and meta is None:
        raise InputError(f"--{'track' if args.track else 'smooth'} matches and smooths keypoints (OKS), which a "
                         f"detector alone does not give: add --checkpoint with a keypoint model, or drop the flag")
    summaries = []
    for spec in videos:
        source = VideoSource(spec, args.start_frame, args.end_frame, args.frame_stride)
        if isinstance(box_source, DetectionFileBoxes) and source.frame_count:
            box_source.check_image_ids(range(source.frame_count), what="frame index of " + spec)
        tracker = smoother = None
        if args.track:
            tracker = PoseTracker(meta.oks_sigmas, iou_weight=args.track_iou_weight,
                                  min_similarity=args.track_min_similarity, max_gap=args.track_max_gap,
                                  method=args.track_method)
        if args.smooth:
            smoother = TrackSmoother(source.fps, args.smooth_min_cutoff, args.smooth_beta, args.smooth_d_cutoff,
                                     max_gap=args.track_max_gap)
        runner = VideoPoseRunner(predictor, box_source, det_every=args.det_every, batch_size=args.video_batch_size,
                                 oks_nms_threshold=None if args.no_oks_nms else args.oks_nms_threshold,
                                 tracker=tracker, smoother=smoother)
        summaries.append(infer_video(source, runner, args.output_dir, meta, class_names, scorer, category_id,
                                     args.draw_threshold, progress=not args.no_progress))
    return {"videos": summaries, "box_source": box_source.description}


def add_video_arguments(p) -> None:
    """The video flags of ``tools.infer`` (frame range, batching, detector cadence, tracking, smoothing)."""
    g = p.add_argument_group("videos (--input a video, a folder with videos, or a camera index)")
    g.add_argument("--start-frame", type=int, default=0, help="first frame index to process (0-based)")
    g.add_argument("--end-frame", type=int, default=None, help="stop before this frame index")
    g.add_argument("--frame-stride", type=int, default=1, help="process every N-th frame")
    g.add_argument("--video-batch-size", type=int, default=8, help="frames per batch through the models")
    g.add_argument("--det-every", type=int, default=1,
                   help="run --det-checkpoint on every N-th processed frame; the others reuse its last boxes")
    g.add_argument("--track", action="store_true", help="give instances ids across frames (IoU + OKS matching)")
    g.add_argument("--track-method", choices=("hungarian", "greedy"), default="hungarian")
    g.add_argument("--track-iou-weight", type=float, default=0.5,
                   help="similarity = w * box IoU + (1 - w) * OKS (default 0.5)")
    g.add_argument("--track-min-similarity", type=float, default=0.3, help="never match pairs below this")
    g.add_argument("--track-max-gap", type=int, default=10, help="retire a track unseen for more frames than this")
    g.add_argument("--smooth", action="store_true", help="One-Euro smoothing of each track's keypoints (needs --track)")
    g.add_argument("--smooth-min-cutoff", type=float, default=1.0,
                   help="One-Euro cut-off at rest, Hz (lower: smoother)")
    g.add_argument("--smooth-beta", type=float, default=0.01, help="One-Euro speed coefficient (higher: less lag)")
    g.add_argument("--smooth-d-cutoff", type=float, default=1.0, help="One-Euro cut-off of the speed estimate, Hz")


# --------------------------------------------------------------------------------------------- backends
def apply_backend_flags(args) -> None:
    """``tools.infer``'s ``--backend``: with onnxruntime, ``--model``/``--det-model`` take the place of
    ``--checkpoint``/``--det-checkpoint`` (a checkpoint given as well is checked against its export)."""
    models = [f for f in ("model", "det_model") if getattr(args, f, None)]
    if args.backend == "pytorch":
        if models:
            raise InputError(f"--{models[0].replace('_', '-')} is an exported ONNX model: add --backend onnxruntime")
        for flag in ("checkpoint", "det_checkpoint"):
            path = getattr(args, flag)
            if path and path.endswith(".onnx"):
                raise InputError(f"--{flag.replace('_', '-')} {path} is an ONNX model: run it with --backend "
                                 f"onnxruntime --{'model' if flag == 'checkpoint' else 'det-model'} {path}")
        return
    if not models:
        ckpt = args.checkpoint or args.det_checkpoint or "best.pt"
        raise InputError(f"--backend onnxruntime runs an exported model: export it (python -m tools.export "
                         f"--checkpoint {ckpt} --output M.onnx) and pass --model M.onnx (a detector: --det-model)")
    if args.model and read_metadata(args.model)["kind"] == "detection" and not args.det_model:
        args.det_model, args.model = args.model, None          # a detector alone, given as --model
    for onnx_flag, ckpt_flag in (("model", "checkpoint"), ("det_model", "det_checkpoint")):
        onnx_path, ckpt = getattr(args, onnx_flag), getattr(args, ckpt_flag)
        if ckpt and not onnx_path:
            raise InputError(f"--backend onnxruntime: --{ckpt_flag.replace('_', '-')} {ckpt} is a PyTorch checkpoint; "
                             f"export it (python -m tools.export --checkpoint {ckpt} --output M.onnx) and pass "
                             f"--{onnx_flag.replace('_', '-')} M.onnx")
        if ckpt and onnx_path:
            check_matches_checkpoint(onnx_path, ckpt)
        if onnx_path:
            setattr(args, ckpt_flag, onnx_path)


if __name__ == "__main__":
    run_cli(main)
