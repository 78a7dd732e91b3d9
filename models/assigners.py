"""Which cells train which object, for the ltrb head (``models/ltrb.py``): batched on the device.

Every function takes the points of all levels at once (cell centres ``[P, 2]`` in input pixels, finest level
first, row by row within a level: the order of :meth:`models.ltrb.LtrbCodec.points`) and a padded batch of
objects (``boxes [B, N, 4]`` inclusive xyxy, ``valid [B, N]``), and returns an :class:`Assignment`: for every
cell whether it is a positive and of which object. No Python loop runs over images or objects; the work is
``B x N x P`` elementwise, and nothing is read back to the host.

A cell is *inside* a box when its centre lies strictly between the box's pixel edges
(``x1 - 0.5 < cx < x2 + 0.5``, same for y), so that all four distances to the edges are positive.

Two assigners:

* :func:`centre_sampling_assign` (FCOS's centre sampling): on the object's level (chosen by its size), the
  cells inside the box whose centre is within ``radius x stride`` of the box centre along x and along y (a
  square, as FCOS implements it). ``radius = 0`` leaves the object's own cell only (CenterNet's one positive).
* :func:`task_aligned_assign` (TOOD; YOLOv8's ``TaskAlignedAssigner``): over the cells inside the box on every
  level, the ``topk`` of the alignment metric ``t = score^alpha x IoU^beta`` (the predicted score of the
  object's class at the cell and the IoU of the cell's predicted box with the object).

Both also take each object's own cell (the cell nearest its centre on its size level,
:meth:`models.ltrb.LtrbCodec.object_cells`) as a candidate, so that a box too small to contain a cell centre
still gets one positive (its distances to the edges are then clamped at 0 in the regression target).

Ties, so that results do not depend on the order a kernel happens to use:

* a cell claimed by several objects goes to the smallest box (centre sampling, as FCOS) or to the highest
  IoU with the cell's predicted box (task-aligned, as YOLOv8's ``select_highest_overlaps``); among equals,
  to the object that comes first in the padded batch (lowest index ``n``);
* in the task-aligned top-k, candidates with equal metrics are taken in point order (finest level first,
  then row by row): a stable sort, not ``torch.topk`` (whose order among equals is unspecified).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.bbox import box_area, box_center


@dataclass
class Assignment:
    """Cells of a batch assigned to objects.

    positive: [B, P] bool, the cell trains an object. object_index: [B, P] int64 index ``n`` of that object
    (0 where not positive: mask with ``positive``). aligned: [B, P] float32 TOOD's normalised alignment
    metric of each positive cell (``t x max IoU / max t`` over the object's positives; 0 elsewhere), only
    from :func:`task_aligned_assign` (None otherwise).
    """

    positive: torch.Tensor
    object_index: torch.Tensor
    aligned: torch.Tensor | None = None


def aligned_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of inclusive xyxy boxes (``+1`` widths) that broadcast against each other: [..., 4] x [..., 4] -> [...].

    0 where the union is empty. The areas are :func:`models.bbox.box_area`'s (the one ``+1`` formula).
    """
    inter = box_area(torch.stack([torch.maximum(a[..., 0], b[..., 0]), torch.maximum(a[..., 1], b[..., 1]),
                                  torch.minimum(a[..., 2], b[..., 2]), torch.minimum(a[..., 3], b[..., 3])], -1))
    union = box_area(a) + box_area(b) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def points_inside_boxes(centres: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """[B, N, P] bool: point ``p`` (centres [P, 2], input pixels) lies strictly inside the pixel edges of box
    ``n`` (boxes [B, N, 4] inclusive xyxy: edges ``x1 - 0.5`` and ``x2 + 0.5``)."""
    x, y = centres[:, 0], centres[:, 1]
    b = boxes[..., None, :]
    return ((x > b[..., 0] - 0.5) & (x < b[..., 2] + 0.5) & (y > b[..., 1] - 0.5) & (y < b[..., 3] + 0.5))


def _own_cells(object_points: torch.Tensor, valid: torch.Tensor, num_points: int) -> torch.Tensor:
    """[B, N, P] bool, true at each valid object's own cell."""
    b, n = object_points.shape
    own = torch.zeros(b, n, num_points, dtype=torch.bool, device=object_points.device)
    return own.scatter_(2, object_points[..., None].clamp(0, num_points - 1), valid[..., None])


def centre_sampling_assign(centres: torch.Tensor, point_strides: torch.Tensor, point_levels: torch.Tensor,
                           boxes: torch.Tensor, valid: torch.Tensor, object_levels: torch.Tensor,
                           object_points: torch.Tensor, radius: float) -> Assignment:
    """FCOS centre sampling on each object's size level, plus the object's own cell.

    Args:
        centres: [P, 2] cell centres (input pixels); point_strides: [P]; point_levels: [P] int level index.
        boxes: [B, N, 4] inclusive xyxy (input pixels); valid: [B, N] bool, objects to assign.
        object_levels: [B, N] the level each object's size selects; object_points: [B, N] its own cell's
            point index (:meth:`models.ltrb.LtrbCodec.object_cells`).
        radius: in strides; a cell is sampled when ``|cx - bx| < radius x s`` and ``|cy - by| < radius x s``
            (``(bx, by)`` the box centre) and it lies inside the box. 0: the object's own cell only.
    Returns an :class:`Assignment` (``aligned`` None). A cell claimed by several objects goes to the smallest
    box (``+1`` area), then to the lowest object index.
    """
    valid = valid.bool()
    boxes = torch.where(valid[..., None], boxes.float(), torch.zeros_like(boxes, dtype=torch.float32))
    centre = box_center(boxes)                                                          # [B, N, 2]
    near = ((centres[None, None] - centre[..., None, :]).abs()
            < radius * point_strides[None, None, :, None]).all(-1)                      # [B, N, P]
    same_level = point_levels[None, None, :] == object_levels[..., None]
    claim = near & same_level & points_inside_boxes(centres, boxes) & valid[..., None]
    claim |= _own_cells(object_points, valid, centres.shape[0])
    # argmin returns the first minimum: equal areas go to the lowest object index.
    cost = torch.where(claim, box_area(boxes)[..., None], torch.full_like(claim, float("inf"), dtype=boxes.dtype))
    best = cost.argmin(1)                                                               # [B, P]
    positive = claim.any(1)
    return Assignment(positive=positive, object_index=torch.where(positive, best, torch.zeros_like(best)))


@torch.no_grad()
def task_aligned_assign(centres: torch.Tensor, scores: torch.Tensor, pred_boxes: torch.Tensor, boxes: torch.Tensor,
                        labels: torch.Tensor, valid: torch.Tensor, object_points: torch.Tensor, topk: int = 10,
                        alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9) -> Assignment:
    """TOOD's task-aligned assignment (as YOLOv8's ``TaskAlignedAssigner``), batched.

    Args:
        centres: [P, 2] cell centres of all levels (input pixels).
        scores: [B, P, C] predicted class probabilities (after the sigmoid); pred_boxes: [B, P, 4] the cells'
            predicted boxes (inclusive xyxy, input pixels). Both are read without gradient.
        boxes: [B, N, 4] objects (inclusive xyxy); labels: [B, N] class indices; valid: [B, N] bool.
        object_points: [B, N] each object's own cell (always a candidate, see the module docstring).
        topk: positives per object at most; alpha, beta: exponents of the metric ``t = s^alpha x IoU^beta``.
    Returns an :class:`Assignment` with ``aligned``: per positive cell ``t x u_n / t_n``, where ``t_n`` and
    ``u_n`` are the largest metric and the largest IoU over object ``n``'s positives (TOOD's normalisation: the
    best-aligned cell of an object gets a target equal to the object's best IoU).

    Candidates are the cells inside the box (on every level) and the object's own cell; the ``topk`` of the
    metric among them (equal metrics in point order) are its positives, fewer when it has fewer candidates.
    A cell among the positives of several objects goes to the one its predicted box overlaps most (equal IoUs:
    the lowest object index).
    """
    b, n = boxes.shape[:2]
    p, c = scores.shape[1], scores.shape[2]
    valid = valid.bool()
    # Invalid rows may hold NaN padding: zeroed, so that their (masked) metrics stay finite.
    boxes = torch.where(valid[..., None], boxes.float(), torch.zeros_like(boxes, dtype=torch.float32))
    candidate = (points_inside_boxes(centres, boxes) & valid[..., None]) | _own_cells(object_points, valid, p)
    iou = aligned_box_iou(pred_boxes.float()[:, None], boxes[:, :, None]).clamp(min=0)        # [B, N, P]
    cls = labels.long().clamp(0, c - 1)[..., None].expand(b, n, p)
    score = scores.float().transpose(1, 2).gather(1, cls)                                     # [B, N, P]
    metric = score.pow(alpha) * iou.pow(beta)
    # Non-candidates sort after every candidate (metrics are >= 0); the stable sort keeps point order among
    # equal metrics, so the top k is reproducible.
    key = torch.where(candidate, metric, torch.full_like(metric, -1.0))
    order = key.sort(dim=-1, descending=True, stable=True).indices[..., :min(int(topk), p)]
    top = torch.zeros_like(candidate).scatter_(-1, order, True) & candidate
    # A cell in several objects' top k: the highest IoU wins; argmax returns the first maximum (lowest n).
    best = torch.where(top, iou, torch.full_like(iou, -1.0)).argmax(1)                         # [B, P]
    positive = top.any(1)
    won = top & (torch.arange(n, device=boxes.device)[None, :, None] == best[:, None, :])
    t = metric * won
    norm = iou.mul(won).amax(-1, keepdim=True) / (t.amax(-1, keepdim=True) + eps)
    aligned = (t * norm).amax(1)
    return Assignment(positive=positive, object_index=torch.where(positive, best, torch.zeros_like(best)),
                      aligned=aligned)
