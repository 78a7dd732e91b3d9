"""The one place that maps boxes <-> CenterNet maps: training targets and decoding, batched on the device.

An object is a peak in its class's heatmap at the cell that holds its box centre, plus the box size and
the centre's sub-cell offset read at that cell (Zhou et al., "Objects as Points", 2019).

Coordinates (docs/conventions.md):

* Boxes are inclusive pixels ``[x1, y1, x2, y2]`` of the model input, centre ``((x1 + x2) / 2, ...)``,
  size ``w = x2 - x1 + 1`` (edge to edge).
* The maps are at stride ``s`` and aligned like the keypoint heatmaps: cell ``u`` covers the input pixels
  centred at ``(u + 0.5) * s - 0.5``, so a centre ``cx`` is at ``u = (cx + 0.5) / s - 0.5``. The object's
  cell is the nearest one, ``round(u)``; the offset target is ``u - round(u)`` in ``[-0.5, 0.5)`` and the
  size target is ``(w / s, h / s)`` in cells. (CenterNet's own corner-aligned coordinates pick the same
  cell, ``floor((cx + 0.5) / s)``; its offsets are ours plus 0.5.)
* The Gaussian is centred on the object's cell (not the float centre, unlike keypoint heatmaps), so its
  peak is exactly 1: the focal loss treats cells equal to 1 as the positives. Its radius is CenterNet's
  ``gaussian_radius`` of the box size in cells (the radius within which a box with a shifted corner keeps
  ``min_overlap`` IoU), ``sigma = (2 r + 1) / 6``, truncated to the ``(2 r + 1)^2`` window; objects of one
  class take the maximum where they overlap.

Decoding keeps the cells that equal the maximum of their 3x3 neighbourhood (a max-pool instead of NMS),
takes the top ``k`` over all classes and cells, and builds boxes from centre and size with
``x1 = cx - (w - 1) / 2`` (:func:`models.bbox.center_size_to_xyxy`).

Everything runs on the tensors' device for the whole batch, without a Python loop over samples or objects.
Each Gaussian is drawn only in its ``(2 r + 1)^2`` window; the window size of a batch (its largest radius) is
the one scalar encoding reads back from the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.bbox import box_center, box_width_height, center_size_to_xyxy

# Values of a cell this close to 1 count as the object's peak in the focal loss (the peak is exp(0) = 1
# exactly in float32; the margin only guards against a target that went through another dtype).
POSITIVE_THRESHOLD = 1.0 - 1e-4


@dataclass
class BoxTargets:
    """CenterNet targets of a batch, all on the boxes' device.

    heatmap: [B, C, h, w] float32 Gaussians (peak 1 at each object's cell).
    index: [B, N] int64 flat cell index ``v * w + u`` of each object's cell (0 for padding).
    size: [B, N, 2] box ``(w, h)`` in cells. offset: [B, N, 2] sub-cell centre offset in ``[-0.5, 0.5)``.
    mask: [B, N] float32, 1 for real objects whose centre lies on the map.
    boxes: [B, N, 4] the input boxes (inclusive xyxy, input pixels), for box-level losses.
    """

    heatmap: torch.Tensor
    index: torch.Tensor
    size: torch.Tensor
    offset: torch.Tensor
    mask: torch.Tensor
    boxes: torch.Tensor


def gaussian_radius(height: torch.Tensor, width: torch.Tensor, min_overlap: float = 0.7) -> torch.Tensor:
    """CenterNet's (CornerNet's) Gaussian radius for boxes of ``height`` x ``width`` cells, elementwise.

    The smallest of three radii, one per way a box whose corners move by up to ``r`` can fall to an IoU of
    ``min_overlap`` with the true one. The formula is reproduced as CenterNet ships it (including the
    quadratic roots it is known to take loosely) so that targets match models trained with it.
    Returns a float tensor of the inputs' shape; callers take ``floor`` and clamp at 0.
    """
    height, width = height.float(), width.float()
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt((b1 ** 2 - 4 * c1).clamp(min=0))) / 2
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + torch.sqrt((b2 ** 2 - 16 * c2).clamp(min=0))) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + torch.sqrt((b3 ** 2 - 4 * a3 * c3).clamp(min=0))) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


class CenterNetCodec:
    """Box <-> map encoder and decoder for a CenterNet head at one stride.

    Args:
        input_size: model input ``(width, height)`` in pixels; a multiple of ``stride``.
        num_classes: number of heatmap channels.
        stride: the maps' stride (4 for the FPN's finest level).
        min_overlap: IoU that sets the Gaussian radius (CenterNet: 0.7).
        topk: detections kept per image at decoding.
    """

    def __init__(self, input_size: Sequence[int], num_classes: int, stride: int = 4, min_overlap: float = 0.7,
                 topk: int = 100):
        self.input_size = (int(input_size[0]), int(input_size[1]))
        if self.input_size[0] % stride or self.input_size[1] % stride:
            raise ValueError(f"input_size {self.input_size} must be a multiple of the stride {stride}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0 < min_overlap < 1:
            raise ValueError(f"min_overlap must be in (0, 1), got {min_overlap}")
        self.num_classes = int(num_classes)
        self.stride = int(stride)
        self.heatmap_size = (self.input_size[0] // stride, self.input_size[1] // stride)
        self.min_overlap = float(min_overlap)
        self.topk = int(topk)

    def __repr__(self) -> str:
        return (f"CenterNetCodec(input_size={self.input_size}, num_classes={self.num_classes}, "
                f"stride={self.stride}, min_overlap={self.min_overlap}, topk={self.topk})")

    # ------------------------------------------------------------------ coordinates
    def to_map_coords(self, xy: torch.Tensor) -> torch.Tensor:
        """Input pixel coordinates [..., 2] -> map cell coordinates ``u = (x + 0.5) / s - 0.5``."""
        return (xy + 0.5) / self.stride - 0.5

    def to_input_coords(self, uv: torch.Tensor) -> torch.Tensor:
        """Map cell coordinates [..., 2] -> input pixel coordinates ``x = (u + 0.5) * s - 0.5``."""
        return (uv + 0.5) * self.stride - 0.5

    # ------------------------------------------------------------------ encode
    def _geometry(self, boxes: torch.Tensor, mask: torch.Tensor):
        """``(uv, cell, valid, size, radius)`` of padded boxes [B, N, 4]: map coordinates of the centres, their
        nearest cells, which boxes get a target, sizes in cells and Gaussian radii (0 for invalid boxes)."""
        boxes = boxes.float()
        w, h = self.heatmap_size
        bw, bh = box_width_height(boxes)
        uv = self.to_map_coords(box_center(boxes))                      # [B, N, 2]
        cell = torch.floor(uv + 0.5)                                    # nearest cell (round half up)
        inside = (cell[..., 0] >= 0) & (cell[..., 0] <= w - 1) & (cell[..., 1] >= 0) & (cell[..., 1] <= h - 1)
        valid = mask.bool() & (bw > 0) & (bh > 0) & inside & torch.isfinite(boxes).all(-1)
        size = torch.stack([bw, bh], -1) / self.stride
        radius = torch.floor(gaussian_radius(torch.ceil(size[..., 1]), torch.ceil(size[..., 0]),
                                             self.min_overlap)).clamp(min=0)
        radius = torch.where(valid, radius, torch.zeros_like(radius))  # NaN or off-map boxes set no window
        return uv, cell, valid, size, radius

    def window_radius(self, boxes: torch.Tensor, mask: torch.Tensor) -> int:
        """The largest Gaussian radius (cells) of the valid boxes: the half-width of the batch's drawing window.

        Computed where ``boxes`` live. Call it on the loader's CPU tensors and hand the result to
        :meth:`encode`, so that encoding on a GPU never waits for a number read back from the device.
        """
        radius = self._geometry(boxes, mask)[-1]
        return int(radius.max()) if radius.numel() else 0

    def encode(self, boxes: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
               window_radius: int | None = None) -> BoxTargets:
        """Targets for a batch of padded boxes.

        Args:
            boxes: [B, N, 4] inclusive xyxy in input pixels (padding rows are ignored).
            labels: [B, N] int class indices in ``0..C-1``.
            mask: [B, N] bool or float, true for real boxes.
            window_radius: :meth:`window_radius` of the same boxes, computed on the host; when None it is
                computed here, which on a GPU is one read-back per call. A value below the batch's largest
                radius would clip Gaussians, so it must come from these boxes.
        A box that is empty or whose centre cell lies off the map gets mask 0 and no Gaussian.
        """
        if boxes.ndim != 3 or boxes.shape[-1] != 4:
            raise ValueError(f"boxes must be [B, N, 4], got {tuple(boxes.shape)}")
        if labels.shape != boxes.shape[:2] or mask.shape != boxes.shape[:2]:
            raise ValueError(f"labels {tuple(labels.shape)} and mask {tuple(mask.shape)} must be [B, N] = "
                             f"{tuple(boxes.shape[:2])}")
        boxes = boxes.float()
        w = self.heatmap_size[0]
        uv, cell, valid, size, radius = self._geometry(boxes, mask)
        validf = valid.float()
        cell = torch.where(valid[..., None], cell, torch.zeros_like(cell))
        sigma = (2 * radius + 1) / 6
        if window_radius is None:
            window_radius = int(radius.max()) if radius.numel() else 0
        heatmap = self._draw_gaussians(cell, radius, sigma, labels, valid, int(window_radius))
        index = (cell[..., 1] * w + cell[..., 0]).long()
        return BoxTargets(heatmap=heatmap, index=index,
                          size=size * validf[..., None], offset=(uv - cell) * validf[..., None],
                          mask=validf, boxes=boxes)

    def _draw_gaussians(self, cell: torch.Tensor, radius: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor,
                        valid: torch.Tensor, r_max: int) -> torch.Tensor:
        """Class heatmaps [B, C, h, w] with each valid object's Gaussian drawn only in its window.

        cell: [B, N, 2] object cells (integer-valued); radius, sigma: [B, N] (radius 0 for invalid objects);
        labels: [B, N]; valid: [B, N] bool; r_max: the largest radius (a Python int: a window size must be
        known on the host to allocate it). Every object gets a ``(2 R + 1)^2`` window with ``R = r_max``;
        cells beyond its own radius, off
        the map or of invalid objects get the value 0 (a no-op under the maximum). The windows go into the maps
        with one ``scatter_reduce_(amax)``: objects of one class take their maximum where they overlap
        (CenterNet's ``draw_umich_gaussian``). The work is ``B N (2 R + 1)^2``, not ``B N h w``:
        at 128 x 128 maps and objects up to 40% of the input, ~20x fewer cells.
        """
        device = cell.device
        b = cell.shape[0]
        w, h = self.heatmap_size
        c = self.num_classes
        d = torch.arange(-r_max, r_max + 1, device=device, dtype=torch.float32)           # [K]
        inside_r = d.abs() <= radius[..., None]                                             # [B, N, K]
        denom = (2 * sigma ** 2)[..., None]
        xs, ys = cell[..., 0, None] + d, cell[..., 1, None] + d                             # [B, N, K]
        gx = torch.exp(-d ** 2 / denom) * (inside_r & (xs >= 0) & (xs <= w - 1))
        gy = torch.exp(-d ** 2 / denom) * (inside_r & (ys >= 0) & (ys <= h - 1) & valid[..., None])
        values = gy[..., :, None] * gx[..., None, :]                                        # [B, N, K, K]
        cls = labels.long().clamp(0, c - 1)
        plane = (torch.arange(b, device=device)[:, None] * c + cls) * (h * w)              # [B, N]
        flat = (plane[..., None, None] + ys.long().clamp(0, h - 1)[..., :, None] * w
                + xs.long().clamp(0, w - 1)[..., None, :])
        # Cells outside an object's radius or the map, and invalid objects, carry the value 0 at a clamped (real)
        # cell: the maps start at 0 and every Gaussian value is >= 0, so a maximum with 0 changes nothing.
        heatmap = torch.zeros(b * c * h * w, device=device, dtype=torch.float32)
        heatmap.scatter_reduce_(0, flat.reshape(-1), values.reshape(-1), "amax", include_self=True)
        return heatmap.reshape(b, c, h, w)

    @staticmethod
    def gather(maps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Values of [B, D, h, w] maps at flat cell indices [B, N] -> [B, N, D]."""
        b, d = maps.shape[:2]
        flat = maps.reshape(b, d, -1)
        return flat.gather(2, index[:, None, :].expand(b, d, index.shape[1])).transpose(1, 2)

    def dense_maps(self, targets: BoxTargets) -> tuple[torch.Tensor, torch.Tensor]:
        """Size and offset targets written into [B, 2, h, w] maps at their objects' cells (zero elsewhere).

        What a perfect network would output; tests and oracles use it to check decoding. Objects that share
        a cell get the mean of their values there (only one of them can be decoded anyway).
        """
        b, n = targets.index.shape
        w, h = self.heatmap_size
        # Padding goes to an extra cell past the map, dropped afterwards, so it never mixes with cell 0.
        index = torch.where(targets.mask > 0, targets.index, torch.full_like(targets.index, h * w))
        index = index[:, None, :].expand(b, 2, n)
        maps = []
        for values in (targets.size, targets.offset):
            out = torch.zeros(b, 2, h * w + 1, device=values.device, dtype=torch.float32)
            out.scatter_reduce_(2, index, values.float().transpose(1, 2), reduce="mean", include_self=False)
            maps.append(out[..., : h * w].reshape(b, 2, h, w))
        return maps[0], maps[1]

    # ------------------------------------------------------------------ decode
    def decode(self, heatmap: torch.Tensor, size: torch.Tensor, offset: torch.Tensor,
               topk: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Boxes from maps.

        Args:
            heatmap: [B, C, h, w] class probabilities (after the sigmoid).
            size: [B, 2, h, w] box ``(w, h)`` in cells. offset: [B, 2, h, w] sub-cell centre offsets.
            topk: detections per image (default: the codec's).
        Returns:
            boxes [B, k, 4] inclusive xyxy in input pixels (at least one pixel wide), scores [B, k] and
            labels [B, k] (int64), by decreasing score. Low-score entries are kept: filter by score.
        """
        if heatmap.ndim != 4 or heatmap.shape[1] != self.num_classes:
            raise ValueError(f"heatmap must be [B, {self.num_classes}, h, w], got {tuple(heatmap.shape)}")
        heat = heatmap.float()
        b, c, h, w = heat.shape
        # A cell is a peak when no neighbour is higher (3x3 max-pool); plateaus keep all their cells.
        peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
        k = min(int(topk or self.topk), c * h * w)
        scores, flat = peaks.reshape(b, -1).topk(k, dim=1)
        labels = torch.div(flat, h * w, rounding_mode="floor")
        index = flat - labels * (h * w)
        cu, cv = (index % w).float(), torch.div(index, w, rounding_mode="floor").float()
        boxes = self.boxes_from_cells(torch.stack([cu, cv], -1), self.gather(offset.float(), index),
                                      self.gather(size.float(), index))
        return boxes, scores, labels

    def boxes_from_cells(self, cell: torch.Tensor, offset: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        """Boxes from cells [..., 2] (integer-valued), offsets [..., 2] and sizes [..., 2] in cells.

        Returns [..., 4] inclusive xyxy in input pixels: centre ``(cell + offset + 0.5) * s - 0.5``, size
        ``size * s`` (at least one pixel), ``x1 = cx - (w - 1) / 2``.
        """
        center = self.to_input_coords(cell + offset)
        return center_size_to_xyxy(center, (size * self.stride).clamp(min=1.0))


def logit(p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Inverse sigmoid, clamped to ``[eps, 1 - eps]`` first (for oracle outputs built from targets)."""
    p = p.float().clamp(eps, 1 - eps)
    return torch.log(p) - torch.log1p(-p)


def expected_peak_count(targets: BoxTargets) -> torch.Tensor:
    """Number of positive cells (value 1) per image: [B]. Objects sharing a cell of one class count once."""
    return (targets.heatmap >= POSITIVE_THRESHOLD).flatten(1).sum(1)



# ---------------------------------------------------------------------------------------------- several levels
def default_size_bounds(strides: Sequence[int]) -> list[float]:
    """Level boundaries ``8 * stride`` of every level but the last: each level sees objects of ~4-8 cells
    (``[32, 64, 128]`` for strides 4-32), the first everything smaller and the last everything larger."""
    return [8.0 * s for s in strides[:-1]]


def assign_levels(boxes: torch.Tensor, size_bounds: torch.Tensor) -> torch.Tensor:
    """Level index of each box by its larger side: [..., 4] inclusive xyxy -> [...] int64.

    ``s = max(w, h)`` (``+1`` widths, input pixels) goes to level ``i`` when
    ``size_bounds[i - 1] <= s < size_bounds[i]`` (FCOS's size ranges, as CenterNet-style multi-level heads
    use them): level 0 takes everything below ``size_bounds[0]``, the last level everything from
    ``size_bounds[-1]`` on.
    """
    bw, bh = box_width_height(boxes.float())
    return torch.bucketize(torch.maximum(bw, bh).contiguous(), size_bounds.to(boxes.device).float(), right=True)


class MultiLevelCenterNetCodec:
    """CenterNet targets and decoding over several FPN levels, each object on the level its size says.

    Every level is a :class:`CenterNetCodec` at its stride (same cell convention, Gaussian radius and decoding);
    an object is encoded only on its level (:func:`assign_levels`), so each level learns objects of a few
    cells. Decoding takes the top ``k`` peaks of every level, merges them and keeps the top ``k`` overall;
    class-wise NMS (in the task) removes an object found on two neighbouring levels.

    Args:
        input_size: model input ``(width, height)``; a multiple of every stride.
        num_classes: heatmap channels. strides: the levels' strides, finest first, each double the previous.
        size_bounds: ``len(strides) - 1`` increasing boundaries (input pixels) between consecutive levels;
            :func:`default_size_bounds` when None.
        min_overlap, topk: as :class:`CenterNetCodec`.
    """

    def __init__(self, input_size: Sequence[int], num_classes: int, strides: Sequence[int] = (4, 8, 16, 32),
                 size_bounds: Sequence[float] | None = None, min_overlap: float = 0.7, topk: int = 100):
        strides = [int(s) for s in strides]
        if not strides or any(b != 2 * a for a, b in zip(strides, strides[1:])):
            raise ValueError(f"strides {strides} must be non-empty and double level to level (e.g. [4, 8, 16, 32])")
        bounds = default_size_bounds(strides) if size_bounds is None else [float(v) for v in size_bounds]
        if len(bounds) != len(strides) - 1 or any(b <= a for a, b in zip(bounds, bounds[1:])) or \
                any(b <= 0 for b in bounds):
            raise ValueError(f"size_bounds {bounds} must be {len(strides) - 1} increasing positive sizes (pixels), "
                             f"one boundary between each pair of the levels {strides}")
        self.levels = [CenterNetCodec(input_size, num_classes, s, min_overlap, topk) for s in strides]
        self.input_size = self.levels[0].input_size
        self.num_classes = int(num_classes)
        self.strides = strides
        self.size_bounds = bounds
        self.topk = int(topk)

    def __repr__(self) -> str:
        return (f"MultiLevelCenterNetCodec(input_size={self.input_size}, num_classes={self.num_classes}, "
                f"strides={self.strides}, size_bounds={self.size_bounds}, topk={self.topk})")

    def assign(self, boxes: torch.Tensor) -> torch.Tensor:
        """Level index [B, N] of boxes [B, N, 4] (:func:`assign_levels` with this codec's bounds)."""
        return assign_levels(boxes, torch.tensor(self.size_bounds, dtype=torch.float32))

    def window_radii(self, boxes: torch.Tensor, mask: torch.Tensor) -> list[int]:
        """Every level's :meth:`CenterNetCodec.window_radius` for its own objects, computed where ``boxes``
        live (the loader's CPU tensors: no read-back from the device in :meth:`encode`)."""
        level = self.assign(boxes)
        return [codec.window_radius(boxes, mask.bool() & (level == i)) for i, codec in enumerate(self.levels)]

    def encode(self, boxes: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
               window_radii: Sequence[int] | None = None) -> list[BoxTargets]:
        """One :class:`BoxTargets` per level (finest first) for padded boxes [B, N, 4], labels [B, N], mask [B, N].

        Every level keeps the batch's ``N`` slots; a box's mask is 1 only on its own level (and only where
        that level's codec accepts it), so a level's targets hold only its objects. ``window_radii``:
        :meth:`window_radii` of the same boxes from the host, or None to compute them here (one read-back per
        level on a GPU).
        """
        level = self.assign(boxes)
        radii = list(window_radii) if window_radii is not None else [None] * len(self.levels)
        if len(radii) != len(self.levels):
            raise ValueError(f"window_radii has {len(radii)} values for {len(self.levels)} levels")
        return [codec.encode(boxes, labels, mask.bool() & (level == i), radii[i])
                for i, codec in enumerate(self.levels)]

    def decode(self, heatmaps: Sequence[torch.Tensor], sizes: Sequence[torch.Tensor],
               offsets: Sequence[torch.Tensor], topk: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Boxes from per-level maps (lists, finest first, shaped as for :meth:`CenterNetCodec.decode`).

        Returns boxes [B, k, 4] (inclusive xyxy, input pixels), scores [B, k], labels [B, k] by decreasing
        score: the top ``k`` of the union of every level's top ``k`` peaks.
        """
        if not len(heatmaps) == len(sizes) == len(offsets) == len(self.levels):
            raise ValueError(f"expected maps of {len(self.levels)} levels (strides {self.strides}), got "
                             f"{len(heatmaps)} heatmaps, {len(sizes)} sizes and {len(offsets)} offsets")
        k = int(topk or self.topk)
        per_level = [codec.decode(h, s, o, k) for codec, h, s, o in zip(self.levels, heatmaps, sizes, offsets)]
        boxes, scores, labels = (torch.cat(parts, 1) for parts in zip(*per_level))
        scores, order = scores.topk(min(k, scores.shape[1]), dim=1)
        boxes = boxes.gather(1, order[..., None].expand(*order.shape, 4))
        return boxes, scores, labels.gather(1, order)
