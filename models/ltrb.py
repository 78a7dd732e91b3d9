"""The ltrb head: per cell, class scores and the distances to the box's four edges as distributions.

Generalized Focal Loss (Li et al., 2020) and YOLOv8 on the FPN levels ``strides``: every cell of every level
predicts ``C`` class logits and, for each side ``l, t, r, b``, ``R + 1`` logits (``R = reg_max``, 16 in
YOLOv8) of a distribution over the distances ``0, 1, ..., R`` in strides. Three pieces, each switchable (the
task's ``model.reg_max`` and ``loss.*`` keys):

(a) Regression: the distance is the distribution's expectation times the stride, trained by the
    Distribution Focal Loss (:func:`models.losses.distribution_focal_loss`) and by the GIoU of the decoded box;
    ``reg_max = 0`` regresses one number per side instead (``softplus`` in strides, no DFL).
(b) Assignment: several positive cells per object, by centre sampling or the task-aligned assigner
    (``models/assigners.py``), or the object's own cell only (``cell``, CenterNet's one positive).
(c) Quality: the classification target of a positive cell is the IoU of its predicted box with its object
    (Quality Focal Loss or VariFocal Loss), so that the score that ranks detections and feeds NMS ranks tight
    boxes first; or 1 (the plain focal loss).

Coordinates (docs/conventions.md): cell ``(u, v)`` of a level of stride ``s`` is centred at
``(cx, cy) = ((u + 0.5) s - 0.5, (v + 0.5) s - 0.5)`` in input pixels (the aligned convention of every map
here). The distances reach the box's pixel *edges*: ``x1 - 0.5 = cx - l`` and ``x2 + 0.5 = cx + r``, so the
inclusive box is ``x1 = cx - l + 0.5``, ``x2 = cx + r - 0.5`` (and in y), its width ``w = x2 - x1 + 1 = l + r``.

Points are numbered over all levels: finest level first, row by row within a level (``v * w + u``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.assigners import Assignment, aligned_box_iou, centre_sampling_assign, task_aligned_assign
from models.bbox import box_center, box_width_height
from models.box_codec import assign_levels, default_size_bounds
from models.losses import distribution_focal_loss, giou_loss, quality_focal_loss, varifocal_loss

# GFL's and RetinaNet's prior: every cell starts at probability 0.01, so the loss of the many background cells
# does not swamp the first steps.
CLS_PRIOR = 0.01
# reg_max = 0 (one number per side): the softplus starts at this many strides per side.
DIRECT_INIT_DISTANCE = 4.0
ASSIGNERS = ("task_aligned", "centre", "cell")
QUALITIES = ("iou", "aligned", "none")
CLS_LOSSES = ("qfl", "vfl")
# DFL targets stay below the last bin (GFL's and YOLOv8's reg_max - 0.01) so that both bins exist.
DFL_TARGET_MARGIN = 0.01


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[...] int labels in ``0..C-1`` -> [..., C] bool. Not ``F.one_hot``: it checks the labels' range with a
    read-back from the device, which would stall every training step on a GPU."""
    return labels[..., None] == torch.arange(num_classes, device=labels.device)


def _norm_groups(channels: int) -> int:
    """GroupNorm groups: the most of (32, 16, 8, 4, 2) that divides ``channels`` with >= 4 channels each."""
    return next((g for g in (32, 16, 8, 4, 2) if channels % g == 0 and channels // g >= 4), 1)


def _tower(in_channels: int, channels: int, num_convs: int) -> nn.Sequential:
    # GroupNorm as in FCOS and GFL: a head shared by levels of different statistics, trained with small
    # batches, needs a normalisation that does not depend on the batch.
    layers: list[nn.Module] = []
    for i in range(num_convs):
        layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1),
                   nn.GroupNorm(_norm_groups(channels), channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class LtrbHead(nn.Module):
    """Args:
        in_channels: channels of the input feature map. num_classes: class logits per cell.
        reg_max: ``R``; each side is a distribution over ``0..R`` strides (``R + 1`` logits), or one number
            when 0.
        channels: hidden channels; num_convs: 3x3 conv + GroupNorm + ReLU layers in each branch.

    forward(x [B, in_channels, h, w]) -> {"cls": [B, C, h, w] logits, "reg": [B, 4 (R + 1), h, w] logits,
    channel ``side * (R + 1) + bin`` with sides ordered l, t, r, b} (``[B, 4, h, w]`` when ``R = 0``).
    """

    def __init__(self, in_channels: int, num_classes: int, reg_max: int = 16, channels: int = 64,
                 num_convs: int = 2):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if reg_max < 0 or num_convs < 1:
            raise ValueError(f"reg_max must be >= 0 and num_convs >= 1, got {reg_max} and {num_convs}")
        self.num_classes, self.reg_max = int(num_classes), int(reg_max)
        self.cls_tower = _tower(in_channels, channels, num_convs)
        self.reg_tower = _tower(in_channels, channels, num_convs)
        self.cls = nn.Conv2d(channels, num_classes, 1)
        self.reg = nn.Conv2d(channels, 4 * (reg_max + 1) if reg_max else 4, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        # Small last-layer weights: the first outputs sit at the prior (class) and at a uniform distribution
        # (expected distance R / 2 strides) rather than at random values.
        for m in (self.cls, self.reg):
            nn.init.normal_(m.weight, std=0.01)
        nn.init.constant_(self.cls.bias, -math.log((1 - CLS_PRIOR) / CLS_PRIOR))
        if not reg_max:
            nn.init.constant_(self.reg.bias, math.log(math.expm1(DIRECT_INIT_DISTANCE)))   # softplus^-1

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"cls": self.cls(self.cls_tower(x)), "reg": self.reg(self.reg_tower(x))}


class LtrbCodec:
    """Cells, distances and boxes of the ltrb head over several levels; decoding (see the module docstring).

    Args:
        input_size: model input ``(width, height)``; a multiple of every stride.
        num_classes: class logits per cell. strides: the levels, finest first, each double the previous.
        reg_max: ``R`` of :class:`LtrbHead` (0: one number per side).
        size_bounds: ``len(strides) - 1`` boundaries of ``max(w, h)`` (input pixels) between levels, as
            :class:`models.box_codec.MultiLevelCenterNetCodec` (``8 x stride`` when None): the level of an
            object's own cell, and of its centre-sampled cells.
        topk: candidates kept per image by :meth:`decode` (before NMS).
    """

    def __init__(self, input_size: Sequence[int], num_classes: int, strides: Sequence[int] = (8, 16, 32),
                 reg_max: int = 16, size_bounds: Sequence[float] | None = None, topk: int = 1000):
        strides = [int(s) for s in strides]
        if not strides or any(b != 2 * a for a, b in zip(strides, strides[1:])):
            raise ValueError(f"strides {strides} must be non-empty and double level to level (e.g. [8, 16, 32])")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        if any(v % strides[-1] for v in self.input_size):
            raise ValueError(f"input_size {self.input_size} must be a multiple of the stride {strides[-1]}")
        bounds = default_size_bounds(strides) if size_bounds is None else [float(v) for v in size_bounds]
        if len(bounds) != len(strides) - 1 or any(b <= a for a, b in zip(bounds, bounds[1:])) or \
                any(b <= 0 for b in bounds):
            raise ValueError(f"size_bounds {bounds} must be {len(strides) - 1} increasing positive sizes (pixels), "
                             f"one boundary between each pair of the levels {strides}")
        if num_classes < 1 or reg_max < 0:
            raise ValueError(f"num_classes must be >= 1 and reg_max >= 0, got {num_classes} and {reg_max}")
        self.num_classes, self.strides, self.size_bounds = int(num_classes), strides, bounds
        self.reg_max, self.topk = int(reg_max), int(topk)
        self.map_sizes = [(self.input_size[0] // s, self.input_size[1] // s) for s in strides]
        self.level_starts = [0]
        for w, h in self.map_sizes:
            self.level_starts.append(self.level_starts[-1] + w * h)
        self.num_points = self.level_starts[-1]
        self._points: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._tables: dict[str, dict[str, torch.Tensor]] = {}

    def __repr__(self) -> str:
        return (f"LtrbCodec(input_size={self.input_size}, num_classes={self.num_classes}, strides={self.strides}, "
                f"reg_max={self.reg_max}, size_bounds={self.size_bounds}, topk={self.topk})")

    @property
    def bins(self) -> int:
        """Logits per side: ``R + 1``, or 1 for one number per side."""
        return self.reg_max + 1 if self.reg_max else 1

    # ------------------------------------------------------------------ points and distances
    def points(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(centres [P, 2], strides [P], levels [P])`` of every cell: centres ``((u + 0.5) s - 0.5, (v + 0.5)
        s - 0.5)`` in input pixels, float32; levels int64. Built once per device."""
        key = str(device)
        if key not in self._points:
            centres, strides, levels = [], [], []
            for i, (s, (w, h)) in enumerate(zip(self.strides, self.map_sizes)):
                v, u = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                      indexing="ij")
                centres.append(torch.stack([u.flatten(), v.flatten()], -1).add(0.5).mul(s).sub(0.5))
                strides.append(torch.full((w * h,), float(s)))
                levels.append(torch.full((w * h,), i, dtype=torch.long))
            self._points[key] = tuple(torch.cat(t).to(device) for t in (centres, strides, levels))
        return self._points[key]

    def _level_tables(self, device: torch.device | str) -> dict[str, torch.Tensor]:
        """Per-level constants on ``device`` (built once: no host-to-device copy per step): ``bounds`` [L - 1]
        float32, ``strides``, ``widths``, ``heights`` and ``starts`` (first point index) [L] int64."""
        key = str(device)
        if key not in self._tables:
            self._tables[key] = {
                "bounds": torch.tensor(self.size_bounds, dtype=torch.float32, device=device),
                "strides": torch.tensor(self.strides, device=device),
                "widths": torch.tensor([m[0] for m in self.map_sizes], device=device),
                "heights": torch.tensor([m[1] for m in self.map_sizes], device=device),
                "starts": torch.tensor(self.level_starts[:-1], device=device)}
        return self._tables[key]

    @staticmethod
    def distances_to_boxes(distances: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """Distances ``(l, t, r, b)`` [..., 4] in input pixels from cell centres [..., 2] to the pixel edges ->
        inclusive xyxy [..., 4]: ``x1 = cx - l + 0.5``, ``x2 = cx + r - 0.5`` (width ``l + r``)."""
        cx, cy = centres[..., 0], centres[..., 1]
        return torch.stack([cx - distances[..., 0] + 0.5, cy - distances[..., 1] + 0.5,
                            cx + distances[..., 2] - 0.5, cy + distances[..., 3] - 0.5], -1)

    @staticmethod
    def boxes_to_distances(boxes: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`distances_to_boxes`: inclusive xyxy [..., 4] and centres [..., 2] -> ``(l, t, r, b)``
        [..., 4] in input pixels to the edges ``x1 - 0.5``, ``y1 - 0.5``, ``x2 + 0.5``, ``y2 + 0.5`` (negative
        for a centre outside the box)."""
        cx, cy = centres[..., 0], centres[..., 1]
        return torch.stack([cx - boxes[..., 0] + 0.5, cy - boxes[..., 1] + 0.5,
                            boxes[..., 2] + 0.5 - cx, boxes[..., 3] + 0.5 - cy], -1)

    def expected_distances(self, reg: torch.Tensor) -> torch.Tensor:
        """Side logits [..., 4, bins] -> distances [..., 4] in strides: the softmax expectation over
        ``0..R`` (``softplus`` of the one logit when ``R = 0``). float32."""
        reg = reg.float()
        if not self.reg_max:
            return F.softplus(reg[..., 0])
        bins = torch.arange(self.bins, device=reg.device, dtype=torch.float32)
        return (torch.softmax(reg, -1) * bins).sum(-1)

    def flatten(self, cls: Sequence[torch.Tensor], reg: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-level outputs (lists, finest first: cls [B, C, h, w], reg [B, 4 bins, h, w]) -> ``cls [B, P, C]``
        and ``reg [B, P, 4, bins]`` over all points in :meth:`points` order."""
        if len(cls) != len(self.strides) or len(reg) != len(self.strides):
            raise ValueError(f"expected outputs of {len(self.strides)} levels (strides {self.strides}), got "
                             f"{len(cls)} cls and {len(reg)} reg maps")
        for c, r, (w, h) in zip(cls, reg, self.map_sizes):
            if c.shape[1:] != (self.num_classes, h, w) or r.shape[1:] != (4 * self.bins, h, w):
                raise ValueError(f"level maps {tuple(c.shape)} and {tuple(r.shape)} are not [B, {self.num_classes}, "
                                 f"{h}, {w}] and [B, {4 * self.bins}, {h}, {w}]: model and codec disagree")
        b = cls[0].shape[0]
        flat_cls = torch.cat([c.flatten(2).transpose(1, 2) for c in cls], 1)
        flat_reg = torch.cat([r.reshape(b, 4, self.bins, -1).permute(0, 3, 1, 2) for r in reg], 1)
        return flat_cls, flat_reg

    def predicted_boxes(self, reg: torch.Tensor) -> torch.Tensor:
        """Flat side logits [B, P, 4, bins] -> every cell's box [B, P, 4] (inclusive xyxy, input pixels)."""
        centres, strides, _ = self.points(reg.device)
        return self.distances_to_boxes(self.expected_distances(reg) * strides[:, None], centres)

    def object_cells(self, boxes: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each object's own cell: ``(valid [B, N] bool, level [B, N], point [B, N])``.

        The level is the one its larger side selects (:func:`models.box_codec.assign_levels` with
        ``size_bounds``); the cell is the nearest to its centre there, ``floor(u + 0.5)`` with
        ``u = (cx + 0.5) / s - 0.5`` (as the CenterNet codec). An object is valid when its mask is set, its
        ``+1`` width and height are positive, its coordinates finite and that cell on the map.
        """
        boxes = boxes.float()
        tables = self._level_tables(boxes.device)
        bw, bh = box_width_height(boxes)
        finite = torch.isfinite(boxes).all(-1)
        level = assign_levels(torch.where(finite[..., None], boxes, torch.zeros_like(boxes)), tables["bounds"])
        s = tables["strides"][level].float()
        w, h = tables["widths"][level], tables["heights"][level]
        uv = (box_center(boxes) + 0.5) / s[..., None] - 0.5
        cell = torch.nan_to_num(torch.floor(uv + 0.5), nan=-1.0, posinf=-1.0, neginf=-1.0)   # round half up
        u, v = cell[..., 0], cell[..., 1]
        on_map = (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)
        valid = mask.bool() & (bw > 0) & (bh > 0) & finite & on_map
        point = tables["starts"][level] + v.clamp(min=0).long() * w + u.clamp(min=0).long()
        return valid, level, torch.where(valid, point, torch.zeros_like(point))

    # ------------------------------------------------------------------ decode
    def decode(self, cls: Sequence[torch.Tensor], reg: Sequence[torch.Tensor], topk: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Boxes from per-level logits (lists, finest first).

        Every (cell, class) pair is a candidate with score ``sigmoid(cls)``; the top ``k`` over all levels,
        cells and classes are kept (a cell may appear with several classes) and their boxes decoded from the
        distances. No peak extraction: NMS (in the task) removes the neighbours of an object.
        Returns boxes [B, k, 4] (inclusive xyxy, input pixels; empty where ``l + r`` or ``t + b`` is 0),
        scores [B, k] and labels [B, k] (int64), by decreasing score.
        """
        flat_cls, flat_reg = self.flatten(cls, reg)
        b, p, c = flat_cls.shape
        k = min(int(topk or self.topk), p * c)
        scores, index = torch.sigmoid(flat_cls.float()).reshape(b, -1).topk(k, dim=1)
        point = torch.div(index, c, rounding_mode="floor")
        labels = index - point * c
        centres, strides, _ = self.points(flat_cls.device)
        sel = flat_reg.gather(1, point[..., None, None].expand(b, k, 4, self.bins))
        boxes = self.distances_to_boxes(self.expected_distances(sel) * strides[point][..., None], centres[point])
        return boxes, scores, labels

    # ------------------------------------------------------------------ oracle
    def perfect_outputs(self, assignment: Assignment, boxes: torch.Tensor, labels: torch.Tensor,
                        logit: float = 10.0) -> dict[str, list[torch.Tensor]]:
        """What a perfect network outputs for an assignment: per level ``cls`` logits ``+logit`` at each positive
        cell's class (``-logit`` elsewhere) and ``reg`` logits of the two-bin distribution whose expectation is
        the exact distance to each edge (for ``R = 0``, the softplus inverse). Tests and oracles use it.

        Distances beyond ``R`` strides (or negative, for a cell outside its box) cannot be represented and are
        clamped like the DFL targets. Returns {"cls": [L x [B, C, h, w]], "reg": [L x [B, 4 bins, h, w]]}.
        """
        b = boxes.shape[0]
        centres, strides, _ = self.points(boxes.device)
        obj = assignment.object_index
        pos = assignment.positive
        boxes = torch.nan_to_num(boxes.float())
        target_boxes = boxes.gather(1, obj[..., None].expand(b, self.num_points, 4))
        dist = self.boxes_to_distances(target_boxes, centres) / strides[:, None]                   # [B, P, 4]
        cls = torch.full((b, self.num_points, self.num_classes), -logit, device=boxes.device)
        cls = torch.where(pos[..., None] & _one_hot(labels.long().gather(1, obj), self.num_classes),
                          torch.full_like(cls, logit), cls)
        if self.reg_max:
            y = dist.clamp(0, self.reg_max - DFL_TARGET_MARGIN)
            left = y.floor()
            bins = torch.arange(self.bins, device=boxes.device, dtype=torch.float32)
            weight = ((bins == left[..., None]) * (left + 1 - y)[..., None]
                      + (bins == left[..., None] + 1) * (y - left)[..., None])
            reg = weight.clamp(min=1e-30).log().clamp(min=-1e4)                                      # [B, P, 4, bins]
        else:
            y = dist.clamp(min=1e-4)
            reg = (y + torch.log(-torch.expm1(-y)))[..., None]          # softplus^-1, stable for large y
        out: dict[str, list[torch.Tensor]] = {"cls": [], "reg": []}
        for i, (w, h) in enumerate(self.map_sizes):
            lo, hi = self.level_starts[i], self.level_starts[i + 1]
            out["cls"].append(cls[:, lo:hi].transpose(1, 2).reshape(b, self.num_classes, h, w))
            out["reg"].append(reg[:, lo:hi].permute(0, 2, 3, 1).reshape(b, 4 * self.bins, h, w))
        return out


class LtrbLoss:
    """Targets and losses of the ltrb head for a padded batch, on the device, without a loop over images or
    objects.

    Args:
        codec: the :class:`LtrbCodec` (points, levels, distances).
        assigner: ``task_aligned`` (TOOD / YOLOv8), ``centre`` (FCOS centre sampling on the object's size
            level, ``centre_radius`` strides) or ``cell`` (the object's own cell only: CenterNet's positive).
        tal_topk, tal_alpha, tal_beta: the task-aligned assigner's positives per object and exponents.
        quality: the classification target of a positive cell: ``iou`` (its predicted box's IoU with its
            object), ``aligned`` (TOOD's normalised alignment metric; task_aligned only) or ``none`` (1).
        cls_loss: ``qfl`` (Quality Focal Loss, ``qfl_beta``) or ``vfl`` (VariFocal Loss, ``vfl_alpha``,
            ``vfl_gamma``).
        cls_weight, giou_weight, dfl_weight: weights of the terms (``dfl_weight`` 0, or ``reg_max`` 0, leaves
            DFL out).

    ``__call__(cls, reg, boxes, labels, mask)`` with the model's per-level lists and boxes [B, N, 4] (inclusive
    xyxy, input pixels), labels [B, N], mask [B, N] returns ``{"loss", "loss_cls", "loss_giou"[, "loss_dfl"],
    "num_objects", "num_positives", "positive_iou"}`` (0-dim tensors). The classification loss is summed over
    every cell and class and divided by the number of positive cells (GFL's normalisation); GIoU and DFL (the
    mean of the four sides) average over the positive cells; ``positive_iou`` is the mean IoU of the positives'
    predicted boxes with their objects (a diagnostic, without gradient).
    """

    def __init__(self, codec: LtrbCodec, assigner: str = "task_aligned", centre_radius: float = 2.5,
                 tal_topk: int = 10, tal_alpha: float = 0.5, tal_beta: float = 6.0, quality: str = "iou",
                 cls_loss: str = "qfl", cls_weight: float = 1.0, giou_weight: float = 2.0, dfl_weight: float = 0.25,
                 qfl_beta: float = 2.0, vfl_alpha: float = 0.75, vfl_gamma: float = 2.0):
        if assigner not in ASSIGNERS or quality not in QUALITIES or cls_loss not in CLS_LOSSES:
            raise ValueError(f"assigner {assigner!r}, quality {quality!r}, cls_loss {cls_loss!r}: use one of "
                             f"{ASSIGNERS}, {QUALITIES} and {CLS_LOSSES}")
        if quality == "aligned" and assigner != "task_aligned":
            raise ValueError("quality 'aligned' is the task-aligned assigner's metric; use assigner 'task_aligned'")
        self.codec = codec
        self.assigner, self.centre_radius = assigner, float(centre_radius)
        self.tal_topk, self.tal_alpha, self.tal_beta = int(tal_topk), float(tal_alpha), float(tal_beta)
        self.quality, self.cls_loss = quality, cls_loss
        self.weights = {"cls": float(cls_weight), "giou": float(giou_weight),
                        "dfl": float(dfl_weight) if codec.reg_max else 0.0}
        self.qfl_beta, self.vfl_alpha, self.vfl_gamma = float(qfl_beta), float(vfl_alpha), float(vfl_gamma)

    def __repr__(self) -> str:
        return (f"LtrbLoss(assigner={self.assigner!r}, quality={self.quality!r}, cls_loss={self.cls_loss!r}, "
                f"weights={self.weights})")

    def assign(self, flat_cls: torch.Tensor, pred_boxes: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor,
               mask: torch.Tensor) -> tuple[Assignment, torch.Tensor]:
        """``(assignment, valid [B, N])`` of a batch: flat class logits [B, P, C] and predicted boxes [B, P, 4]
        (read without gradient, for the task-aligned metric), objects [B, N, 4] / [B, N] / [B, N]."""
        valid, level, point = self.codec.object_cells(boxes, mask)
        centres, strides, levels = self.codec.points(boxes.device)
        if self.assigner == "task_aligned":
            return task_aligned_assign(centres, torch.sigmoid(flat_cls.detach().float()), pred_boxes.detach(), boxes,
                                       labels, valid, point, self.tal_topk, self.tal_alpha, self.tal_beta), valid
        radius = self.centre_radius if self.assigner == "centre" else 0.0
        return centre_sampling_assign(centres, strides, levels, boxes, valid, level, point, radius), valid

    def targets(self, flat_cls: torch.Tensor, pred_boxes: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor,
                mask: torch.Tensor) -> dict[str, torch.Tensor | Assignment]:
        """The batch's targets, on the device: flat class logits [B, P, C], the cells' predicted boxes [B, P, 4]
        (both read without gradient), objects ``boxes`` [B, N, 4], ``labels`` [B, N], ``mask`` [B, N].

        Returns {"assignment": :class:`models.assigners.Assignment`, "valid": [B, N] bool, "positive": [B, P]
        float, "boxes": [B, P, 4] each cell's object box (zeros where not positive), "iou": [B, P] IoU of the
        predicted box with it (0 where not positive), "cls": [B, P, C] the classification target: the quality
        (IoU, the aligned metric, or 1) at a positive cell's class, 0 elsewhere}.
        """
        b, p, c = flat_cls.shape
        if boxes.shape[1] == 0:         # a batch without any box slot: one invalid slot keeps the gathers valid
            boxes, labels, mask = boxes.new_zeros(b, 1, 4), labels.new_zeros(b, 1), mask.new_zeros(b, 1)
        boxes, labels = boxes.float(), labels.long().clamp(0, c - 1)
        assignment, valid = self.assign(flat_cls, pred_boxes, boxes, labels, mask)
        # Padding and invalid rows may hold anything (NaN): zero them so that masked-out cells stay finite.
        boxes = torch.where(valid[..., None], boxes, torch.zeros_like(boxes))
        pos = assignment.positive.float()
        obj = assignment.object_index
        target_boxes = boxes.gather(1, obj[..., None].expand(b, p, 4)) * pos[..., None]
        iou = aligned_box_iou(pred_boxes.detach().float(), target_boxes).clamp(min=0) * pos
        if self.quality == "iou":
            quality = iou
        elif self.quality == "aligned":
            quality = assignment.aligned * pos
        else:
            quality = pos
        cls_target = _one_hot(labels.gather(1, obj), c).float() * quality[..., None]
        return {"assignment": assignment, "valid": valid, "positive": pos, "boxes": target_boxes, "iou": iou,
                "cls": cls_target}

    def __call__(self, cls: Sequence[torch.Tensor], reg: Sequence[torch.Tensor], boxes: torch.Tensor,
                 labels: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        codec = self.codec
        flat_cls, flat_reg = codec.flatten(cls, reg)
        centres, strides, _ = codec.points(flat_cls.device)
        dist = codec.expected_distances(flat_reg)                                                   # [B, P, 4]
        pred_boxes = codec.distances_to_boxes(dist * strides[:, None], centres)
        t = self.targets(flat_cls, pred_boxes, boxes, labels, mask)
        pos = t["positive"]
        num_pos = pos.sum()
        denom = num_pos.clamp(min=1.0)
        if self.cls_loss == "qfl":
            cls_terms = quality_focal_loss(flat_cls, t["cls"], self.qfl_beta)
        else:
            cls_terms = varifocal_loss(flat_cls, t["cls"], self.vfl_alpha, self.vfl_gamma)
        terms = {"loss_cls": cls_terms.sum() / denom, "loss_giou": giou_loss(pred_boxes, t["boxes"], pos)}
        if self.weights["dfl"] > 0:
            # Targets in strides, clamped into the distribution's range: a cell outside a tiny box (its own cell)
            # or an object larger than R strides trains towards the nearest representable distance.
            target = (codec.boxes_to_distances(t["boxes"], centres) / strides[:, None]).clamp(
                0, codec.reg_max - DFL_TARGET_MARGIN)
            dfl = distribution_focal_loss(flat_reg, target).mean(-1)
            terms["loss_dfl"] = (dfl * pos).sum() / denom
        total = sum(self.weights[k[5:]] * v for k, v in terms.items())
        return {"loss": total, **terms, "num_objects": t["valid"].float().sum(), "num_positives": num_pos,
                "positive_iou": t["iou"].sum() / denom}
