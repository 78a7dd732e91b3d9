"""The embedded default dataset: articulated figures with COCO's 17 keypoints, written as images + COCO json.

Every figure faces the viewer (its left side is on the image's right when upright), so left and right are
defined the way they are for people, and a mirrored figure is again a valid figure with left and right
swapped: flip augmentation and flip testing mean what they mean on COCO. Each image has textured
background clutter (including limb-like strokes) and one to a few figures with random proportions, pose,
head turn, scale, rotation and colours; some figures are cut by the image border (keypoints outside are
unlabelled, ``v = 0``) and some are covered by occluders or by other figures (``v = 1``).

Everything is drawn from ``numpy.random.default_rng([seed, split, image_index])``, so the data set is a
pure function of its settings. It is written once to ``root/`` as JPEG images and COCO json; every reader
and tool then treats it like real data. ``area`` is the figure's silhouette area in pixels (the area
OKS uses), ``bbox`` the silhouette's tight box (COCO ``[x, y, w, h]``, ``w = x2 - x1 + 1``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

from datasets.skeletons import COCO_KEYPOINT_NAMES, COCO_SKELETON
from datasets.synthetic_writer import ensure_written, write_split_images

log = logging.getLogger(__name__)

GENERATOR_VERSION = 5


@dataclass
class SyntheticKeypointSpec:
    """Settings of the synthetic keypoint set; the written set is a pure function of these."""

    num_train_images: int = 1200
    num_val_images: int = 150
    min_image_size: int = 160
    max_image_size: int = 224
    max_figures: int = 3
    min_figure_height: float = 64.0     # head top to feet, pixels
    max_figure_height: float = 150.0
    max_rotation_deg: float = 30.0
    truncation_prob: float = 0.15       # chance that a figure is placed across the image border
    occluder_prob: float = 0.2          # chance per figure of an occluding shape over it
    max_overlap: float = 0.15           # largest IoU between the figures' keypoint boxes
    seed: int = 0


def ensure_synthetic_dataset(root: str, spec: SyntheticKeypointSpec) -> dict[str, str]:
    """Write the set under ``root`` unless an identical one is already there. Returns the json paths."""
    return ensure_written(root, spec, GENERATOR_VERSION, "keypoint", generate_split)


def generate_split(root: str, split: str, num_images: int, spec: SyntheticKeypointSpec,
                   progress: bool = True) -> dict:
    """Draw and write ``num_images`` images of one split; returns its COCO dict."""
    def render(rng):
        image, figures = render_image(rng, spec)
        for fig in figures:
            fig["category_id"] = 1
        return image, figures

    images, annotations = write_split_images(root, split, num_images, spec.seed, render, f"synthetic {split}",
                                             progress)
    category = {"id": 1, "name": "person", "supercategory": "person",
                "keypoints": list(COCO_KEYPOINT_NAMES), "skeleton": [list(p) for p in COCO_SKELETON]}
    return {"info": {"description": f"synthetic figures, {split}", "generator_version": GENERATOR_VERSION},
            "images": images, "annotations": annotations, "categories": [category]}


# ---------------------------------------------------------------------------------------------- drawing
def render_image(rng: np.random.Generator, spec: SyntheticKeypointSpec) -> tuple[np.ndarray, list[dict]]:
    """One RGB image and its annotations (COCO dicts without ids)."""
    w = int(rng.integers(spec.min_image_size, spec.max_image_size + 1))
    h = int(rng.integers(spec.min_image_size, spec.max_image_size + 1))
    image = _background(rng, w, h)
    owner = np.zeros((h, w), np.int32)           # which figure (1-based) owns each pixel, 0 = none
    n_fig = int(rng.choice(np.arange(1, spec.max_figures + 1),
                           p=_figure_count_probs(spec.max_figures)))
    figures = []
    placed_boxes: list[np.ndarray] = []
    for _ in range(n_fig):
        pose = _random_pose(rng)
        for _ in range(20):
            pts, scale = _place(pose, rng, w, h, spec)
            box = np.r_[pts.min(0), pts.max(0)]
            if all(_iou(box, b) < spec.max_overlap for b in placed_boxes):
                break
        else:
            continue      # no room left for another figure that overlaps little enough
        placed_boxes.append(box)
        silhouette = np.zeros((h, w), np.uint8)
        _draw_figure(image, silhouette, pts, pose, scale, rng)
        figures.append((pts, silhouette))
        owner[silhouette > 0] = len(figures)      # figure ids are 1-based positions in `figures`
    for pts, _ in figures:
        if rng.random() < spec.occluder_prob:
            _draw_occluder(image, owner, pts, rng)
    image = _add_noise(image, rng)

    annotations = []
    for fig_id, (pts, silhouette) in enumerate(figures, start=1):
        ann = _annotate(pts, silhouette, owner, fig_id, w, h)
        if ann is not None:
            annotations.append(ann)
    return image, annotations


def _figure_count_probs(max_figures: int) -> np.ndarray:
    p = np.array([0.45, 0.35, 0.2, 0.1, 0.05, 0.05][:max_figures])
    return p / p.sum()


def _random_colour(rng, lo=20, hi=235) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(lo, hi, 3))


def _background(rng, w: int, h: int) -> np.ndarray:
    """Gradient + low-frequency noise + clutter strokes and shapes."""
    c0, c1 = np.array(_random_colour(rng), np.float32), np.array(_random_colour(rng), np.float32)
    t = np.linspace(0, 1, h if rng.random() < 0.5 else w, dtype=np.float32)
    ramp = c0 + (c1 - c0) * t[:, None]
    img = np.broadcast_to(ramp[:, None, :], (h, w, 3)) if len(t) == h else np.broadcast_to(ramp[None], (h, w, 3))
    grid = rng.normal(0, 25, (6, 6, 3)).astype(np.float32)
    img = img + cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(3, 11))):
        colour = _random_colour(rng)
        kind = rng.random()
        p = rng.uniform([0, 0], [w, h]).astype(int)
        if kind < 0.15:       # a thin stroke (thick limb-like strokes made arms a coin toss at 64 x 96)
            q = (p + rng.normal(0, max(w, h) / 5, 2)).astype(int)
            cv2.line(img, tuple(map(int, p)), tuple(map(int, q)), colour, int(rng.integers(1, 4)), cv2.LINE_AA)
        elif kind < 0.6:
            cv2.circle(img, tuple(map(int, p)), int(rng.integers(3, 20)), colour, -1, cv2.LINE_AA)
        else:
            q = (p + rng.uniform(5, 40, 2)).astype(int)
            cv2.rectangle(img, tuple(map(int, p)), tuple(map(int, q)), colour, -1)
    return img


def _add_noise(img: np.ndarray, rng) -> np.ndarray:
    noise = rng.normal(0, rng.uniform(2, 8), img.shape)
    out = img.astype(np.float32) + noise
    if rng.random() < 0.3:
        out = cv2.GaussianBlur(out, (3, 3), 0)
    return np.clip(out, 0, 255).astype(np.uint8)


def _random_pose(rng) -> dict:
    """Joint positions [17, 2] in body units (torso length 1), y down, facing the viewer, plus drawing info."""
    k = np.zeros((17, 2))
    sw, hw = rng.uniform(0.3, 0.42), rng.uniform(0.18, 0.27)
    head_r = rng.uniform(0.26, 0.34)
    neck_len = rng.uniform(0.12, 0.22)
    lean = rng.normal(0, 0.08)                     # torso lean: pelvis shifts sideways
    shoulder_y = rng.normal(0.0, 0.03, 2)
    # The figure's left (even COCO indices 5, 7, ...) is on the viewer's right: +x.
    k[5] = (sw, shoulder_y[0])
    k[6] = (-sw, shoulder_y[1])
    k[11] = (hw + lean, 1.0)
    k[12] = (-hw + lean, 1.0)
    head_c = np.array([rng.normal(0, 0.04), -neck_len - head_r])
    yaw = rng.uniform(-0.45, 0.45)                 # head turn: face features slide sideways
    tilt = rng.normal(0, 0.12)
    rot = np.array([[math.cos(tilt), -math.sin(tilt)], [math.sin(tilt), math.cos(tilt)]])

    def face(dx, dy):
        return head_c + rot @ np.array([dx, dy]) * head_r

    k[0] = face(0.55 * yaw, 0.2)
    k[1] = face(0.4 + 0.5 * yaw, -0.15)
    k[2] = face(-0.4 + 0.5 * yaw, -0.15)
    k[3] = face(1.0 + 0.15 * yaw, 0.05)
    k[4] = face(-1.0 + 0.15 * yaw, 0.05)
    # Limbs: angle 0 points straight down; positive angles swing outward (to the figure's own side). Limbs
    # stay on their own side of the body's midline, as they do in most COCO poses: crossed arms are rare
    # there, and would make left and right a guess for a model that sees 64 x 96 pixels.
    for side, (sh, el, wr, hip, kn, an) in ((+1, (5, 7, 9, 11, 13, 15)), (-1, (6, 8, 10, 12, 14, 16))):
        for _ in range(20):
            upper, fore = rng.uniform(0.5, 0.62), rng.uniform(0.45, 0.58)
            a1 = math.radians(rng.uniform(-15, 135))
            a2 = a1 + math.radians(rng.uniform(-110, 110))
            k[el] = k[sh] + upper * np.array([side * math.sin(a1), math.cos(a1)])
            k[wr] = k[el] + fore * np.array([side * math.sin(a2), math.cos(a2)])
            if side * k[el, 0] > 0.1 and side * k[wr, 0] > 0.1:
                break
        for _ in range(20):
            thigh, shin = rng.uniform(0.7, 0.85), rng.uniform(0.65, 0.8)
            b1 = math.radians(rng.uniform(-12, 55))
            b2 = b1 + math.radians(rng.uniform(-60, 60))
            k[kn] = k[hip] + thigh * np.array([side * math.sin(b1), math.cos(b1)])
            k[an] = k[kn] + shin * np.array([side * math.sin(b2), math.cos(b2)])
            if side * (k[kn, 0] - lean) > 0.05 and side * (k[an, 0] - lean) > 0.05:
                break
    return {"keypoints": k, "head_center": head_c, "head_radius": head_r, "neck": np.array([0.0, 0.0]),
            "skin": _random_colour(rng, 60, 240), "shirt": _random_colour(rng), "pants": _random_colour(rng),
            "shoes": _random_colour(rng, 0, 120), "eyes": _random_colour(rng, 0, 70)}


def _place(pose: dict, rng, w: int, h: int, spec: SyntheticKeypointSpec) -> tuple[np.ndarray, float]:
    """Scale, rotate, stretch and translate the pose into the image.

    Returns [17 + 2, 2] pixel coordinates (the two extra rows are the head centre and the neck, needed for
    drawing) and the scale in pixels per body unit.
    """
    pts = np.vstack([pose["keypoints"], pose["head_center"], pose["neck"]])
    top = pose["head_center"][1] - pose["head_radius"]
    height_units = pts[:, 1].max() - top
    target = rng.uniform(spec.min_figure_height, min(spec.max_figure_height, 0.95 * min(w, h)))
    scale = target / height_units
    angle = math.radians(float(np.clip(rng.normal(0, spec.max_rotation_deg / 2), -spec.max_rotation_deg,
                                       spec.max_rotation_deg)))
    stretch = rng.uniform(0.85, 1.15)
    lin = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]) @ np.diag([stretch, 1])
    pts = (pts - pts.mean(0)) @ lin.T * scale
    lo, hi = pts.min(0), pts.max(0)
    margin = pose["head_radius"] * scale
    if rng.random() < spec.truncation_prob:
        # Centre anywhere, so part of the figure may fall outside the image.
        offset = rng.uniform([0, 0], [w, h])
    else:
        low = -lo + margin
        high = np.array([w, h]) - hi - margin
        offset = rng.uniform(np.minimum(low, high), np.maximum(low, high))
    return pts + offset, scale


def _draw_figure(image: np.ndarray, silhouette: np.ndarray, pts: np.ndarray, pose: dict, scale: float,
                 rng) -> None:
    """Draw the figure back to front on ``image`` and its silhouette mask."""
    unit = np.linalg.norm(pts[11] - pts[5]) + 1e-6   # about one torso length in pixels
    head_c, neck = pts[17], pts[18]
    head_r = pose["head_radius"] * scale

    def seg(canvas, a, b, colour, thick):
        t = max(int(round(thick * unit)), 1)
        cv2.line(canvas, _ip(a), _ip(b), colour, t, cv2.LINE_AA)
        cv2.circle(canvas, _ip(a), max(t // 2, 1), colour, -1, cv2.LINE_AA)
        cv2.circle(canvas, _ip(b), max(t // 2, 1), colour, -1, cv2.LINE_AA)

    # Clothes and skin that stand out from the background behind the figure (people in photos mostly do;
    # a figure the colour of its surroundings is a guess, not a pose).
    lo, hi = np.floor(pts.min(0)).astype(int), np.ceil(pts.max(0)).astype(int)
    region = image[max(lo[1], 0):max(hi[1], 1), max(lo[0], 0):max(hi[0], 1)]
    if region.size:
        backdrop = region.reshape(-1, 3).mean(0)
        for key, (c_lo, c_hi) in (("skin", (60, 240)), ("shirt", (20, 235)), ("pants", (20, 235))):
            for _ in range(10):
                if np.linalg.norm(np.array(pose[key], float) - backdrop) >= 90:
                    break
                pose[key] = _random_colour(rng, c_lo, c_hi)

    shade = lambda c, f: tuple(int(np.clip(v * f, 0, 255)) for v in c)  # noqa: E731
    torso = np.array([pts[5], pts[6], pts[12], pts[11]])
    parts = [
        # legs (behind the torso)
        (lambda cv, col: seg(cv, pts[11], pts[13], col, 0.24), pose["pants"]),
        (lambda cv, col: seg(cv, pts[12], pts[14], col, 0.24), shade(pose["pants"], 0.85)),
        (lambda cv, col: seg(cv, pts[13], pts[15], col, 0.2), shade(pose["pants"], 0.9)),
        (lambda cv, col: seg(cv, pts[14], pts[16], col, 0.2), shade(pose["pants"], 0.75)),
        (lambda cv, col: cv2.circle(cv, _ip(pts[15]), max(int(0.13 * unit), 2), col, -1, cv2.LINE_AA), pose["shoes"]),
        (lambda cv, col: cv2.circle(cv, _ip(pts[16]), max(int(0.13 * unit), 2), col, -1, cv2.LINE_AA), pose["shoes"]),
        # neck and torso
        (lambda cv, col: seg(cv, neck, head_c, col, 0.14), pose["skin"]),
        (lambda cv, col: cv2.fillConvexPoly(cv, np.round(torso).astype(np.int32), col, cv2.LINE_AA), pose["shirt"]),
        # arms (in front of the torso)
        (lambda cv, col: seg(cv, pts[5], pts[7], col, 0.19), shade(pose["shirt"], 0.75)),
        (lambda cv, col: seg(cv, pts[6], pts[8], col, 0.19), shade(pose["shirt"], 0.65)),
        (lambda cv, col: seg(cv, pts[7], pts[9], col, 0.15), pose["skin"]),
        (lambda cv, col: seg(cv, pts[8], pts[10], col, 0.15), shade(pose["skin"], 0.9)),
        (lambda cv, col: cv2.circle(cv, _ip(pts[9]), max(int(0.12 * unit), 2), col, -1, cv2.LINE_AA),
         shade(pose["skin"], 0.8)),
        (lambda cv, col: cv2.circle(cv, _ip(pts[10]), max(int(0.12 * unit), 2), col, -1, cv2.LINE_AA),
         shade(pose["skin"], 0.8)),
        # head, ears, face
        (lambda cv, col: cv2.circle(cv, _ip(pts[3]), max(int(0.3 * head_r), 2), col, -1, cv2.LINE_AA),
         shade(pose["skin"], 0.75)),
        (lambda cv, col: cv2.circle(cv, _ip(pts[4]), max(int(0.3 * head_r), 2), col, -1, cv2.LINE_AA),
         shade(pose["skin"], 0.75)),
        (lambda cv, col: cv2.circle(cv, _ip(head_c), max(int(head_r), 2), col, -1, cv2.LINE_AA), pose["skin"]),
    ]
    for draw, colour in parts:
        draw(image, colour)
        draw(silhouette, 255)
    if rng.random() < 0.5:   # hair: the upper half of an ellipse above the eyes, drawn before the face
        top = head_c - np.array([0.0, 0.35 * head_r])
        cv2.ellipse(image, _ip(top), (max(int(0.95 * head_r), 1), max(int(0.55 * head_r), 1)), 0, 180, 360,
                    _random_colour(rng, 0, 140), -1, cv2.LINE_AA)
    # Face marks large enough to be seen at the model's resolution: the face keypoints have COCO's
    # tightest OKS sigmas, so they must be locatable to about a pixel of the crop.
    eye_r = max(int(round(0.18 * head_r)), 1)
    cv2.circle(image, _ip(pts[1]), eye_r, pose["eyes"], -1, cv2.LINE_AA)
    cv2.circle(image, _ip(pts[2]), eye_r, pose["eyes"], -1, cv2.LINE_AA)
    nose_r = max(int(round(0.16 * head_r)), 1)
    cv2.circle(image, _ip(pts[0]), nose_r, (200, 40, 40), -1, cv2.LINE_AA)


def _draw_occluder(image: np.ndarray, owner: np.ndarray, pts: np.ndarray, rng) -> None:
    """A textured box or ellipse over part of the figure; it owns the pixels it covers."""
    h, w = owner.shape
    target = pts[int(rng.integers(5, 17))]
    size = rng.uniform(0.1, 0.3) * (pts[:17, 1].max() - pts[:17, 1].min() + 1)
    centre = target + rng.normal(0, size / 3, 2)
    mask = np.zeros((h, w), np.uint8)
    if rng.random() < 0.5:
        half = np.array([size, size * rng.uniform(0.5, 1.5)]) / 2
        cv2.rectangle(mask, _ip(centre - half), _ip(centre + half), 255, -1)
    else:
        axes = (max(int(size / 2), 1), max(int(size * rng.uniform(0.3, 0.8)), 1))
        cv2.ellipse(mask, _ip(centre), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    colour = np.array(_random_colour(rng), np.float32)
    stripes = (np.sin(np.arange(w)[None, :] * rng.uniform(0.2, 1.0) + np.arange(h)[:, None] * rng.uniform(0, 0.5))
               * 25)[..., None]
    texture = np.clip(colour + stripes, 0, 255).astype(np.uint8)
    covered = mask > 0
    image[covered] = texture[covered]
    owner[covered] = 0


def _annotate(pts: np.ndarray, silhouette: np.ndarray, owner: np.ndarray, fig_id: int, w: int, h: int) -> dict | None:
    """COCO annotation of one figure, or None when too little of it is in the image."""
    ys, xs = np.nonzero(silhouette)
    if len(xs) < 20:
        return None
    kpts = []
    num = 0
    for x, y in pts[:17]:
        xi, yi = int(round(x)), int(round(y))
        if not (0 <= xi < w and 0 <= yi < h):
            kpts += [0.0, 0.0, 0]          # outside the image: unlabelled, as COCO does
            continue
        v = 2 if owner[yi, xi] == fig_id else 1
        kpts += [round(float(x), 2), round(float(y), 2), v]
        num += 1
    if num < 3:
        return None
    x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
    return {"keypoints": kpts, "num_keypoints": num, "bbox": [x1, y1, x2 - x1 + 1, y2 - y1 + 1],
            "area": float(len(xs))}


def _ip(p) -> tuple[int, int]:
    return int(round(float(p[0]))), int(round(float(p[1])))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
