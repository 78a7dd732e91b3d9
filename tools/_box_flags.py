"""The flags that choose where a top-down keypoint model's boxes come from, shared by ``tools.infer`` (images
and videos) and ``tools.eval``: declared, checked and turned into a box source in this one place."""

from __future__ import annotations

import argparse

import torch

from engine.inference.box_sources import WholeImageBoxes, detection_file_boxes, detector_boxes
from models.errors import InputError


def add_box_source_flags(parser: argparse.ArgumentParser, boxes_help: str, det_checkpoint_help: str,
                         category_names_from: str, det_default: str) -> None:
    """The flags that choose where a keypoint model's boxes come from (``tools.eval``, ``tools.infer``):
    ``--boxes``, ``--det-checkpoint``, ``--det-category``, ``--det-score-threshold`` (None unless given; the
    tool applies ``det_default``), ``--box-score-threshold`` (None unless given: 0)."""
    parser.add_argument("--boxes", help=boxes_help)
    parser.add_argument("--det-checkpoint", help=det_checkpoint_help)
    parser.add_argument("--det-category",
                        help="categories whose boxes go to the keypoint model, comma-separated names or category "
                             "ids. With --det-checkpoint: the detector's classes (default: all). With --boxes: the "
                             f"file's category_id values, names through {category_names_from} (default: the "
                             "keypoint model's category if the file has it, else all)")
    parser.add_argument("--det-score-threshold", type=float, default=None,
                        help=f"--det-checkpoint only: keep detector boxes at or above this score ({det_default})")
    parser.add_argument("--box-score-threshold", type=float, default=None,
                        help="--boxes only: ignore the file's detections below this score (default 0: all, as "
                             "COCO's protocol)")


def check_box_source_flags(args: argparse.Namespace, tool: str, need_a_model: bool = False) -> None:
    """Refuse box-source flag combinations (``tools.eval``, ``tools.infer``) that would silently do something
    else than asked: two sources at once, or a threshold or category filter for a source that is not given.
    With ``need_a_model`` (``tools.infer``): a keypoint model or a detector must be given, and ``--boxes`` is
    only for a keypoint model."""
    if need_a_model and not args.checkpoint and not args.det_checkpoint:
        raise InputError(f"{tool}: give --checkpoint (keypoints), --det-checkpoint (detection) or both")
    if args.boxes and args.det_checkpoint:
        raise InputError(f"{tool}: --boxes and --det-checkpoint are two sources of boxes; give one")
    if need_a_model and args.boxes and not args.checkpoint:
        raise InputError(f"{tool}: --boxes gives boxes to a keypoint model; add --checkpoint")
    if args.box_score_threshold is not None and not args.boxes:
        raise InputError(f"{tool}: --box-score-threshold filters the entries of --boxes; for a detector use "
                         "--det-score-threshold")
    if args.det_score_threshold is not None and not args.det_checkpoint:
        raise InputError(f"{tool}: --det-score-threshold is the threshold of --det-checkpoint; for a --boxes "
                         "file use --box-score-threshold")
    if args.det_category and not (args.boxes or args.det_checkpoint):
        raise InputError(f"{tool}: --det-category selects the categories of --boxes or --det-checkpoint; give "
                         "one of them, or leave --det-category out")


def box_source_from_args(args: argparse.Namespace, device: torch.device, det_default_threshold: float,
                         default_category_id: int | None = None, category_names: dict[int, str] | None = None,
                         det_batch_size: int = 8):
    """The box source the flags of :func:`add_box_source_flags` choose (``tools.infer`` on images and videos,
    ``tools.eval``): ``--det-checkpoint`` (its lowest score ``--det-score-threshold``, else
    ``det_default_threshold``), ``--boxes`` (``--box-score-threshold``, else 0; entries without a category
    count as ``default_category_id``, the keypoint model's; ``category_names`` {id: name} let
    ``--det-category`` name them), or else the whole image."""
    if args.det_checkpoint:
        threshold = det_default_threshold if args.det_score_threshold is None else args.det_score_threshold
        return detector_boxes(args.det_checkpoint, device, args.det_category, threshold, det_batch_size)
    if args.boxes:
        return detection_file_boxes(args.boxes, args.box_score_threshold or 0.0, args.det_category,
                                    category_names or {}, default_category_id)
    return WholeImageBoxes()
