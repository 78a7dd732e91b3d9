"""Per-worker memory (PSS / USS) of the training loaders over one epoch, on a COCO-sized annotation file.

DataLoader workers are forked from the process that read the annotations. Pages are shared copy-on-write, but
CPython writes into every object it touches (reference counts, and the GC header of container objects on a
collection), so a dataset held as a Python list of per-instance objects is copied page by page into every
worker as the epoch reaches its samples: USS (pages only this process maps) and PSS (shared pages divided
among their users) then climb by hundreds of MB per worker (pytorch/pytorch#13246). Arrays (one object
each, whose data pages are only read) stay shared.

What it does:

1. In a child process (so that the generator's garbage is not in the measured parent's heap) writes a synthetic
   COCO keypoint json to a temporary folder: ``--images`` image records and ``--instances`` person instances
   (17 keypoints, 2 per image by default), all readable. The image files are hard links to a handful of
   small real JPEGs (of different sizes), one distinct file name per record: the reader resolves, probes
   (header and end-of-image marker) and stores each path as it would for COCO, without 100k encodes.
2. Reads it with :func:`datasets.coco_keypoints.load_coco_keypoints` and builds the training loader as
   ``engine.tasks.keypoints.build`` does (``TopDownKeypointDataset(train=True)`` with the default augmentation
   and COCO's flip map / upper body, ``make_loader`` -> ``seeded_loader``: ``--workers`` persistent workers),
   with a small crop (``--crop``) so an epoch is cheap, and runs one epoch (or ``--batches``).
3. Samples each worker's (and the main process's) PSS and USS from ``/proc/<pid>/smaps_rollup`` after the
   first batch, at the middle and after the last batch, and prints them with the growth.
4. The same for the detection loader (``load_coco_detection`` on the same file, ``DetectionTransformDataset``,
   ``seeded_loader`` with ``detection_collate_fn``, as ``engine.tasks.detection.build.make_loader``); ``--loaders``
   picks which.

Run from the repository root (Linux only)::

    .venv/bin/python bench/bench_loader_memory.py                      # 100k images, 200k instances, 4 workers
    .venv/bin/python bench/bench_loader_memory.py --images 10000 --instances 20000   # a quick look

USS = Private_Clean + Private_Dirty; MB = 2**20 bytes. Growth is end minus start.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a script: bench/ is on sys.path

# A handful of real JPEG sizes (w, h): the records point at these through hard links.
BASE_SIZES = [(160, 120), (120, 160), (200, 150), (128, 128)]


# ---------------------------------------------------------------------------------------------- data
def write_dataset(folder: str, num_images: int, num_instances: int, seed: int = 0) -> tuple[str, str]:
    """``(json path, image root)`` of a synthetic COCO keypoint set (see the module docstring)."""
    import cv2

    from datasets.skeletons import COCO_KEYPOINT_NAMES, COCO_SKELETON

    rng = np.random.default_rng(seed)
    root = os.path.join(folder, "images")
    base_dir = os.path.join(folder, "base")
    os.makedirs(root, exist_ok=True)
    os.makedirs(base_dir, exist_ok=True)
    bases = []
    for i, (w, h) in enumerate(BASE_SIZES):
        path = os.path.join(base_dir, f"base{i}.jpg")
        cv2.imwrite(path, rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        bases.append(path)
    which = rng.integers(0, len(bases), num_images)
    images = []
    for i in range(num_images):
        name = f"{i + 1:012d}.jpg"
        dst = os.path.join(root, name)
        try:
            os.link(bases[which[i]], dst)
        except OSError:          # a file system without hard links: a real copy (slower, same result)
            import shutil
            shutil.copyfile(bases[which[i]], dst)
        w, h = BASE_SIZES[which[i]]
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
    # Instances spread over the images (every image gets at least one when there are enough).
    owner = np.concatenate([np.arange(num_images), rng.integers(0, num_images, max(0, num_instances - num_images))])
    owner = np.sort(owner[:num_instances])
    k = len(COCO_KEYPOINT_NAMES)
    annotations = []
    for a, img_index in enumerate(owner):
        w, h = BASE_SIZES[which[img_index]]
        bw, bh = rng.uniform(0.2, 0.6) * w, rng.uniform(0.3, 0.8) * h
        x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        kx = rng.uniform(x, x + bw, k)
        ky = rng.uniform(y, y + bh, k)
        v = rng.choice([0, 1, 2], size=k, p=[0.2, 0.1, 0.7])
        v[0] = 2
        kpts = np.stack([np.where(v > 0, kx, 0), np.where(v > 0, ky, 0), v], 1)
        annotations.append({"id": a + 1, "image_id": int(img_index) + 1, "category_id": 1, "iscrowd": 0,
                            "bbox": [round(float(x), 2), round(float(y), 2), round(float(bw), 2), round(float(bh), 2)],
                            "area": round(float(bw * bh * 0.7), 2), "num_keypoints": int((v > 0).sum()),
                            "keypoints": [round(float(t), 2) if j % 3 < 2 else int(t)
                                          for j, t in enumerate(kpts.reshape(-1))]})
    categories = [{"id": 1, "name": "person", "supercategory": "person", "keypoints": list(COCO_KEYPOINT_NAMES),
                   "skeleton": [list(p) for p in COCO_SKELETON]}]
    ann = os.path.join(folder, "person_keypoints.json")
    with open(ann, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return ann, root


# ---------------------------------------------------------------------------------------------- memory
def memory_mb(pid: int) -> tuple[float, float]:
    """``(PSS, USS)`` of a process in MB, from ``/proc/<pid>/smaps_rollup``."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                fields[parts[0][:-1]] = int(parts[1])
    uss = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return fields["Pss"] / 1024, uss / 1024


def machine() -> str:
    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{model}, {os.cpu_count()} logical cores ({len(os.sched_getaffinity(0))} usable), {mem:.0f} GiB RAM, "
            f"Linux {platform.release()}, Python {platform.python_version()}, load average "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def run_epoch(loader, max_batches: int | None) -> tuple[list[str], dict[str, dict[str, tuple[float, float]]], float]:
    """Iterate ``loader`` for one epoch (or ``max_batches``); returns the process names, their (PSS, USS) at
    start/middle/end, and the epoch's seconds."""
    total = len(loader) if max_batches is None else min(max_batches, len(loader))
    marks: dict[int, list[str]] = {}
    for label, b in (("start", 0), ("middle", total // 2), ("end", total - 1)):
        marks.setdefault(b, []).append(label)
    it = iter(loader)
    workers = [w.pid for w in getattr(it, "_workers", [])]
    names = [f"worker {i}" for i in range(len(workers))] + ["main"]
    pids = workers + [os.getpid()]
    samples: dict[str, dict[str, tuple[float, float]]] = {n: {} for n in names}
    t0 = time.perf_counter()
    for b in range(total):
        next(it)
        if b in marks:
            for name, pid in zip(names, pids):
                for label in marks[b]:
                    samples[name][label] = memory_mb(pid)
            print(f"  batch {b + 1}/{total} ({', '.join(marks[b])}), {time.perf_counter() - t0:.0f} s", flush=True)
    seconds = time.perf_counter() - t0
    del it
    return names, samples, seconds


def print_table(title: str, names, samples) -> None:
    print(f"\n{title}")
    print(f"{'process':<10} {'PSS start':>10} {'PSS mid':>9} {'PSS end':>9} {'PSS grow':>9}   "
          f"{'USS start':>10} {'USS mid':>9} {'USS end':>9} {'USS grow':>9}")
    for n in names:
        s = samples[n]
        p = [s[m][0] for m in ("start", "middle", "end")]
        u = [s[m][1] for m in ("start", "middle", "end")]
        print(f"{n:<10} {p[0]:>10.1f} {p[1]:>9.1f} {p[2]:>9.1f} {p[2] - p[0]:>+9.1f}   "
              f"{u[0]:>10.1f} {u[1]:>9.1f} {u[2]:>9.1f} {u[2] - u[0]:>+9.1f}")


# ---------------------------------------------------------------------------------------------- loaders
def keypoint_loader(ann: str, root: str, args):
    """The training loader as ``engine.tasks.keypoints.build.build_experiment`` makes it (the KeypointDataset
    itself is dropped, as there: only the TopDownKeypointDataset stays)."""
    from datasets.coco_keypoints import load_coco_keypoints
    from datasets.skeletons import COCO_FLIP_INDEX, COCO_UPPER_BODY_IDS
    from datasets.topdown import TopDownKeypointDataset
    from datasets.topdown_augment import TopDownAugment
    from engine.tasks.keypoints.build import make_loader

    t0 = time.perf_counter()
    data = load_coco_keypoints(ann, root)
    print(f"keypoints: read {len(data.instances)} instances of {len(data.image_ids)} images in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    dataset = TopDownKeypointDataset(data.instances, (args.crop, args.crop), COCO_FLIP_INDEX, train=True,
                                     augment=TopDownAugment(), upper_body_ids=COCO_UPPER_BODY_IDS, bbox_padding=1.25)
    return make_loader(dataset, batch_size=args.batch, shuffle=True, seed=0, num_workers=args.workers)


def detection_loader(ann: str, root: str, args):
    """The training loader as ``engine.tasks.detection.build.build_experiment`` makes it (its ``make_loader`` is
    ``seeded_loader`` with ``detection_collate_fn(max_objects)``, called here directly)."""
    from datasets.coco_detection import load_coco_detection
    from datasets.detection_transforms import DetectionAugment, DetectionTransformDataset, detection_collate_fn
    from datasets.sampler import seeded_loader

    t0 = time.perf_counter()
    data = load_coco_detection(ann, root)
    print(f"detection: read {len(data.images)} images ({data.num_objects} objects) in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    dataset = DetectionTransformDataset(data.images, (args.crop, args.crop), train=True, augment=DetectionAugment())
    return seeded_loader(dataset, batch_size=args.batch, shuffle=True, seed=0, num_workers=args.workers,
                         collate_fn=detection_collate_fn(128))


def measure(kind: str, make, ann: str, root: str, args) -> None:
    loader = make(ann, root, args)
    gc.collect()
    pss, uss = memory_mb(os.getpid())
    print(f"{kind}: main process before the workers start: PSS {pss:.1f} MB, USS {uss:.1f} MB; "
          f"{len(loader)} batches of {args.batch}", flush=True)
    names, samples, seconds = run_epoch(loader, args.batches)
    print_table(f"{kind} loader, {args.workers} workers, batch {args.batch}, crop {args.crop}x{args.crop}: "
                f"PSS / USS in MB ({seconds:.0f} s)", names, samples)
    worker_growth = [samples[n]["end"][1] - samples[n]["start"][1] for n in names if n != "main"]
    if worker_growth:
        print(f"{kind}: USS growth per worker, mean {np.mean(worker_growth):.1f} MB, max {max(worker_growth):.1f} MB")
    del loader
    gc.collect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--instances", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--crop", type=int, default=64, help="model input (square) of both loaders")
    parser.add_argument("--batches", type=int, default=None, help="stop after this many batches (default: an epoch)")
    parser.add_argument("--loaders", nargs="+", choices=["keypoints", "detection"], default=["keypoints", "detection"],
                        help="which training loaders to measure")
    parser.add_argument("--keep", default=None, help="folder to write the data to and keep (default: a temp folder)")
    parser.add_argument("--write-only", default=None, help=argparse.SUPPRESS)   # the child that writes the data
    args = parser.parse_args()
    if args.write_only:
        write_dataset(args.write_only, args.images, args.instances)
        return

    import warnings

    import torch
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="This DataLoader will create")   # more workers than cores: on purpose
    print(f"machine: {machine()}")
    print(f"torch {torch.__version__}, numpy {np.__version__}; {args.images} images, {args.instances} instances, "
          f"{args.workers} workers, batch {args.batch}, crop {args.crop}x{args.crop}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_loader_memory_") as tmp:
        folder = args.keep or tmp
        os.makedirs(folder, exist_ok=True)
        ann, root = os.path.join(folder, "person_keypoints.json"), os.path.join(folder, "images")
        if not os.path.isfile(ann):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, os.path.abspath(__file__), "--write-only", folder, "--images",
                            str(args.images), "--instances", str(args.instances)], check=True)
            print(f"wrote {ann} ({os.path.getsize(ann) / 2**20:.0f} MB) and {args.images} hard-linked images in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
        if "keypoints" in args.loaders:
            measure("keypoints", keypoint_loader, ann, root, args)
        if "detection" in args.loaders:
            measure("detection", detection_loader, ann, root, args)


if __name__ == "__main__":
    main()
