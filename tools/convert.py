"""Convert labels from the tools people label in to one COCO keypoint json (every split in the one file).

    python -m tools.convert dlc     PROJECT_FOLDER      --output data/mouse.json     # DeepLabCut project
    python -m tools.convert yolo    data.yaml           --output data/tiger.json     # Ultralytics YOLO-pose
    python -m tools.convert labelme LABELME_FOLDER      --output data/x.json [--keypoints nose,l_eye,r_eye]
    python -m tools.convert cvat    annotations.xml     --output data/x.json [--image-root DIR] [--skeleton NAME]
    python -m tools.convert pts     IMAGES_WITH_PTS     --output data/faces.json     # 300-W / iBUG .pts
    python -m tools.convert coco-to-yolo data/x.json --image-root DIR --output yolo_set/   # the reverse (pose or boxes)

It prints the image root that the json's ``file_name``s resolve against: pass it to ``tools.make_config
--image-root``. Where the labelling tool showed a picture that is not a file of the source as stored (LabelMe's
``imageData`` without the image, a photo turned upright by its EXIF orientation in LabelMe, CVAT or Ultralytics),
those images are written to ``<output>_images/`` beside the json, the others linked there, and that folder is
the image root (the source folder is only read).

Bad input (a missing image, a row with the wrong number of columns, a point outside the image, an unknown
bodypart, a label file without its image, an image size that fits neither the stored nor the upright picture)
stops with every problem named and counted and nothing written; ``--skip-bad`` leaves those items out instead
and prints the counts. docs/formats.md has each format's coordinate mapping.
"""

from __future__ import annotations

import argparse
import json
import os

from datasets.formats.common import Conversion, write_coco_json, write_images
from datasets.formats.cvat import convert_cvat
from datasets.formats.dlc import convert_dlc
from datasets.formats.labelme import convert_labelme
from datasets.formats.pts import convert_pts
from datasets.formats.yolo import coco_to_yolo, convert_yolo
from models.errors import InputError
from tools._common import add_debug_flag, run_cli

FORMATS = ("dlc", "yolo", "labelme", "cvat", "pts")
_READERS = {"dlc": convert_dlc, "yolo": convert_yolo, "labelme": convert_labelme, "cvat": convert_cvat,
            "pts": convert_pts}
# The options each reader takes besides the source and skip_bad: convert()'s argument -> the reader's.
_READER_OPTIONS = {"labelme": {"keypoints": "keypoint_names"},
                   "cvat": {"image_root": "image_root", "skeleton": "skeleton"}}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("format", choices=FORMATS + ("coco-to-yolo",), help="the source's format")
    p.add_argument("source", help="DeepLabCut project folder | YOLO data.yaml | LabelMe folder | CVAT xml | "
                                  "folder of images with .pts | (coco-to-yolo) a COCO keypoint or detection json")
    p.add_argument("--output", required=True, help="the COCO json to write (coco-to-yolo: the folder to write)")
    p.add_argument("--skip-bad", action="store_true", help="leave bad items out (counted) instead of stopping")
    p.add_argument("--keypoints", help="labelme: the keypoint names in order, comma-separated")
    p.add_argument("--image-root", help="cvat: the folder the image names resolve against (default: images/ "
                                        "beside the xml, else its folder); coco-to-yolo: the COCO file's image root")
    p.add_argument("--skeleton", help="cvat: the skeleton label to read when the task has several")
    p.add_argument("--copy-images", action="store_true", help="coco-to-yolo: copy the images (default: symlinks)")
    return p


def convert(fmt: str, source: str, skip_bad: bool = False, keypoints: list[str] | None = None,
            image_root: str | None = None, skeleton: str | None = None) -> Conversion:
    """Dispatch to the format's reader (datasets.formats.*)."""
    if fmt not in _READERS:
        raise InputError(f"unknown format {fmt!r}; use one of {FORMATS}")
    given = {"keypoints": keypoints, "image_root": image_root, "skeleton": skeleton}
    options = {name: given[arg] for arg, name in _READER_OPTIONS.get(fmt, {}).items()}
    return _READERS[fmt](source, skip_bad=skip_bad, **options)


def main(argv: list[str] | None = None):
    args = add_debug_flag(get_args_parser()).parse_args(argv)
    if args.format == "coco-to-yolo":
        return _coco_to_yolo(args)
    keypoints = [k.strip() for k in args.keypoints.split(",")] if args.keypoints else None
    result = convert(args.format, args.source, args.skip_bad, keypoints, args.image_root, args.skeleton)
    result = write_images(result, args.output)     # before the json: a json on disk has all its images
    write_coco_json(args.output, result.coco)
    splits = sorted({img.get("split") for img in result.coco["images"] if img.get("split")})
    cat = result.coco["categories"][0]
    print(f"wrote {args.output}: {len(result.coco['images'])} images, {len(result.coco['annotations'])} instances, "
          f"{len(cat['keypoints'])} keypoints{', splits ' + ', '.join(splits) if splits else ''}")
    for key, n in result.counts.items():
        if n:
            print(f"  {key}: {n}")
    for note in result.notes:
        print(f"  note: {note}")
    if not result.coco["annotations"]:
        print("  warning: no instance was written; the counts above say what was left out and why")
    print(f"image root: {result.image_root}")
    print(f"next: python -m tools.make_config {args.output} --image-root {result.image_root} "
          f"--output {os.path.splitext(args.output)[0]}.yaml")
    return result


def _coco_to_yolo(args) -> str:
    if not args.image_root:
        raise InputError("coco-to-yolo needs --image-root (the folder the COCO file's file_names resolve against)")
    if not os.path.isfile(args.source):
        raise InputError(f"COCO json not found: {args.source} (SOURCE)")
    with open(args.source) as f:
        coco = json.load(f)
    path = coco_to_yolo(coco, args.image_root, args.output, copy_images=args.copy_images)
    print(f"wrote {path} ({len(coco['images'])} images; labels under {os.path.join(args.output, 'labels')})")
    return path


if __name__ == "__main__":
    run_cli(main)
