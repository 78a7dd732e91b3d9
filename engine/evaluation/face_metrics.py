"""The face-alignment report: NME (three normalisations), NME per region, failure rate, CED and its AUC.

This is how the face-alignment literature (300-W, WFLW, COFW) scores landmark models, next to the COCO AP
that pycocotools gives. Every function takes ground truth and predictions in image pixel coordinates:

    pred: [N, K, 2] predicted (x, y);  gt: [N, K, 3] (x, y, v), v > 0 labelled;  boxes: [N, 4] inclusive xyxy.

Per face ``n``, ``nme[n] = mean over labelled k of |pred[n, k] - gt[n, k]| / d[n]`` with the normaliser d:

* ``inter_ocular``: distance between two ground-truth points, the outer eye corners (zero-based 36 and 45 of
  the 68-point layout; 300-W's common protocol);
* ``inter_pupil``: distance between the means of two point groups, the eyes' contours (36-41 and 42-47,
  i.e. the 1-based 37-42 and 43-48) standing in for the pupils that the 68 points do not have;
* ``box``: ``sqrt(w * h)`` of the face box (the ground-truth box; the landmark-tight box on 300-W).

``NME`` is the mean of ``nme[n]`` over faces. The failure rate ``FR@t`` is the share of faces with
``nme > t``; the cumulative error distribution ``CED(e)`` is the share with ``nme <= e``, and ``AUC@t`` is
its integral from 0 to ``t`` divided by ``t`` (1 when every face is perfect). The integral is exact:
``int_0^t 1[nme_n <= e] de = max(0, t - nme_n)``, so ``AUC@t = mean_n max(0, t - nme_n) / t`` (papers that
sum a trapezoid over a fine grid approximate the same number). A face with no prediction (a detector
miss) counts with an infinite error: a failure that adds nothing to the AUC, and left out of the NME mean.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from models.bbox import box_iou, box_width_height
from models.errors import ConfigError

NORMALISATIONS = ("inter_ocular", "inter_pupil", "box")

# The 68-point layout of Multi-PIE / 300-W, zero-based.
FACE68_OCULAR = (36, 45)
FACE68_PUPILS = (tuple(range(36, 42)), tuple(range(42, 48)))
FACE68_REGIONS = {"jaw": tuple(range(0, 17)), "brows": tuple(range(17, 27)), "nose": tuple(range(27, 36)),
                  "eyes": tuple(range(36, 48)), "mouth": tuple(range(48, 68))}


@dataclass
class FaceReportConfig:
    """``eval.face``: which normaliser, regions and thresholds the face report uses."""

    normalize: str = "inter_ocular"     # inter_ocular | inter_pupil | box
    ocular_pair: list[int] | None = None   # None: data.nme_normalize's pair, else 36/45 with 68 points
    pupils: list[list[int]] | None = None  # two groups whose means are the pupils; None: 36-41, 42-47 (68 pts)
    regions: dict[str, list[int]] | None = None   # name -> keypoint indices; None: jaw/brows/... with 68 pts
    thresholds: list[float] = field(default_factory=lambda: [0.08, 0.1])
    ced_plot: bool = True               # tools.eval writes ced.png beside metrics.json


# ---------------------------------------------------------------------------------------------- per face
def normalisers(gt: np.ndarray, mode: str = "inter_ocular", pair: Sequence[int] | None = FACE68_OCULAR,
                pupils: Sequence[Sequence[int]] | None = FACE68_PUPILS, boxes: np.ndarray | None = None) -> np.ndarray:
    """Per-face normalising distance [N] (NaN where the points it needs are unlabelled or it is 0).

    gt: [N, K, 3]; boxes: [N, 4] inclusive xyxy (``box`` mode only).
    """
    gt = np.asarray(gt, float)
    labelled = gt[..., 2] > 0
    if mode == "inter_ocular":
        i, j = pair
        d = np.linalg.norm(gt[:, i, :2] - gt[:, j, :2], axis=-1)
        ok = labelled[:, i] & labelled[:, j]
    elif mode == "inter_pupil":
        left, right = (list(g) for g in pupils)
        # A pupil is the mean of its group's points: every point of both groups must be labelled.
        ok = labelled[:, left].all(1) & labelled[:, right].all(1)
        d = np.linalg.norm(gt[:, left, :2].mean(1) - gt[:, right, :2].mean(1), axis=-1)
    elif mode == "box":
        if boxes is None:
            raise ValueError("box normalisation needs the face boxes")
        w, h = box_width_height(np.asarray(boxes, float).reshape(-1, 4))
        d = np.sqrt(np.clip(w, 0, None) * np.clip(h, 0, None))
        ok = np.ones(len(d), bool)
    else:
        raise ValueError(f"NME normalisation {mode!r} is not one of {NORMALISATIONS}")
    return np.where(ok & (d > 0), d, np.nan)


def normalised_errors(pred: np.ndarray, gt: np.ndarray, norm: np.ndarray) -> np.ndarray:
    """Point errors divided by the face's normaliser, [N, K]; NaN where unlabelled or the face has none."""
    pred, gt = np.asarray(pred, float), np.asarray(gt, float)
    err = np.linalg.norm(pred - gt[..., :2], axis=-1) / np.asarray(norm, float)[:, None]
    return np.where(gt[..., 2] > 0, err, np.nan)


def mean_offset(pred: np.ndarray, gt: np.ndarray, norm: np.ndarray) -> tuple[float, float]:
    """The systematic shift ``(x, y)``: the mean signed ``(pred - gt) / d`` over labelled points and faces.

    A model with no bias has both near 0 whatever its NME. A constant offset means a convention differs between
    the labels and the model; a left-right one survives only in x, e.g. labels that sit a pixel right of where a
    mirror-symmetric model puts them (flip augmentation averages such an offset away; docs/keypoints.md).
    """
    d = (np.asarray(pred, float) - np.asarray(gt, float)[..., :2]) / np.asarray(norm, float)[:, None, None]
    d = np.where((np.asarray(gt)[..., 2] > 0)[..., None], d, np.nan)
    return float(_nanmean(d[..., 0])), float(_nanmean(d[..., 1]))


def _nanmean(x: np.ndarray, axis=None):
    """Mean ignoring NaN; NaN (without numpy's warning) where nothing is left."""
    x = np.asarray(x, float)
    n = (~np.isnan(x)).sum(axis)
    s = np.nansum(x, axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def per_face_nme(errors: np.ndarray) -> np.ndarray:
    """[N, K] normalised errors -> [N] mean over each face's labelled points (NaN for a face without any)."""
    return _nanmean(errors, axis=1)


# ---------------------------------------------------------------------------------------------- summaries
def failure_rate(face_nme: np.ndarray, threshold: float) -> float:
    """Share of faces with NME > threshold; inf (a missed face) fails, NaN (not scorable) is left out."""
    e = np.asarray(face_nme, float)
    e = e[~np.isnan(e)]
    return float((e > threshold).mean()) if len(e) else float("nan")


def ced_auc(face_nme: np.ndarray, threshold: float) -> float:
    """Area under the CED from 0 to ``threshold``, divided by ``threshold`` (exact; see the module doc)."""
    e = np.asarray(face_nme, float)
    e = e[~np.isnan(e)]
    if not len(e):
        return float("nan")
    return float(np.clip(threshold - e, 0.0, None).mean() / threshold)


def ced_curve(face_nme: np.ndarray, threshold: float, num: int = 201) -> tuple[np.ndarray, np.ndarray]:
    """The CED sampled at ``num`` errors in [0, threshold]: (errors [num], share of faces <= error [num])."""
    e = np.asarray(face_nme, float)
    e = np.sort(e[~np.isnan(e)])
    grid = np.linspace(0.0, threshold, num)
    return grid, np.searchsorted(e, grid, side="right") / max(len(e), 1)


def region_nme(errors: np.ndarray, regions: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """``{"NME/<region>": mean of the faces' mean error over the region's labelled points}``."""
    return {f"NME/{name}": float(_nanmean(per_face_nme(errors[:, list(idx)]))) for name, idx in regions.items()}


def summarize(face_nme: np.ndarray, thresholds: Sequence[float] = (0.08, 0.1)) -> dict[str, float]:
    """``NME`` (over faces with a prediction), ``FR@t`` and ``AUC@t`` for every threshold."""
    e = np.asarray(face_nme, float)
    out = {"NME": float(_nanmean(np.where(np.isinf(e), np.nan, e)))}
    for t in thresholds:
        out[f"FR@{t:g}"] = failure_rate(e, t)
    for t in thresholds:
        out[f"AUC@{t:g}"] = ced_auc(e, t)
    return out


# ---------------------------------------------------------------------------------------------- the report
class FaceReport:
    """The report for one landmark layout; ``evaluate`` keeps the last per-face errors for the CED plot.

    Args:
        normalize: one of ``NORMALISATIONS``.
        pair: the two points of the inter-ocular distance.
        pupils: two point groups whose means are the pupils.
        regions: name -> keypoint indices.
        thresholds: NME thresholds of the failure rate and AUC.
    """

    def __init__(self, normalize: str = "inter_ocular", pair: Sequence[int] | None = FACE68_OCULAR,
                 pupils: Sequence[Sequence[int]] | None = FACE68_PUPILS,
                 regions: Mapping[str, Sequence[int]] | None = None, thresholds: Sequence[float] = (0.08, 0.1),
                 ced_plot: bool = True):
        if normalize not in NORMALISATIONS:
            raise ConfigError(f"eval.face.normalize={normalize!r} is not one of {NORMALISATIONS}; set one of them")
        if normalize == "inter_ocular" and pair is None:
            raise ConfigError("eval.face.normalize=inter_ocular needs eval.face.ocular_pair (or data.nme_normalize)")
        if normalize == "inter_pupil" and (pupils is None or len(pupils) != 2):
            raise ConfigError("eval.face.normalize=inter_pupil needs eval.face.pupils: two lists of keypoint indices")
        self.normalize = normalize
        self.pair = tuple(int(i) for i in pair) if pair is not None else None
        self.pupils = tuple(tuple(int(i) for i in g) for g in pupils) if pupils is not None else None
        self.regions = {str(k): tuple(int(i) for i in v) for k, v in (regions or {}).items()}
        self.thresholds = tuple(float(t) for t in thresholds)
        self.ced_plot = ced_plot
        self.last_face_nme: np.ndarray | None = None

    def describe(self) -> dict:
        """What the numbers are normalised by, for the report beside them."""
        how = {"inter_ocular": f"distance of keypoints {self.pair}",
               "inter_pupil": f"distance of the means of keypoints {self.pupils}",
               "box": "sqrt(w * h) of the ground-truth box"}[self.normalize]
        return {"normalize": self.normalize, "normaliser": how, "thresholds": list(self.thresholds),
                "regions": {k: list(v) for k, v in self.regions.items()}}

    def evaluate(self, pred: np.ndarray, gt: np.ndarray, boxes: np.ndarray | None = None, missed: int = 0,
                 seconds: float | None = None) -> dict[str, float]:
        """Metrics of N predicted faces (plus ``missed`` faces without a prediction, counted as failures).

        pred: [N, K, 2]; gt: [N, K, 3]; boxes: [N, 4] ground-truth boxes; seconds: wall time of the
        prediction, reported as ``ms/face`` over the N predicted faces.
        """
        pred = np.asarray(pred, float).reshape(-1, *np.shape(gt)[1:2], 2)
        gt = np.asarray(gt, float)
        norm = normalisers(gt, self.normalize, self.pair, self.pupils, boxes)
        errors = normalised_errors(pred, gt, norm)
        face = np.concatenate([per_face_nme(errors), np.full(int(missed), np.inf)])
        self.last_face_nme = face
        metrics = summarize(face, self.thresholds)
        metrics.update(region_nme(errors, self.regions))
        metrics["offset/x"], metrics["offset/y"] = mean_offset(pred, gt, norm)
        metrics["faces"] = float(len(face))
        if missed:
            metrics["faces_missed"] = float(missed)
        if seconds is not None and len(pred):
            metrics["ms/face"] = 1000.0 * seconds / len(pred)
        return metrics


def build_face_report(face_cfg: FaceReportConfig | None, num_keypoints: int,
                      nme_pair: Sequence[int] | None = None) -> FaceReport | None:
    """The report from ``eval.face`` (None when the config has no ``eval.face``); 68-point defaults."""
    if face_cfg is None:
        return None
    is68 = num_keypoints == 68
    pair = face_cfg.ocular_pair or nme_pair or (FACE68_OCULAR if is68 else None)
    pupils = face_cfg.pupils or (FACE68_PUPILS if is68 else None)
    regions = face_cfg.regions if face_cfg.regions is not None else (FACE68_REGIONS if is68 else {})
    for name, idx in list(regions.items()) + [("ocular_pair", pair or ())] + \
            [(f"pupils[{i}]", g) for i, g in enumerate(pupils or ())]:
        bad = [int(i) for i in idx if not 0 <= int(i) < num_keypoints]
        if bad:
            raise ConfigError(f"eval.face {name}: keypoint indices {bad} are outside 0..{num_keypoints - 1}")
    return FaceReport(face_cfg.normalize, pair, pupils, regions, face_cfg.thresholds, face_cfg.ced_plot)


# ---------------------------------------------------------------------------------------------- matching
def match_faces(gt_boxes: np.ndarray, pred_boxes: np.ndarray, min_iou: float = 0.3) -> np.ndarray:
    """Greedy one-to-one matching of predictions to ground-truth faces of one image by box IoU.

    gt_boxes: [G, 4], pred_boxes: [P, 4] inclusive xyxy. Returns [G] prediction index, -1 where no
    prediction overlaps by ``min_iou`` or more (a miss). Highest IoU pairs are taken first.
    """
    match = np.full(len(gt_boxes), -1, dtype=np.int64)
    if not len(gt_boxes) or not len(pred_boxes):
        return match
    iou = box_iou(np.asarray(gt_boxes, float).reshape(-1, 4), np.asarray(pred_boxes, float).reshape(-1, 4))
    used = np.zeros(iou.shape[1], bool)
    for flat in np.argsort(-iou, axis=None):
        g, p = divmod(int(flat), iou.shape[1])
        if iou[g, p] < min_iou:
            break
        if match[g] < 0 and not used[p]:
            match[g], used[p] = p, True
    return match


def pair_with_instances(records: list[dict], instances: Sequence, image_ids: Sequence[int],
                        min_iou: float = 0.3) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Predictions on detected boxes paired with the ground-truth faces of ``image_ids``.

    records: ``{"image_id", "bbox" [4] (the box the crop came from), "keypoints" [K, 2]}`` per prediction;
    instances: objects with ``image_id``, ``bbox`` [4] and ``keypoints`` [K, 3]. Returns ``(pred [M, K, 2],
    gt [M, K, 3], gt boxes [M, 4], missed)`` for the M matched faces; unmatched predictions are ignored
    (they are COCO AP's false positives).
    """
    by_image: dict[int, list] = {}
    for r in records:
        by_image.setdefault(int(r["image_id"]), []).append(r)
    wanted = set(int(i) for i in image_ids)
    pred, gt, boxes, missed = [], [], [], 0
    faces: dict[int, list] = {}
    for inst in instances:
        if int(inst.image_id) in wanted:
            faces.setdefault(int(inst.image_id), []).append(inst)
    for image_id, insts in faces.items():
        recs = by_image.get(image_id, [])
        match = match_faces(np.stack([i.bbox for i in insts]),
                            np.stack([np.asarray(r["bbox"], float) for r in recs]) if recs else np.zeros((0, 4)),
                            min_iou)
        for inst, m in zip(insts, match):
            if m < 0:
                missed += 1
                continue
            pred.append(np.asarray(recs[m]["keypoints"], float)[:, :2])
            gt.append(np.asarray(inst.keypoints, float))
            boxes.append(np.asarray(inst.bbox, float))
    k = len(instances[0].keypoints) if len(instances) else 0
    return (np.stack(pred) if pred else np.zeros((0, k, 2)), np.stack(gt) if gt else np.zeros((0, k, 3)),
            np.stack(boxes) if boxes else np.zeros((0, 4)), missed)


# ---------------------------------------------------------------------------------------------- outputs
def plot_ced(curves: Mapping[str, np.ndarray], path: str, threshold: float = 0.1, title: str | None = None) -> None:
    """Write the CED of one or more models (label -> per-face NME) to a PNG, with AUC and FR in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    for label, face in curves.items():
        grid, share = ced_curve(face, threshold)
        ax.plot(grid * 100, share, label=f"{label}: AUC@{threshold:g} {ced_auc(face, threshold):.3f}, "
                                         f"FR {100 * failure_rate(face, threshold):.1f} %")
    ax.set_xlim(0, threshold * 100)
    ax.set_ylim(0, 1)
    ax.set_xlabel("NME (%)")
    ax.set_ylabel("share of faces")
    ax.set_title(title or "cumulative error distribution")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_face_outputs(report: FaceReport | None, out_dir: str, summary: dict, label: str = "model") -> None:
    """tools.eval's hook: add what the face numbers are normalised by to ``summary``, write ``ced.png``."""
    if report is None or report.last_face_nme is None:
        return
    summary["face_report"] = report.describe()
    if report.ced_plot:
        path = os.path.join(out_dir, "ced.png")
        plot_ced({label: report.last_face_nme}, path, max(report.thresholds),
                 title=f"CED, boxes: {summary.get('boxes', '?')}")
        summary["face_report"]["ced_png"] = path


def evaluate_detected(report: FaceReport | None, records: list[dict], instances: Sequence, image_ids: Sequence[int],
                      seconds: float | None = None, min_iou: float = 0.3) -> dict[str, float]:
    """The face report of predictions made on detected boxes (``{}`` without a report): each ground-truth
    face takes the prediction whose box overlaps it most (``match_faces``); a face without one is a miss."""
    if report is None:
        return {}
    pred, gt, boxes, missed = pair_with_instances(records, instances, image_ids, min_iou)
    metrics = report.evaluate(pred, gt, boxes, missed=missed)
    if seconds is not None and records:
        metrics["ms/face"] = 1000.0 * seconds / len(records)
    return metrics
