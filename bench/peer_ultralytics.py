"""The detector a user would take instead of ours: Ultralytics YOLO11n, trained the same way on the same images and
scored by our COCO evaluation.

    .venv/bin/python bench/peer_ultralytics.py --config configs/centernet-fpn_resnet18_tiger-box_320x192.yaml \
        --yolo-python /path/to/yolo-venv/bin/python --epochs 30 --imgsz 320 --out-dir runs/peer_tiger

Ultralytics is AGPL and pins ``opencv-python`` (which clashes with this repository's headless OpenCV), so it is
never a dependency: it runs in a virtualenv of its own (``pip install --no-deps ultralytics ultralytics-thop``
plus ``polars psutil py-cpuinfo requests pandas``, with torch and OpenCV taken from this repository's venv
through a ``.pth`` line), invoked as a subprocess. Steps, all in one run:

1. the config's train and val COCO files go through our own ``tools.convert coco-to-yolo`` (the +1 boxes as
   ``class cx cy w h``), so both models see the same labels;
2. YOLO11n is built from its model YAML (random initialisation, as ours), trained for ``--epochs`` at
   ``--imgsz`` on the CPU with ``--threads`` torch threads, offline (``YOLO_OFFLINE=1``; the font it would fetch
   on every dataset check is provided from matplotlib's DejaVuSans under the name it looks for), no AMP, and
   evaluated by us, not by Ultralytics: it predicts the val images at ``conf=0.001`` (every box, as COCO AP
   wants) and our ``engine.evaluation.coco.coco_eval`` scores the boxes against the config's val ground truth;
3. it reports training images/s (images seen / the training's wall seconds) and inference images/s, beside
   the COCO numbers, in ``metrics.json``; the scored boxes and labels go to ``detection_results.json`` and
   ``val_labels.json`` (``bench/box_fit.py`` reads them).

A YOLO box ``[x1, y1, x2, y2]`` is in edge coordinates of pixels (0 at the first pixel's left edge); our
converter wrote label edges ``x / W`` for a +1 box starting at pixel ``x``, so the prediction's COCO box is
``[x1, y1, x2 - x1, y2 - y1]`` in our convention, with no half-pixel shift.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a script: bench/ is on sys.path
from datasets.coco_common import load_json  # noqa: E402
from datasets.formats.yolo import coco_to_yolo, path_within_split  # noqa: E402
from engine.evaluation.coco import coco_eval  # noqa: E402
from engine.tasks.detection import load_split  # noqa: E402
from engine.tasks.registry import load_config  # noqa: E402

# Runs in the Ultralytics python: trains YOLO11n from its YAML, predicts the val images, times both.
YOLO_JOB = r"""
import json, os, sys, time, glob
job = json.load(sys.stdin)
from ultralytics import YOLO
import torch
torch.set_num_threads(job["threads"])          # Ultralytics sets cpu_count - 1 threads on import
model = YOLO("yolo11n.yaml")
start = time.perf_counter()
model.train(data=job["data"], epochs=job["epochs"], imgsz=job["imgsz"], batch=job["batch"], device="cpu",
            workers=job["workers"], amp=False, plots=False, val=job["val_each_epoch"], project=job["project"],
            name="train", exist_ok=True, seed=0, deterministic=True, verbose=False, pretrained=False)
train_seconds = time.perf_counter() - start
best = os.path.join(job["project"], "train", "weights", "last.pt")
model = YOLO(best)
images = sorted(f for f in glob.glob(os.path.join(job["val_images"], "**", "*"), recursive=True) if os.path.isfile(f))
preds = {}
start = time.perf_counter()
for path in images:
    r = model.predict(path, imgsz=job["imgsz"], conf=0.001, iou=0.7, max_det=100, device="cpu", verbose=False)[0]
    preds[os.path.relpath(path, job["val_images"])] = {"boxes": r.boxes.xyxy.tolist(), "scores": r.boxes.conf.tolist(),
                                     "classes": [int(c) for c in r.boxes.cls.tolist()]}
infer_seconds = time.perf_counter() - start
import ultralytics
print("JOB-RESULT " + json.dumps({"train_seconds": train_seconds, "infer_seconds": infer_seconds,
                                  "val_images": len(images), "predictions": preds, "version": ultralytics.__version__}))
"""


def merged_split_file(cfg, out_dir: str) -> tuple[dict, str]:
    """The config's train and val images in one COCO dict whose images carry ``split`` (train / val), and the
    image root; the val images as the config's val split selects them."""
    train, val = load_split(cfg, cfg.data.train), load_split(cfg, cfg.data.val)
    if cfg.data.train.image_root != cfg.data.val.image_root:
        raise SystemExit("train and val image roots differ; this script expects one image folder")
    merged = {"images": [], "annotations": [], "categories": None}
    image_offset = annotation_offset = 0
    for split, data, split_cfg in (("train", train, cfg.data.train), ("val", val, cfg.data.val)):
        coco = load_json(split_cfg.ann_file, "detection")
        keep = set(data.image_ids)
        images = [im for im in coco["images"] if int(im["id"]) in keep]
        annotations = [a for a in coco["annotations"] if int(a["image_id"]) in keep]
        if split_cfg.ann_file != cfg.data.train.ann_file:
            # two files number their images from 1 each (the synthetic sets): shift the second file's ids
            image_offset = max((int(im["id"]) for im in merged["images"]), default=0)
            annotation_offset = max((int(a["id"]) for a in merged["annotations"]), default=0)
        merged["images"] += [{**im, "id": int(im["id"]) + image_offset, "split": split} for im in images]
        merged["annotations"] += [{**a, "id": int(a["id"]) + annotation_offset,
                                   "image_id": int(a["image_id"]) + image_offset} for a in annotations]
        merged["categories"] = coco["categories"]
    names = [im["file_name"] for im in merged["images"]]
    if len(names) != len(set(names)):
        raise SystemExit("the train and val splits share images; give the peer disjoint splits")
    return merged, cfg.data.train.image_root


def font_dir(out_dir: str) -> str:
    """A YOLO_CONFIG_DIR holding Arial.ttf (matplotlib's DejaVuSans under that name), so that Ultralytics does not
    try to download its font on every dataset check."""
    import matplotlib

    folder = os.path.join(out_dir, "yolo_config")
    os.makedirs(folder, exist_ok=True)
    font = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf", "DejaVuSans.ttf")
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        shutil.copy(font, os.path.join(folder, name))
    return folder


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="one of our detection configs: its data is the peer's")
    p.add_argument("--yolo-python", required=True, help="the Ultralytics virtualenv's python")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--imgsz", type=int, required=True, help="YOLO's square training size (ours: the longer side)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--val-each-epoch", action="store_true", help="let Ultralytics validate every epoch (slower)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("overrides", nargs="*", help="overrides of our config (e.g. its data split)")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    out = os.path.abspath(args.out_dir)
    os.makedirs(out, exist_ok=True)
    merged, image_root = merged_split_file(cfg, out)
    data_yaml = coco_to_yolo(merged, image_root, os.path.join(out, "yolo_set"), copy_images=True)
    job = {"data": data_yaml, "epochs": args.epochs, "imgsz": args.imgsz, "batch": args.batch,
           "threads": args.threads, "workers": args.workers, "val_each_epoch": args.val_each_epoch,
           "project": os.path.join(out, "yolo_runs"), "val_images": os.path.join(out, "yolo_set", "images", "val")}
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": font_dir(out), "OMP_NUM_THREADS": str(args.threads)}
    start = time.perf_counter()
    proc = subprocess.run([args.yolo_python, "-c", YOLO_JOB], input=json.dumps(job), capture_output=True, text=True,
                          env=env, cwd=out)
    wall = time.perf_counter() - start
    with open(os.path.join(out, "yolo_log.txt"), "w") as f:
        f.write(proc.stdout + "\n" + proc.stderr)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("JOB-RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"the Ultralytics job failed (exit {proc.returncode}); see {out}/yolo_log.txt:\n"
                         + proc.stderr[-2000:])
    res = json.loads(line[len("JOB-RESULT "):])
    # the job's keys are the paths under images/val/ where the converter put each image
    by_name = {path_within_split(im["file_name"], "val"): im for im in merged["images"] if im["split"] == "val"}
    cats = sorted(merged["categories"], key=lambda c: int(c["id"]))
    results = []
    for name, pred in res["predictions"].items():
        image = by_name[name]
        for (x1, y1, x2, y2), score, cls in zip(pred["boxes"], pred["scores"], pred["classes"]):
            results.append({"image_id": int(image["id"]), "category_id": int(cats[cls]["id"]),
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    val_ids = {int(im["id"]) for im in merged["images"] if im["split"] == "val"}
    gt = {"images": [im for im in merged["images"] if int(im["id"]) in val_ids],
          "annotations": [a for a in merged["annotations"] if int(a["image_id"]) in val_ids],
          "categories": merged["categories"]}
    metrics = coco_eval(gt, results, "bbox")
    num_train = sum(1 for im in merged["images"] if im["split"] == "train")
    report = {"peer": f"ultralytics {res['version']} YOLO11n (yolo11n.yaml, random init)", "config": args.config,
              "epochs": args.epochs, "imgsz": args.imgsz, "batch": args.batch, "threads": args.threads,
              "train_images": num_train, "train_seconds": round(res["train_seconds"], 1),
              "train_images_per_s": round(num_train * args.epochs / res["train_seconds"], 2),
              "infer_images_per_s": round(res["val_images"] / res["infer_seconds"], 2), "wall_seconds": round(wall, 1),
              "metrics": metrics}
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(report, f, indent=2)
    # What was scored, for bench/box_fit.py (--ann val_labels.json --results detection_results.json).
    for name, content in (("detection_results.json", results), ("val_labels.json", gt)):
        with open(os.path.join(out, name), "w") as f:
            json.dump(content, f)
    print(json.dumps({k: v for k, v in report.items() if k != "metrics"}))
    print("  ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return report


if __name__ == "__main__":
    main()
