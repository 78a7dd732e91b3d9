"""The model a user would take instead of ours: dlib's 68-point shape predictor on dlib's HOG face boxes.

Two steps, because dlib is an optional extra (``pip install -e .[peers]``, or a separate virtualenv with
``pip install dlib-bin face-recognition-models``) and the scoring needs the repository's own environment:

    # 1. dlib's python: predict on the validation split of the faces config (the defaults are its split)
    /path/to/dlib-venv/bin/python bench/dlib_landmarks.py predict --out-dir runs/dlib300w
    # 2. the repository's python: the same report as tools.eval, dlib next to any other results file
    python bench/dlib_landmarks.py score --config configs/hg-fpn_resnet18_300w-faces_128x128.yaml \
        --results dlib=runs/dlib300w/dlib_keypoints.json [--results ours=runs/X/eval/keypoint_results.json]
    # our model on dlib's boxes, for the side-by-side numbers:
    python -m tools.eval --config configs/hg-fpn_resnet18_300w-faces_128x128.yaml --checkpoint runs/X/best.pt \
        --boxes runs/dlib300w/dlib_boxes.json

``predict`` runs dlib's frontal face detector (HOG + linear SVM, ``--upsample`` pyramid-ups) on every image of
the split, takes for each annotated face the detection that overlaps its box most (IoU >= ``--min-iou``),
and falls back to the annotation box where there is none (counted and reported: the annotation box is the
landmark-tight box, which dlib's predictor was not trained on, so a fallback is no favour to dlib). It writes

* ``dlib_keypoints.json``: COCO keypoint results (one per face, every point visible, score 1, plus the
  ``bbox`` of the box used);
* ``dlib_boxes.json``: those boxes as COCO detection results, for ``tools.eval --boxes``, so that both
  models crop the same boxes;
* ``dlib_run.json``: counts and timing (detector and predictor wall time per face, this process, one thread).

dlib's model was trained on the 300-W training images (AFW, HELEN train, LFPW train), so on a split of
faces300w_train it has seen the faces: its numbers there are optimistic, a conservative bar to beat.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from models.errors import InputError  # noqa: E402  (imports nothing: fine in dlib's environment)
from tools._common import add_debug_flag, run_cli  # noqa: E402

FACES = "../shared/data/faces300w_train"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("predict", help="run dlib (needs dlib and face-recognition-models)")
    pr.add_argument("--ann-file", default=f"{FACES}/annotations.json")
    pr.add_argument("--image-root", default=f"{FACES}/images")
    pr.add_argument("--subset", default="holdout", help="all | holdout | rest (as data.val.subset)")
    pr.add_argument("--holdout-fraction", type=float, default=0.1)
    pr.add_argument("--holdout-seed", type=int, default=0)
    pr.add_argument("--upsample", type=int, default=1, help="times the HOG detector upsamples the image")
    pr.add_argument("--min-iou", type=float, default=0.3, help="a detection this close to the face box is its box")
    pr.add_argument("--predictor", help="a shape_predictor .dat file (default: face_recognition_models' 68-point)")
    pr.add_argument("--out-dir", required=True)
    sc = sub.add_parser("score", help="score COCO keypoint results with the config's face report")
    sc.add_argument("--config", required=True)
    sc.add_argument("--results", action="append", required=True, metavar="LABEL=FILE",
                    help="a COCO keypoint results file with its label; repeat to compare (one CED plot)")
    sc.add_argument("--out-dir", help="where metrics.json and ced.png go (default: beside the first results file)")
    sc.add_argument("overrides", nargs="*")
    return p


# ---------------------------------------------------------------------------------------------- predict
def box_iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of inclusive xyxy boxes a [N, 4] and b [M, 4] (dlib needs no torch, so models.bbox is not used)."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo + 1, 0, None), axis=-1)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2] + 1, 0, None), axis=-1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def predict(args) -> dict:
    try:
        import dlib
    except ImportError as err:
        raise InputError("dlib is not installed in this python: pip install dlib-bin face-recognition-models (the "
                         "[peers] extra), preferably in a virtualenv of its own, and run predict with it") from err
    from datasets.coco_common import resolve_image_path, split_image_ids  # numpy only: no torch needed

    if args.predictor is None:
        import face_recognition_models
        args.predictor = face_recognition_models.pose_predictor_model_location()
    detector, predictor = dlib.get_frontal_face_detector(), dlib.shape_predictor(args.predictor)
    data = json.load(open(args.ann_file))
    images = {int(im["id"]): im for im in data["images"]}
    keep = split_image_ids(sorted(images), args.subset, args.holdout_fraction, args.holdout_seed)
    faces: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        if int(ann["image_id"]) in keep and not ann.get("iscrowd", 0) and ann.get("num_keypoints", 1) > 0:
            faces.setdefault(int(ann["image_id"]), []).append(ann)
    results, boxes_out = [], []
    counts = {"images": 0, "faces": 0, "detector_boxes": 0, "fallback_annotation_box": 0, "detections": 0}
    t_detect = t_shape = 0.0
    for image_id in sorted(faces):
        image = dlib.load_rgb_image(resolve_image_path(args.image_root, images[image_id]["file_name"], args.ann_file))
        counts["images"] += 1
        start = time.perf_counter()
        rects = detector(image, args.upsample)
        t_detect += time.perf_counter() - start
        counts["detections"] += len(rects)
        # dlib rectangles are inclusive pixel boxes, as ours: width = right - left + 1.
        det = np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in rects], float).reshape(-1, 4)
        gt = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2] - 1, a["bbox"][1] + a["bbox"][3] - 1]
                       for a in faces[image_id]], float)
        iou = box_iou_xyxy(gt, det) if len(det) else np.zeros((len(gt), 0))
        taken: set[int] = set()
        for g, ann in enumerate(faces[image_id]):
            counts["faces"] += 1
            order = [int(j) for j in np.argsort(-iou[g]) if iou[g, j] >= args.min_iou and int(j) not in taken]
            if order:
                taken.add(order[0])
                box = det[order[0]]
                counts["detector_boxes"] += 1
            else:
                box = gt[g]
                counts["fallback_annotation_box"] += 1
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            start = time.perf_counter()
            shape = predictor(image, dlib.rectangle(x1, y1, x2, y2))
            t_shape += time.perf_counter() - start
            kpts = [v for i in range(shape.num_parts) for v in (float(shape.part(i).x), float(shape.part(i).y), 1.0)]
            xywh = [float(x1), float(y1), float(x2 - x1 + 1), float(y2 - y1 + 1)]
            cat = int(ann.get("category_id", 1))
            results.append({"image_id": image_id, "category_id": cat, "keypoints": kpts, "score": 1.0, "bbox": xywh})
            boxes_out.append({"image_id": image_id, "category_id": cat, "bbox": xywh, "score": 1.0})
    n = max(counts["faces"], 1)
    run = {**counts, "ann_file": args.ann_file, "subset": args.subset, "holdout_fraction": args.holdout_fraction,
           "holdout_seed": args.holdout_seed, "upsample": args.upsample, "predictor": os.path.basename(args.predictor),
           "ms/face detector": 1000 * t_detect / n, "ms/face predictor": 1000 * t_shape / n,
           "ms/face": 1000 * (t_detect + t_shape) / n, "dlib": dlib.__version__}
    os.makedirs(args.out_dir, exist_ok=True)
    for name, obj in (("dlib_keypoints.json", results), ("dlib_boxes.json", boxes_out), ("dlib_run.json", run)):
        with open(os.path.join(args.out_dir, name), "w") as f:
            json.dump(obj, f, indent=1 if name == "dlib_run.json" else None)
    print(json.dumps(run, indent=1))
    return run


# ---------------------------------------------------------------------------------------------- score
def score(args) -> dict:
    from engine.evaluation.coco import coco_eval
    from engine.evaluation.face_metrics import FaceReportConfig, build_face_report, evaluate_detected, plot_ced
    from engine.tasks import keypoints as kp
    from engine.tasks.registry import load_config

    cfg = load_config(args.config, args.overrides)
    val_data, meta = kp.load_split_and_meta(cfg, cfg.data.val)
    gt = kp.coco_subset(cfg.data.val.ann_file, val_data.image_ids, meta.category_id)
    report = build_face_report(cfg.eval.face or FaceReportConfig(), len(meta.keypoint_names), meta.nme_pair)
    out = {"config": args.config, "ann_file": cfg.data.val.ann_file, "face_report": report.describe(), "models": {}}
    curves = {}
    for item in args.results:
        label, _, path = item.partition("=")
        if not path:
            raise InputError(f"--results {item!r}: give LABEL=FILE, e.g. dlib=runs/dlib300w/dlib_keypoints.json")
        results = [r for r in json.load(open(path)) if int(r["image_id"]) in set(val_data.image_ids)]
        records = []
        for r in results:
            k = np.asarray(r["keypoints"], float).reshape(-1, 3)
            if "bbox" in r:       # the box the crop came from; else the predicted points' extent
                x, y, w, h = r["bbox"]
                box = [x, y, x + w - 1, y + h - 1]
            else:
                box = [*k[:, :2].min(0), *k[:, :2].max(0)]
            records.append({"image_id": int(r["image_id"]), "bbox": np.asarray(box, float), "keypoints": k[:, :2]})
        metrics = coco_eval(gt, results, "keypoints", sigmas=meta.oks_sigmas)
        metrics.update(evaluate_detected(report, records, val_data.instances, val_data.image_ids))
        run_info = os.path.join(os.path.dirname(path), "dlib_run.json")
        if label == "dlib" and os.path.isfile(run_info):
            metrics["ms/face"] = json.load(open(run_info))["ms/face"]
        out["models"][label] = metrics
        curves[label] = report.last_face_nme
    out_dir = args.out_dir or os.path.dirname(os.path.abspath(args.results[0].partition("=")[2]))
    os.makedirs(out_dir, exist_ok=True)
    plot_ced(curves, os.path.join(out_dir, "ced.png"), max(report.thresholds), title="CED, 300-W held-out split")
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(out, f, indent=2)
    keys = ["NME", "FR@0.08", "FR@0.1", "AUC@0.08", "AUC@0.1", *[f"NME/{r}" for r in report.regions], "offset/x",
            "offset/y", "AP", "faces", "faces_missed", "ms/face"]
    print(f"{'':<8}" + "".join(f"{k:>13}" for k in keys))
    for label, m in out["models"].items():
        print(f"{label:<8}" + "".join(f"{m.get(k, 0.0):>13.4f}" for k in keys))
    print(f"wrote {out_dir}/metrics.json and ced.png")
    return out


def main(argv=None):
    args = add_debug_flag(get_args_parser()).parse_args(argv)
    return predict(args) if args.command == "predict" else score(args)


if __name__ == "__main__":
    run_cli(main)
