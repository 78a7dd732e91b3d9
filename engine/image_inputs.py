"""The COCO image id of each image an inference run reads.

``tools.infer`` takes images (listed by ``engine.video.split_inputs``); results files name images by COCO
id, so each input gets one: from a COCO json's ``images`` (``--image-info``), else from a numeric file name
(``000000000785.jpg`` is id 785). With a detection-results file the id decides which boxes an image gets,
so an input whose id cannot be told is an error there; otherwise it gets a made-up id above the largest
known one.
"""

from __future__ import annotations

import json
import os

from models.errors import InputError


def image_ids_for(files: list[str], image_info: str | None) -> list[int | None]:
    """Id of each file: from ``image_info``'s file names (the longest matching path suffix), else from a
    numeric stem, else None."""
    if image_info:
        with open(image_info) as f:
            images = json.load(f).get("images")
        if not isinstance(images, list):
            raise InputError(f"--image-info {image_info} has no 'images' list; give the images' COCO json")
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


def resolve_image_ids(files: list[str], ids: list[int | None], boxes: str | None,
                      image_info: str | None) -> list[int]:
    """Every file's id. With ``boxes`` (a detection file) an unknown id is an error (a made-up id could be
    another image's and take its boxes); without, files get made-up ids above the largest known one, in
    file order."""
    unresolved = [f for f, i in zip(files, ids) if i is None]
    if unresolved and boxes:
        why = (f"--image-info {image_info} does not list them" if image_info else
               "their names are not numbers and no --image-info was given")
        raise InputError(f"--boxes {boxes}: cannot tell the image id of {len(unresolved)} input files, e.g. "
                         f"{unresolved[:3]} ({why}); pass --image-info ann.json, the COCO json of these images whose "
                         f"'images' give each file_name its id, so that each image gets its own boxes")
    next_id = max((i for i in ids if i is not None), default=0) + 1
    out = []
    for i in ids:
        if i is None:
            i, next_id = next_id, next_id + 1
        out.append(i)
    return out


def inputs_with_ids(files: list[str], image_info: str | None, boxes: str | None,
                    max_images: int | None = None) -> tuple[list[tuple[str, int]], list[int | None]]:
    """``([(path, id)] of the first ``max_images`` of ``files``, the ids known for every file)``: only the
    images processed need an id, but a detection file's ids are checked against every input's."""
    ids = image_ids_for(files, image_info)
    n = max_images or len(files)
    used = resolve_image_ids(files[:n], ids[:n], boxes, image_info)
    return list(zip(files[:n], used)), used + ids[n:]


def category_names_of(image_info: str | None) -> dict[int, str]:
    """{category id: name} of a COCO json's ``categories`` (empty without one)."""
    if not image_info:
        return {}
    with open(image_info) as f:
        cats = json.load(f).get("categories") or []
    return {int(c["id"]): str(c["name"]) for c in cats if isinstance(c, dict) and "id" in c and "name" in c}
