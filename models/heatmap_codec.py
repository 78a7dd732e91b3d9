"""The one place that maps keypoints <-> heatmaps: training targets, decoding, flip testing.

Coordinates (docs/conventions.md):

* Keypoints are in pixel-index coordinates of the model's input crop: pixel ``i`` is centred at ``i``.
* A heatmap at stride ``s`` is aligned with its input: cell ``u`` covers the input pixels centred at
  ``(u + 0.5) * s - 0.5``, so ``u = (x + 0.5) / s - 0.5``. When the input size is ``s`` times the heatmap
  size, mirroring the input (``x -> W - 1 - x``) mirrors the heatmap cells (``u -> w - 1 - u``) exactly,
  and flip testing needs no hand-tuned shift.

Everything runs on the device of the tensors it is given, for the whole batch at once (no Python loop over
samples or keypoints), and without host synchronisation, so the data loader only ships raw keypoints.
This module imports nothing of ours.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

REFINE_MODES = ("dark", "quarter", "none")

# Floor for heatmap values before the log in DARK refinement (MMPose clips at 1e-3 as well): the log of a
# zero or negative network output is undefined, and a floor this low only touches cells far from the peak.
_DARK_LOG_FLOOR = 1e-3
# A peak whose log-Hessian determinant is below this is flat or a saddle: no Taylor step there.
_DARK_MIN_DET = 1e-6
# Gaussian factors below this are set to 0. The far tails (beyond ~9.4 sigma in 2D) would otherwise
# underflow into float32 subnormals, which x86 CPUs process many times slower: 6% of a 64x48 sigma-2
# target were subnormal, making encode ~3x and DARK's blur ~6x slower on CPU (bench/bench_codec.py).
# Two factors of at least 1e-15 multiply to at least 1e-30, well above the subnormal range (< 1.2e-38).
_GAUSSIAN_TAIL_FLOOR = 1e-15
# DARK's derivatives as a linear map of the flattened 3x3 log window n[y, x] (index 3 * y + x; the centre is
# 4): columns dx = (n[1,2] - n[1,0]) / 2, dy = (n[2,1] - n[0,1]) / 2, dxx = n[1,2] - 2 n[1,1] + n[1,0],
# dyy = n[2,1] - 2 n[1,1] + n[0,1], dxy = (n[2,2] - n[2,0] - n[0,2] + n[0,0]) / 4.
_FINITE_DIFFERENCES = torch.tensor([
    # dx    dy    dxx   dyy   dxy
    [0.0,  0.0,  0.0,  0.0,  0.25],    # n[0, 0]
    [0.0, -0.5,  0.0,  1.0,  0.0],     # n[0, 1]
    [0.0,  0.0,  0.0,  0.0, -0.25],    # n[0, 2]
    [-0.5, 0.0,  1.0,  0.0,  0.0],     # n[1, 0]
    [0.0,  0.0, -2.0, -2.0,  0.0],     # n[1, 1]
    [0.5,  0.0,  1.0,  0.0,  0.0],     # n[1, 2]
    [0.0,  0.0,  0.0,  0.0, -0.25],    # n[2, 0]
    [0.0,  0.5,  0.0,  1.0,  0.0],     # n[2, 1]
    [0.0,  0.0,  0.0,  0.0,  0.25],    # n[2, 2]
])


def _map_size(hm: torch.Tensor) -> torch.Tensor:
    """(w, h) of heatmaps [..., h, w] as a long tensor [2] made on their device: no host-to-device copy."""
    h, w = hm.shape[-2:]
    return w + (h - w) * torch.arange(2, device=hm.device)


def default_blur_kernel_size(sigma: float) -> int:
    """Odd size of the Gaussian that smooths network heatmaps before DARK's log: ``2 * floor(sigma) + 1``.

    DARK and MMPose blur with a kernel whose own sigma equals the target's (size 11 for sigma 2); a lighter
    blur localises better on the models trained here, and the best size depends on the model, so this default
    is a starting point, not a measured optimum: the demo config sets 3, measured best on its trained model
    (AP 0.780 for 3, 0.774 for 5, 0.769 for 7; configs/hg-fpn_resnet18_synthetic-kpt_64x96.yaml). Measure
    yours with ``tools.eval ... eval.blur_kernel_size=K``.
    """
    return 2 * max(int(sigma), 1) + 1


class HeatmapCodec:
    """Gaussian heatmap encoder and sub-pixel decoder for top-down keypoint models.

    Args:
        input_size: model input ``(width, height)`` in pixels.
        heatmap_size: heatmap ``(width, height)``; ``input_size`` must be the same integer or float
            multiple of it along both axes (the stride).
        sigma: Gaussian standard deviation in heatmap cells: one for every keypoint, or a sequence of ``K``
            (one per keypoint: e.g. a wider target for points that the image fixes only along one direction,
            like a face's contour).
        refine: sub-pixel refinement at decode: ``"dark"`` (Taylor step on the log of the blurred heatmap,
            Zhang et al. 2020), ``"quarter"`` (a quarter cell towards the higher neighbour, as in
            SimpleBaseline/HRNet) or ``"none"`` (integer argmax).
        blur_kernel_size: odd size of the Gaussian that smooths network outputs before DARK's log (its sigma
            follows OpenCV's rule for the size); ``2 * floor(sigma) + 1`` when None, 1 for no blur.
    """

    def __init__(self, input_size: Sequence[int], heatmap_size: Sequence[int], sigma: float | Sequence[float] = 2.0,
                 refine: str = "dark", blur_kernel_size: int | None = None):
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.heatmap_size = (int(heatmap_size[0]), int(heatmap_size[1]))
        sx = self.input_size[0] / self.heatmap_size[0]
        sy = self.input_size[1] / self.heatmap_size[1]
        if not math.isclose(sx, sy):
            raise ValueError(f"input_size {self.input_size} and heatmap_size {self.heatmap_size} have different "
                             f"strides along x ({sx}) and y ({sy}); use the same stride on both axes")
        if refine not in REFINE_MODES:
            raise ValueError(f"refine={refine!r} is not one of {REFINE_MODES}")
        per_keypoint = not isinstance(sigma, (int, float))
        sigmas = [float(v) for v in sigma] if per_keypoint else [float(sigma)]
        if not sigmas or not all(v > 0 and math.isfinite(v) for v in sigmas):
            raise ValueError(f"sigma must be > 0 (one value or one per keypoint), got {sigma}")
        self.stride = sx
        self.sigma: float | list[float] = sigmas if per_keypoint else sigmas[0]
        self._sigmas = torch.tensor(sigmas, dtype=torch.float32)     # [K] or [1]
        self._denominators: dict[torch.device, torch.Tensor] = {}    # 2 sigma^2 per device, copied once
        self.refine = refine
        # DARK's blur follows the widest target: a kernel wider than a peak would flatten it.
        self.blur_kernel_size = (default_blur_kernel_size(max(sigmas)) if blur_kernel_size is None
                                 else blur_kernel_size)
        if self.blur_kernel_size < 1 or self.blur_kernel_size % 2 == 0:
            raise ValueError(f"blur_kernel_size must be odd and >= 1, got {self.blur_kernel_size}")

    def __repr__(self) -> str:
        return (f"HeatmapCodec(input_size={self.input_size}, heatmap_size={self.heatmap_size}, "
                f"sigma={self.sigma}, refine={self.refine!r})")

    # ------------------------------------------------------------------ coordinates
    def to_heatmap_coords(self, xy: torch.Tensor) -> torch.Tensor:
        """Input pixel coordinates [..., 2] -> heatmap cell coordinates: ``u = (x + 0.5) / s - 0.5``."""
        return (xy + 0.5) / self.stride - 0.5

    def to_input_coords(self, uv: torch.Tensor) -> torch.Tensor:
        """Heatmap cell coordinates [..., 2] -> input pixel coordinates: ``x = (u + 0.5) * s - 0.5``."""
        return (uv + 0.5) * self.stride - 0.5

    # ------------------------------------------------------------------ encode
    def encode(self, keypoints: torch.Tensor,
               keypoint_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian targets for a batch, built on ``keypoints.device``.

        Args:
            keypoints: [B, K, 3] ``(x, y, visibility)`` in input pixel coordinates; visibility > 0 means
                labelled (COCO ``v`` 1 or 2).
            keypoint_weights: optional [K] per-keypoint loss weights.
        Returns:
            heatmaps: [B, K, h, w] float32, a Gaussian of ``sigma`` cells (keypoint k's own with a sequence)
                at the exact float centre
                (peak 1 when the centre is on a cell), zero for keypoints that get no weight.
            weights: [B, K] float32; zero for unlabelled keypoints and for keypoints whose centre lies
                outside the heatmap (beyond its cells' outer edges).
        """
        if keypoints.ndim != 3 or keypoints.shape[-1] != 3:
            raise ValueError(f"keypoints must be [B, K, 3] (x, y, visibility), got {tuple(keypoints.shape)}")
        kpts = keypoints.float()
        w, h = self.heatmap_size
        uv = self.to_heatmap_coords(kpts[..., :2])
        u, v = uv[..., 0], uv[..., 1]
        inside = (u >= -0.5) & (u <= w - 0.5) & (v >= -0.5) & (v <= h - 0.5)
        valid = inside & (kpts[..., 2] > 0) & torch.isfinite(uv).all(-1)
        if self._sigmas.numel() not in (1, kpts.shape[1]):
            raise ValueError(f"the codec has {self._sigmas.numel()} sigmas (one per keypoint) but keypoints has "
                             f"{kpts.shape[1]} keypoints")
        # Separable Gaussian: exp(-(dx^2 + dy^2) / 2s^2) = exp(-dx^2 / 2s^2) * exp(-dy^2 / 2s^2).
        denom = self._denominators.get(kpts.device)     # [K or 1, 1], against [B, K, w]
        if denom is None:   # once per device: no host-to-device copy in every training step
            denom = self._denominators[kpts.device] = (2 * self._sigmas ** 2)[:, None].to(kpts.device)
        xs = torch.arange(w, device=kpts.device, dtype=torch.float32)
        ys = torch.arange(h, device=kpts.device, dtype=torch.float32)
        # nan_to_num keeps invalid (e.g. NaN) keypoints from poisoning the product; they are masked anyway.
        gx = torch.exp(-(xs - torch.nan_to_num(u)[..., None]) ** 2 / denom)   # [B, K, w]
        gy = torch.exp(-(ys - torch.nan_to_num(v)[..., None]) ** 2 / denom)   # [B, K, h]
        gx = gx * (gx >= _GAUSSIAN_TAIL_FLOOR)
        gy = gy * (gy >= _GAUSSIAN_TAIL_FLOOR)
        weights = valid.float()
        # One pass over the [B, K, h, w] output (the only large tensor): the weights go into the small factor.
        heatmaps = (gy * weights[..., None]).unsqueeze(-1) * gx.unsqueeze(-2)
        if keypoint_weights is not None:
            weights = weights * keypoint_weights.to(weights)
        return heatmaps, weights

    # ------------------------------------------------------------------ decode
    def decode(self, heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keypoints from heatmaps: argmax, then sub-pixel refinement.

        Args:
            heatmaps: [B, K, h, w] (any float dtype; decoded in float32).
        Returns:
            keypoints: [B, K, 2] in input pixel coordinates.
            scores: [B, K], the heatmap maximum (the confidence used for rescoring and OKS evaluation).
        """
        if heatmaps.ndim != 4:
            raise ValueError(f"heatmaps must be [B, K, h, w], got {tuple(heatmaps.shape)}")
        hm = heatmaps.float()
        b, k, h, w = hm.shape
        scores, flat_idx = hm.flatten(2).max(dim=-1)
        iu = flat_idx % w
        iv = torch.div(flat_idx, w, rounding_mode="floor")
        argmax = torch.stack([iu, iv], dim=-1)                      # [B, K, 2] integer cells
        uv = argmax.float()
        if self.refine == "dark":
            uv = self._dark_refine(hm, argmax)
        elif self.refine == "quarter":
            uv = uv + self._quarter_offsets(hm, iu, iv)
        return self.to_input_coords(uv), scores

    @staticmethod
    def _patches(maps: torch.Tensor, cu: torch.Tensor, cv: torch.Tensor, radius: int,
                 outside: str = "zero") -> torch.Tensor:
        """The (2r+1)^2 values around (cu, cv) in each map: [B, K, h, w] -> [B, K, 2r+1, 2r+1].

        Cells beyond the map are 0 (``outside="zero"``, the zero padding of a blur) or repeat the nearest
        edge cell (``"replicate"``). Only these small windows are read, so decoding costs one argmax pass
        over the heatmaps plus work proportional to B * K.
        """
        b, k, h, w = maps.shape
        offs = torch.arange(-radius, radius + 1, device=maps.device)
        rows = cv[..., None] + offs                                  # [B, K, n]
        cols = cu[..., None] + offs
        rows_c, cols_c = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
        index = (rows_c[..., :, None] * w + cols_c[..., None, :]).reshape(b, k, -1)
        values = maps.reshape(b, k, h * w).gather(-1, index).reshape(b, k, len(offs), len(offs))
        if outside == "zero":
            inside = (rows == rows_c)[..., :, None] & (cols == cols_c)[..., None, :]
            values = values * inside
        return values

    def _blur_kernel(self, device, dtype) -> torch.Tensor:
        ks = self.blur_kernel_size
        blur_sigma = 0.3 * ((ks - 1) * 0.5 - 1) + 0.8     # OpenCV's sigma for kernel size ks
        t = torch.arange(ks, device=device, dtype=dtype) - (ks - 1) / 2
        g = torch.exp(-t ** 2 / (2 * blur_sigma ** 2))
        return g / g.sum()

    def _blur(self, hm: torch.Tensor) -> torch.Tensor:
        """DARK's Gaussian blur of whole maps (zero padding): [B, K, h, w] -> same. Decoding only needs the
        3x3 cells at each peak (:meth:`_blurred_neighbourhood`); this full version is for inspection."""
        g = self._blur_kernel(hm.device, hm.dtype)
        ks = len(g)
        b, k, h, w = hm.shape
        # The maps as channels of one image with groups = B * K (depthwise): the same sums as a batch of B * K
        # one-channel images, which oneDNN runs ~10x slower on CPU.
        x = hm.reshape(1, b * k, h, w)
        x = F.conv2d(x, g.view(1, 1, 1, ks).expand(b * k, 1, 1, ks), padding=(0, ks // 2), groups=b * k)
        x = F.conv2d(x, g.view(1, 1, ks, 1).expand(b * k, 1, ks, 1), padding=(ks // 2, 0), groups=b * k)
        return x.reshape(b, k, h, w)

    def _blurred_neighbourhood(self, hm: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The 3x3 cells around ``c`` ([B, K, 2] integer (u, v)) of the heatmap blurred with DARK's Gaussian:
        [B, K, 3, 3], indexed [..., y, x].

        Only the window that the Taylor step reads is blurred. Near the border the kernel is truncated (and
        renormalised) so that it never reaches past the map: DARK's zero padding would pull peaks within a
        few cells of the border inwards by up to half a cell, and extremities (wrists, ankles) sit there in
        a padded top-down crop. In the interior this is exactly the full-map blur.
        """
        b, k, h, w = hm.shape
        cu, cv = c.unbind(-1)
        r = self.blur_kernel_size // 2
        if r == 0:
            return self._patches(hm, cu, cv, 1, outside="replicate")
        patch = self._patches(hm, cu, cv, r + 1, outside="zero")        # [B, K, 2r+3, 2r+3]
        t = torch.arange(-r, r + 1, device=hm.device)
        base = self._blur_kernel(hm.device, hm.dtype)                    # [2r+1]
        # Per axis, the largest radius whose support stays inside the map for all 3 stencil cells (cells
        # c-1-r .. c+1+r); both axes at once, as (u, v) pairs.
        radius = torch.minimum(c - 1, _map_size(hm) - 2 - c).clamp(min=0, max=r)       # [B, K, 2]
        g = base * (t.abs() <= radius[..., None])
        gx, gy = (g / g.sum(-1, keepdim=True)).unbind(-2)                 # [B, K, 2r+1] each
        # Separable 'valid' convolution with a kernel per keypoint, (2r+3) -> 3 cells along each axis, as two
        # products with banded matrices: band[j, i] = g[j - i] where 0 <= j - i <= 2r, else 0. (Matrix
        # products rather than unfold + einsum: the exported graph then has no Transpose of a strided window.)
        j, i = torch.arange(2 * r + 3, device=hm.device)[:, None], torch.arange(3, device=hm.device)[None, :]
        tap, in_band = (j - i).clamp(0, 2 * r), ((j - i) >= 0) & ((j - i) <= 2 * r)          # [2r+3, 3]
        band_x = gx[..., tap] * in_band                                    # [B, K, 2r+3, 3]
        band_y_t = gy[..., tap.T] * in_band.T                              # [B, K, 3, 2r+3]
        return band_y_t @ patch @ band_x                                   # [B, K, 3, 3]

    def _dark_refine(self, hm: torch.Tensor, argmax: torch.Tensor) -> torch.Tensor:
        """DARK: one Newton step ``-H^-1 g`` on the log of the (blurred) heatmap near ``argmax`` ([B, K, 2]
        integer (u, v) cells). Returns [B, K, 2].

        On a noiseless Gaussian the log is a quadratic, so the step lands on the true centre exactly (up to
        the blur's discretisation). At the border the finite
        differences are taken one cell inwards (a quadratic fitted to three cells is exact wherever its peak
        lies) instead of on cells outside the map; the result stays within one cell of the argmax and
        inside the map. The (u, v) pairs go through each step together: in an exported graph every tensor
        operation is a node with a fixed cost, and decoding is dozens of them on tiny tensors.
        """
        size = _map_size(hm)
        # The stencil's centre, one cell inside the map along each axis that has 3 cells or more.
        inset = (size >= 3).long()
        c = torch.minimum(torch.maximum(argmax, inset), size - 1 - inset)
        n = torch.log(self._blurred_neighbourhood(hm, c).clamp(min=_DARK_LOG_FLOOR))    # n[..., y, x]
        # The five central finite differences (dx, dy, dxx, dyy, dxy) are linear in the 3x3 window.
        # (non_blocking: copying the constant table to a GPU need not wait for the work queued there)
        table = _FINITE_DIFFERENCES.to(n, non_blocking=True)
        dx, dy, dxx, dyy, dxy = (n.flatten(-2) @ table).unbind(-1)
        det = dxx * dyy - dxy ** 2
        # Only step at a proper maximum (negative-definite Hessian); elsewhere keep the argmax.
        ok = ((det > _DARK_MIN_DET) & (dxx < 0))[..., None]
        safe_det = torch.where(ok, det[..., None], torch.ones_like(det[..., None]))
        step = -torch.stack([dyy * dx - dxy * dy, dxx * dy - dxy * dx], dim=-1) / safe_det
        uv, peak = c + step, argmax.float()
        # The maximum of a unimodal peak is within one cell of the argmax, and inside the map.
        uv = torch.where(ok, torch.minimum(torch.maximum(uv, peak - 1), peak + 1), peak)
        return torch.minimum(uv.clamp(min=-0.5), size - 0.5)

    @staticmethod
    def _quarter_offsets(hm: torch.Tensor, iu: torch.Tensor, iv: torch.Tensor) -> torch.Tensor:
        """A quarter cell towards the higher neighbour along each axis (SimpleBaseline). [B, K, 2]."""
        n = HeatmapCodec._patches(hm, iu, iv, 1, outside="replicate")
        return 0.25 * torch.stack([torch.sign(n[..., 1, 2] - n[..., 1, 0]),
                                   torch.sign(n[..., 2, 1] - n[..., 0, 1])], dim=-1)

    # ------------------------------------------------------------------ flip
    @staticmethod
    def flip_heatmaps(heatmaps: torch.Tensor, flip_index: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Heatmaps of the mirrored image mapped back to the original: mirror the cells, swap left/right.

        heatmaps: [B, K, h, w]; flip_index: [K], ``flip_index[i]`` is the keypoint that ``i`` becomes
        under a horizontal flip. With aligned heatmaps no pixel shift is needed.
        """
        index = torch.as_tensor(flip_index, device=heatmaps.device, dtype=torch.long)
        return heatmaps.flip(-1).index_select(1, index)

    @staticmethod
    def shift_heatmaps_x(heatmaps: torch.Tensor, cells: float) -> torch.Tensor:
        """Heatmaps [B, K, h, w] moved right by ``cells`` (a float; negative: left), zeros coming in.

        ``out[..., x] = heatmaps[..., x - cells]``, linear between the two whole-cell shifts around it. Used on
        the mirrored pass of a flip test for a model that learnt a left-right label offset (``eval.flip_test_shift``).
        """
        if cells == 0:
            return heatmaps
        whole = math.floor(cells)
        frac = float(cells - whole)

        def moved(n: int) -> torch.Tensor:
            w = heatmaps.shape[-1]
            if n >= 0:
                return F.pad(heatmaps, (n, 0))[..., :w]
            return F.pad(heatmaps, (0, -n))[..., -n:]

        return moved(whole) if frac == 0 else (1.0 - frac) * moved(whole) + frac * moved(whole + 1)

    @staticmethod
    def flip_keypoints(keypoints: torch.Tensor, flip_index: Sequence[int] | torch.Tensor,
                       image_width: int) -> torch.Tensor:
        """Keypoints [B, K, >=2] of an image mirrored horizontally: ``x -> W - 1 - x``, left/right swapped."""
        index = torch.as_tensor(flip_index, device=keypoints.device, dtype=torch.long)
        flipped = keypoints.index_select(1, index).clone()
        flipped[..., 0] = image_width - 1 - flipped[..., 0]
        return flipped
