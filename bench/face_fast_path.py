"""Face landmarks per face on the CPU: our exported models on onnxruntime against dlib's shape predictor, same
faces, same boxes, same run.

    .venv/bin/python bench/face_fast_path.py --dlib-python /path/to/dlib-venv/bin/python \
        --model fast=runs/fast/fast.onnx --model accurate=runs/acc/accurate.onnx [--threads 2] [--rounds 2]

What is timed is the landmark stage only, as a video stream runs it: one face per image, batch 1, on a box
that a face detector gave (dlib's HOG boxes, ``runs/dlib300w/dlib_boxes.json`` from ``bench/dlib_landmarks.py
predict``), so the detector itself is left out for both. For ours: the crop, the graph (exported with
``tools.export --decode``: flip test inside when the config has it), the mapping back and the config's re-crop
passes (``DecodedKeypointRunner.predict_boxes``; ``FIRST.onnx+SECOND.onnx`` times a cascade, the first
model's single pass placing the second's re-crops). For dlib: ``shape_predictor(image, box)``, in dlib's own
python (a subprocess of this run, same faces, same boxes). Each face is timed ``--rounds`` times; the median
over all timings is reported (the held-out split has 121 faces: two rounds give 242 timings). Each model runs
``--block`` faces in one go, then the next model's turn comes, in an order that rotates from block to block,
and each round of ours is followed by one of dlib's, so that the machine's slow spells fall on every model
alike: compare the rows of one run, not of two.

Accuracy is the face report of ``tools.eval`` (inter-ocular NME, FR, AUC) of the same predictions, so every
point of the picture (NME against ms per face, ``--plot``) is one model on the same faces and boxes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a script: bench/ is on sys.path
from datasets.coco_common import resolve_image_path, split_image_ids  # noqa: E402
from datasets.image_io import read_image_rgb  # noqa: E402
from engine.evaluation.face_metrics import FaceReportConfig, build_face_report, evaluate_detected  # noqa: E402
from engine.export.runtime import DecodedKeypointRunner  # noqa: E402
from models.errors import InputError  # noqa: E402
from tools._common import run_cli  # noqa: E402

FACES = "../shared/data/faces300w_train"

# Runs in dlib's python: times shape_predictor on the faces and boxes given as JSON on stdin.
DLIB_TIMER = r"""
import json, sys, time
import dlib, face_recognition_models
job = json.load(sys.stdin)
predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
times, points = [], {}
for r in range(job["rounds"]):
    for face in job["faces"]:
        image = dlib.load_rgb_image(face["path"])
        x1, y1, x2, y2 = (int(round(v)) for v in face["box"])
        start = time.perf_counter()
        shape = predictor(image, dlib.rectangle(x1, y1, x2, y2))
        times.append(time.perf_counter() - start)
        points[str(face["index"])] = [[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)]
print(json.dumps({"times": times, "points": points, "dlib": dlib.__version__}))
"""


class Instance:
    """A ground-truth face as the face report pairs predictions with it."""

    def __init__(self, image_id: int, bbox: np.ndarray, keypoints: np.ndarray):
        self.image_id, self.bbox, self.keypoints = image_id, bbox, keypoints


def held_out_faces(ann_file: str, image_root: str, boxes_file: str) -> tuple[list[dict], list[Instance]]:
    """The held-out split of the faces config (10 %, seed 0): each face with its image path and dlib's box."""
    data = json.load(open(ann_file))
    keep = split_image_ids(sorted(int(im["id"]) for im in data["images"]), "holdout", 0.1, 0)
    images = {int(im["id"]): im for im in data["images"] if int(im["id"]) in keep}
    boxes = {}
    for d in json.load(open(boxes_file)):
        x, y, w, h = d["bbox"]
        boxes.setdefault(int(d["image_id"]), []).append([x, y, x + w - 1, y + h - 1])
    faces, truth = [], []
    for ann in data["annotations"]:
        image_id = int(ann["image_id"])
        if image_id not in images or not boxes.get(image_id):
            continue
        x, y, w, h = ann["bbox"]
        gt_box = np.array([x, y, x + w - 1, y + h - 1], float)
        # dlib_boxes.json holds one box per annotated face, in annotation order.
        box = np.asarray(boxes[image_id][sum(1 for f in faces if f["image_id"] == image_id)], float)
        path = resolve_image_path(image_root, images[image_id]["file_name"], ann_file)
        faces.append({"index": len(faces), "image_id": image_id, "path": os.path.abspath(path), "box": box.tolist()})
        truth.append(Instance(image_id, gt_box, np.asarray(ann["keypoints"], float).reshape(-1, 3)))
    return faces, truth


def cascade_runner(spec: str, threads: int) -> DecodedKeypointRunner:
    """``A.onnx`` or ``FIRST.onnx+SECOND.onnx``: a cascade, where the first model's single pass places the
    second's crops and the second runs its config's re-crop passes on them. The first pass runs on the calling
    thread alone: with a thread pool of its own, the two sessions' pools spin against each other on two cores
    (measured: 7.1 ms per face with both on 2 threads, 3.4 ms with the first on 1; threads that sleep after
    each run, ``spin=False``, 3.8-4.4 ms)."""
    *first, last = spec.split("+")
    if len(first) > 1:
        raise SystemExit(f"--model {spec}: a cascade is FIRST.onnx+SECOND.onnx, two models")
    first_pass = DecodedKeypointRunner(first[0], threads=1) if first else None
    return DecodedKeypointRunner(last, threads=threads, first_pass=first_pass)


def time_ours(paths: list[str], faces: list[dict], rounds: int, threads: int, between_rounds=None,
              block: int = 20) -> tuple[list[list[float]], list[np.ndarray]]:
    """Times every model on every face, ``rounds`` times. Each round goes through the faces ``block`` at a
    time, and each model runs the whole block in one go, as a video stream would run it (interleaving models
    face by face is slower for all of them: the previous model's onnxruntime threads still spin for work while
    the next one runs), after two untimed warm-up faces (caches, those spinning threads). The models' order
    rotates from block to block, so that a slow spell of the machine, which lasts seconds, falls on every
    model alike rather than on the one whose turn it was. ``between_rounds(r)`` runs after each round
    (dlib's round, in its own process).
    Returns one list of timings (seconds) and one [faces, K, 2] array of points (first round) per model."""
    runners = [cascade_runner(path, threads) for path in paths]
    images = [read_image_rgb(f["path"]) for f in faces]
    times = [[] for _ in runners]
    points = [[None] * len(faces) for _ in runners]
    starts = range(0, len(faces), block)
    for r in range(rounds):
        for b, first in enumerate(starts):
            chunk = range(first, min(first + block, len(faces)))
            for k in range(len(runners)):
                m = (r + b + k) % len(runners)
                for i in chunk[:2]:                                 # warm-up, untimed
                    runners[m].predict_boxes(images[i], [faces[i]["box"]])
                for i in chunk:
                    start = time.perf_counter()
                    pred = runners[m].predict_boxes(images[i], [faces[i]["box"]])
                    times[m].append(time.perf_counter() - start)
                    if r == 0:
                        points[m][i] = pred[0, :, :2]
        if between_rounds is not None:
            between_rounds(r)
    return times, [np.stack(p) for p in points]


def time_dlib(python: str, faces: list[dict], rounds: int) -> tuple[list[float], np.ndarray, str]:
    job = json.dumps({"faces": faces, "rounds": rounds})
    out = subprocess.run([python, "-c", DLIB_TIMER], input=job, capture_output=True, text=True, check=True)
    res = json.loads(out.stdout)
    points = np.stack([np.asarray(res["points"][str(f["index"])], float) for f in faces])
    return res["times"], points, res["dlib"]


def score(points: np.ndarray, faces: list[dict], truth: list[Instance]) -> dict:
    report = build_face_report(FaceReportConfig(), points.shape[1])
    records = [{"image_id": f["image_id"], "bbox": np.asarray(f["box"]), "keypoints": p} for f, p in zip(faces, points)]
    return evaluate_detected(report, records, truth, sorted({f["image_id"] for f in faces}))


def plot(rows: list[dict], path: str, budget_ms: float = 5.0) -> dict:
    """NME against ms per face (log scale), dlib as a grey square, the fast path's budget as a dashed line.
    Each label goes to the nearest of 36 places around its point (earlier models, hollow: above first) where it
    stays in the frame and covers no other label or point, or, where none is free, to the one that covers
    least; a label away from its point gets a thin line to it. Returns the axes' ``frame``, ``xlim`` and the
    ``labels``' boxes (display pixels), for checking the layout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    for row in rows:
        peer, before = row["label"] == "dlib", row.get("before", False)
        colour = "tab:gray" if peer else "tab:blue"
        ax.scatter(row["ms/face"], 100 * row["NME"], marker="s" if peer else "o", s=50, zorder=3, edgecolors=colour,
                   facecolors="none" if before else colour)
    ax.axvline(budget_ms, color="tab:green", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    times = [r["ms/face"] for r in rows]
    lo, hi = min(times) / 2, max(max(times) * 2, budget_ms * 1.6)        # the budget line always in view
    ax.set_xlim(lo, hi)
    ax.set_xticks([t for t in (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500) if lo <= t <= hi])
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(y=0.25)
    ax.text(budget_ms * 1.05, ax.get_ylim()[0], f"{budget_ms:g} ms", color="tab:green", fontsize=8, va="bottom")
    ax.set_xlabel("ms per face (median, batch 1, landmark stage only, 2 threads)")
    ax.set_ylabel("NME (%), inter-ocular, dlib's boxes")
    ax.set_title("300-W held-out faces: accuracy against time per face", fontsize=9)
    ax.grid(alpha=0.3, which="major")
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    points = [ax.transData.transform((r["ms/face"], 100 * r["NME"])) for r in rows]
    taken = [matplotlib.transforms.Bbox.from_extents(x - 6, y - 6, x + 6, y + 6) for x, y in points]
    # Next to the point first, then further out (points a few hundredths apart crowd each other's labels).
    places = sorted(((dx, dy) for dx in (6, -6, 40, -40, 80, -80) for dy in (8, -22, 30, -44, 52, -66)),
                    key=lambda o: (abs(o[0]) > 6) + abs(o[1] + 7) / 22)

    def label_at(row: dict, dx: int, dy: int, line: bool = False):
        ms, nme = row["ms/face"], 100 * row["NME"]
        return ax.annotate(f"{row['label']}\n{ms:.1f} ms, {nme:.2f} %", (ms, nme), textcoords="offset points",
                           xytext=(dx, dy), fontsize=8, ha="left" if dx > 0 else "right",
                           color="dimgray" if row.get("before") else "black",
                           arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5} if line else None)

    def covered(box) -> float:          # area of the placed labels and points under ``box``, in pixels
        return sum(max(0, min(box.x1, t.x1) - max(box.x0, t.x0)) * max(0, min(box.y1, t.y1) - max(box.y0, t.y0))
                   for t in taken)

    for row in sorted(rows, key=lambda r: r["ms/face"]):
        order = sorted(places, key=lambda o: o[1] < 0) if row.get("before") else places
        best = (float("inf"), 6, 8, None)
        for dx, dy in order:
            label = label_at(row, dx, dy)   # without its line here: an annotation's extent includes the line
            box = label.get_window_extent(renderer)
            label.remove()
            if frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1) and covered(box) < best[0]:
                best = (covered(box), dx, dy, box)
                if best[0] == 0:
                    break
        _, dx, dy, box = best
        label = label_at(row, dx, dy, line=abs(dy) > 22 or abs(dx) > 6)   # a line to a label away from its point
        taken.append(box or label.get_window_extent(renderer))
    fig.savefig(path)
    plt.close(fig)
    return {"frame": frame, "xlim": ax.get_xlim(), "labels": taken[len(rows):]}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=[], metavar="LABEL=FILE.onnx",
                   help="a keypoint model exported with tools.export --decode; repeat to compare. FIRST.onnx+"
                        "SECOND.onnx: a cascade (the first model's points place the second's re-crops)")
    p.add_argument("--before", action="append", default=[], metavar="LABEL=FILE.onnx",
                   help="an earlier model to show beside them (drawn hollow in the plot); repeat")
    p.add_argument("--dlib-python", help="dlib's python (pip install dlib-bin face-recognition-models)")
    p.add_argument("--ann-file", default=f"{FACES}/annotations.json")
    p.add_argument("--image-root", default=f"{FACES}/images")
    p.add_argument("--boxes", default="runs/dlib300w/dlib_boxes.json", help="bench/dlib_landmarks.py predict's")
    p.add_argument("--rounds", type=int, default=2, help="timings per face (median over all)")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    p.add_argument("--block", type=int, default=20,
                   help="faces each model runs in one go before the next model's turn (the turns rotate)")
    p.add_argument("--plot", default="docs/images/face_nme_vs_ms.png")
    p.add_argument("--json", help="write the table here too")
    args = p.parse_args(argv)
    if args.block < 1 or args.rounds < 1:
        p.error(f"--block and --rounds must be 1 or more (got {args.block} and {args.rounds})")
    if not os.path.isfile(args.boxes):
        raise InputError(f"--boxes {args.boxes} does not exist; write dlib's face boxes with <dlib-venv>/bin/python "
                         f"bench/dlib_landmarks.py predict --out-dir {os.path.dirname(args.boxes) or '.'}")
    faces, truth = held_out_faces(args.ann_file, args.image_root, args.boxes)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    flags = open("/proc/cpuinfo").read()
    print(f"{len(faces)} faces x {args.rounds} rounds; {cpu}; {os.cpu_count()} cores; avx512_bf16 "
          f"{'avx512_bf16' in flags}, amx {'amx_tile' in flags}; onnxruntime threads {args.threads}")
    specs = [(m, False) for m in args.model] + [(m, True) for m in args.before]
    labels, paths = zip(*(spec.partition("=")[::2] for spec, _ in specs)) if specs else ((), ())
    dlib_runs = []

    def dlib_round(r: int) -> None:     # one round of dlib after each round of ours, same faces, same boxes
        dlib_runs.append(time_dlib(args.dlib_python, faces, 1))

    # With no model of ours, time_ours still runs the rounds, dlib's alone.
    times, points = time_ours(list(paths), faces, args.rounds, args.threads,
                              between_rounds=dlib_round if args.dlib_python else None, block=args.block)
    rows = []
    for label, (_, before), t, pts in zip(labels, specs, times, points):
        rows.append({"label": label, "ms/face": 1000 * statistics.median(t), "timings": len(t),
                     **score(pts, faces, truth), **({"before": True} if before else {})})
    if dlib_runs:
        dlib_times = [t for run in dlib_runs for t in run[0]]
        rows.append({"label": "dlib", "ms/face": 1000 * statistics.median(dlib_times), "timings": len(dlib_times),
                     "dlib": dlib_runs[0][2], **score(dlib_runs[0][1], faces, truth)})
    keys = ["ms/face", "NME", "FR@0.08", "AUC@0.08", "NME/jaw", "timings"]
    print(f"{'':<20}" + "".join(f"{k:>11}" for k in keys))
    for row in rows:
        print(f"{row['label']:<20}" + "".join(f"{row.get(k, 0):>11.4f}" for k in keys))
    if args.plot and rows:
        plot(rows, args.plot)
        print(f"wrote {args.plot}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    run_cli(main)
