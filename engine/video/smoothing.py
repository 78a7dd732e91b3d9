"""Temporal smoothing of keypoint tracks: the One-Euro filter (Casiez, Roussel and Vogel, CHI 2012).

A low-pass filter whose cut-off rises with speed: at rest it removes jitter (low cut-off), in fast motion
it follows with little lag (high cut-off). Per coordinate, with ``dt`` the time between frames:

    alpha(fc) = 1 / (1 + 1 / (2 pi fc dt))
    dx_hat    = alpha(d_cutoff) * (x - x_prev_hat) / dt + (1 - alpha(d_cutoff)) * dx_prev_hat
    fc        = min_cutoff + beta * |dx_hat|
    x_hat     = alpha(fc) * x + (1 - alpha(fc)) * x_prev_hat

``min_cutoff`` (Hz) sets the smoothing at rest (lower: smoother, more lag), ``beta`` (per pixel/s) how fast
the cut-off rises with speed (higher: less lag), ``d_cutoff`` (Hz) smooths the speed estimate. Off by
default everywhere; ``tools.infer --smooth`` turns it on with these parameters exposed.
"""

from __future__ import annotations

import math

import numpy as np


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray:
    return 1.0 / (1.0 + 1.0 / (2 * math.pi * np.asarray(cutoff, dtype=np.float64) * dt))


class OneEuroFilter:
    """One-Euro filter of an array of values (e.g. one pose [K, 2]), all filtered independently.

    Args:
        fps: frames per second of the signal (``dt = 1 / fps`` per frame step).
        min_cutoff, beta, d_cutoff: the filter's parameters (module docstring).
    """

    def __init__(self, fps: float, min_cutoff: float = 1.0, beta: float = 0.01, d_cutoff: float = 1.0):
        if fps <= 0 or min_cutoff <= 0 or d_cutoff <= 0 or beta < 0:
            raise ValueError(f"One-Euro filter needs fps, min_cutoff, d_cutoff > 0 and beta >= 0; got fps={fps}, "
                             f"min_cutoff={min_cutoff}, beta={beta}, d_cutoff={d_cutoff}")
        self.fps, self.min_cutoff, self.beta, self.d_cutoff = float(fps), min_cutoff, beta, d_cutoff
        self.x_prev: np.ndarray | None = None
        self.dx_prev: np.ndarray | None = None

    def __call__(self, x: np.ndarray, steps: int = 1) -> np.ndarray:
        """Filtered values of ``x``; ``steps``: frames since the previous call (a stride or a gap)."""
        x = np.asarray(x, dtype=np.float64)
        if self.x_prev is None:
            self.x_prev, self.dx_prev = x.copy(), np.zeros_like(x)
            return x.copy()
        dt = max(int(steps), 1) / self.fps
        # A keypoint that was missing (NaN) restarts from its new value.
        restart = ~np.isfinite(self.x_prev)
        x_prev = np.where(restart, x, self.x_prev)
        dx = np.where(restart, 0.0, (x - x_prev) / dt)
        a_d = _alpha(self.d_cutoff, dt)
        dx_hat = a_d * dx + (1 - a_d) * np.where(restart, 0.0, self.dx_prev)
        a = _alpha(self.min_cutoff + self.beta * np.abs(dx_hat), dt)
        x_hat = a * x + (1 - a) * x_prev
        self.x_prev, self.dx_prev = x_hat, dx_hat
        return x_hat.copy()


class TrackSmoother:
    """One One-Euro filter per track id over its keypoints' ``(x, y)``; confidences pass unchanged.

    ``smooth(frame, track_ids [N], keypoints [N, K, 3]) -> [N, K, 3]``. A track unseen for more than
    ``max_gap`` frames starts afresh (its old state would drag the new pose towards a stale one).
    """

    def __init__(self, fps: float, min_cutoff: float = 1.0, beta: float = 0.01, d_cutoff: float = 1.0,
                 max_gap: int = 10):
        OneEuroFilter(fps, min_cutoff, beta, d_cutoff)          # validates the parameters once
        self.params = {"fps": fps, "min_cutoff": min_cutoff, "beta": beta, "d_cutoff": d_cutoff}
        self.max_gap = max_gap
        self.filters: dict[int, tuple[OneEuroFilter, int]] = {}

    def smooth(self, frame: int, track_ids: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
        out = np.array(keypoints, dtype=np.float64, copy=True)
        for i, tid in enumerate(np.asarray(track_ids).reshape(-1)):
            f, last = self.filters.get(int(tid), (None, frame))
            if f is None or frame - last > self.max_gap:
                f, last = OneEuroFilter(**self.params), frame
            out[i, :, :2] = f(out[i, :, :2], steps=frame - last)
            self.filters[int(tid)] = (f, frame)
        return out


def jitter(track: np.ndarray) -> float:
    """Mean magnitude of the second difference of a keypoint trajectory, in pixels.

    track: [T, K, 2] positions of one instance over consecutive frames (NaN where missing). The second
    difference ``x[t+1] - 2 x[t] + x[t-1]`` is zero for motion at constant velocity, so it measures the
    frame-to-frame shake that smoothing removes rather than the motion itself.
    """
    t = np.asarray(track, dtype=np.float64)
    if len(t) < 3:
        return float("nan")
    acc = np.linalg.norm(t[2:] - 2 * t[1:-1] + t[:-2], axis=-1)
    return float(np.nanmean(acc))
