"""Run a keypoint model on images and draw the results.

    python -m tools.infer --checkpoint runs/X/best.pt --input photo.jpg
    python -m tools.infer --checkpoint runs/X/best.pt --input images/ --boxes detections.json \
        [--image-info annotations.json] [--output-dir out/]

Without ``--boxes`` each image is treated as one instance (its whole frame is the box). With a COCO
detection-results file (``image_id``, ``bbox`` [x, y, w, h], ``score``) it runs top-down on every box.
Image ids are matched to files through ``--image-info`` (a COCO json with ``images``), or else through
numeric file names (``000000000785.jpg`` is id 785), as COCO names them. Writes the drawn images under
``vis/`` and COCO keypoint results to ``keypoint_results.json``.
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

from datasets.topdown import read_image_rgb
from engine.experiment import load_for_inference
from engine.inference import TopDownPredictor
from engine.tasks import keypoints as kp
from engine.visualize import draw_keypoints, save_rgb
from models.bbox import coco_xywh_to_xyxy
from tools._common import resolve_device, setup_logging

log = logging.getLogger("tools.infer")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by tools.train")
    p.add_argument("--input", required=True, help="an image, a folder of images, or a glob pattern (quote it)")
    p.add_argument("--boxes", help="COCO detection results JSON; without it the whole image is one instance")
    p.add_argument("--image-info", help="COCO json whose 'images' map file names to the ids used in --boxes")
    p.add_argument("--box-score-threshold", type=float, default=0.0, help="ignore detections below this score")
    p.add_argument("--output-dir", default="outputs/infer")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-images", type=int, help="process only the first N images (sorted by name)")
    p.add_argument("--no-flip", action="store_true", help="disable flip testing")
    p.add_argument("--draw-threshold", type=float, default=0.2, help="draw keypoints above this confidence")
    p.add_argument("--on-bad-image", choices=("skip", "error"), default="skip",
                   help="what to do with an unreadable image (default: warn and skip)")
    p.add_argument("--no-progress", action="store_true")
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


def load_detections(path: str, score_threshold: float) -> dict[int, list[dict]]:
    with open(path) as f:
        dets = json.load(f)
    if not isinstance(dets, list):
        raise ValueError(f"{path}: a detection-results file is a JSON list of {{image_id, bbox, score}}")
    by_image: dict[int, list[dict]] = {}
    for i, d in enumerate(dets):
        if "image_id" not in d or "bbox" not in d or len(d["bbox"]) != 4:
            raise ValueError(f"{path}: entry {i} lacks image_id or a 4-number bbox [x, y, w, h]")
        if d.get("score", 1.0) < score_threshold:
            continue
        by_image.setdefault(int(d["image_id"]), []).append(d)
    return by_image


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    setup_logging()
    device = resolve_device(args.device)
    cfg, model, state = load_for_inference(args.checkpoint, device)
    meta = kp.KeypointMeta.from_dict(state["meta"])
    task = kp.KeypointTask(kp.build_codec(cfg), meta, flip_test=not args.no_flip and cfg.eval.flip_test,
                           rescore_threshold=cfg.eval.rescore_threshold)
    predictor = TopDownPredictor(model, task, cfg.data.input_size, cfg.data.bbox_padding)

    files = list_images(args.input)
    ids = image_ids_for(files, args.image_info)
    detections = None
    if args.boxes:
        detections = load_detections(args.boxes, args.box_score_threshold)
        known = {i for i in ids if i is not None}
        unknown = sorted(set(detections) - known)
        if detections and not (set(detections) & known):
            raise ValueError(f"{args.boxes}: none of its {len(detections)} image ids matches an input image "
                             f"(e.g. {unknown[:5]}); pass --image-info with the images' COCO json")
        if unknown:
            log.warning("%s: %d image ids have no matching input image and are ignored, e.g. %s",
                        args.boxes, len(unknown), unknown[:10])
    if args.max_images:
        files, ids = files[: args.max_images], ids[: args.max_images]

    vis_dir = os.path.join(args.output_dir, "vis")
    records, n_instances, skipped = [], 0, []
    for n, (path, image_id) in enumerate(tqdm(list(zip(files, ids)), desc="infer", disable=args.no_progress)):
        image = read_image_rgb(path)
        if image is None:
            if args.on_bad_image == "error":
                raise OSError(f"cannot read image {path} (missing or corrupt)")
            warnings.warn(f"cannot read image {path} (missing or corrupt); skipped", stacklevel=1)
            skipped.append(path)
            continue
        h, w = image.shape[:2]
        image_id = image_id if image_id is not None else n + 1
        if detections is None:
            boxes, box_scores = np.array([[0, 0, w - 1, h - 1]], float), np.ones(1)
        else:
            dets = detections.get(image_id, [])
            boxes = coco_xywh_to_xyxy(np.array([d["bbox"] for d in dets], float).reshape(-1, 4))
            box_scores = np.array([d.get("score", 1.0) for d in dets], float)
        pred = predictor.predict(image, boxes)
        for box, score, kpts in zip(boxes, box_scores, pred):
            records.append({"image_id": image_id, "keypoints": kpts[:, :2], "scores": kpts[:, 2],
                            "box_score": float(score), "bbox": box})
        n_instances += len(boxes)
        drawn = draw_keypoints(image, pred, meta.skeleton, meta.flip_index, args.draw_threshold,
                               boxes=boxes if detections is not None else None)
        save_rgb(os.path.join(vis_dir, os.path.splitext(os.path.basename(path))[0] + ".jpg"), drawn)

    results = task.to_coco_results(records)
    out_json = os.path.join(args.output_dir, "keypoint_results.json")
    kp.write_results(out_json, results)
    log.info("%d images, %d instances -> %s and %s", len(files) - len(skipped), n_instances, vis_dir, out_json)
    return {"images": len(files) - len(skipped), "instances": n_instances, "skipped": skipped,
            "results": out_json, "vis_dir": vis_dir}


if __name__ == "__main__":
    main()
