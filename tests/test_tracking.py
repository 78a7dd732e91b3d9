"""Tracking (IoU + OKS matching, new ids, retirement after a gap) and One-Euro smoothing, by hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.video.smoothing import OneEuroFilter, TrackSmoother, jitter
from engine.video.tracking import PoseTracker, match

SIGMAS = [0.1, 0.1, 0.1]


def pose_at(x, y):
    """A 3-keypoint pose around (x, y) and its box."""
    k = np.array([[x, y, 1.0], [x + 4, y + 8, 1.0], [x - 4, y + 8, 1.0]])
    return np.array([x - 6, y - 2, x + 6, y + 10], dtype=np.float64), k


def test_hungarian_and_greedy_differ_where_they_should():
    # Greedy takes the 0.9 pair first and leaves 0.1 for the rest (total 1.0); Hungarian finds 0.8 + 0.8.
    sim = np.array([[0.9, 0.8], [0.8, 0.1]])
    assert sorted(match(sim, 0.05, "greedy")) == [(0, 0), (1, 1)]
    assert sorted(match(sim, 0.05, "hungarian")) == [(0, 1), (1, 0)]
    # Below the threshold nothing is matched.
    assert match(sim, 0.95, "hungarian") == [] and match(sim, 0.95, "greedy") == []
    assert match(np.zeros((0, 3)), 0.1) == []


@pytest.mark.parametrize("method", ["hungarian", "greedy"])
def test_ids_follow_instances_whatever_their_order(method):
    tracker = PoseTracker(SIGMAS, method=method)
    a, b = (20.0, 20.0), (80.0, 30.0)
    seen = []
    for t in range(6):
        pa, pb = pose_at(a[0] + 2 * t, a[1] + t), pose_at(b[0] - 2 * t, b[1])
        order = [pa, pb] if t % 2 == 0 else [pb, pa]          # the detector's order changes every frame
        ids = tracker.update(t, np.stack([o[0] for o in order]), np.stack([o[1] for o in order]))
        seen.append(ids if t % 2 == 0 else ids[::-1])
    assert all(list(s) == [0, 1] for s in seen)


def test_unmatched_get_new_ids_and_tracks_retire_after_the_gap():
    tracker = PoseTracker(SIGMAS, max_gap=2)
    box, k = pose_at(30, 30)
    assert list(tracker.update(0, box[None], k[None])) == [0]
    # Frames 1-2: nobody. Frame 3 is 3 frames after the last sighting (> max_gap 2): a new id.
    tracker.update(1, np.zeros((0, 4)), np.zeros((0, 3, 3)))
    assert list(tracker.update(3, box[None], k[None])) == [1]
    # Within the gap the id survives.
    assert list(tracker.update(5, box[None], k[None])) == [1]
    # A far-away instance matches nothing: new id, and ids are never reused.
    far_box, far_k = pose_at(300, 300)
    assert list(tracker.update(6, np.stack([box, far_box]), np.stack([k, far_k]))) == [1, 2]


def test_similarity_is_the_weighted_iou_and_oks():
    tracker = PoseTracker(SIGMAS, iou_weight=0.25)
    box, k = pose_at(30, 30)
    tracker.update(0, box[None], k[None])
    shifted_box, shifted_k = box + np.array([3, 0, 3, 0]), k + np.array([3, 0, 0])
    sim = tracker.similarity(shifted_box[None], shifted_k[None])[0, 0]
    w = h = 13.0                                  # inclusive pixels: x2 - x1 + 1
    iou = (w - 3) * h / (2 * w * h - (w - 3) * h)
    area = w * h
    oks = math.exp(-9 / (2 * area * (2 * 0.1) ** 2))
    assert sim == pytest.approx(0.25 * iou + 0.75 * oks)


def test_one_euro_by_hand():
    f = OneEuroFilter(fps=10, min_cutoff=1.0, beta=0.0, d_cutoff=1.0)
    assert f(np.array([0.0]))[0] == 0.0
    # beta = 0: a first-order low-pass with alpha = 1 / (1 + 1 / (2 pi fc dt)), fc = 1 Hz, dt = 0.1 s.
    alpha = 1 / (1 + 1 / (2 * math.pi * 0.1))
    assert f(np.array([1.0]))[0] == pytest.approx(alpha)
    assert f(np.array([1.0]))[0] == pytest.approx(alpha + (1 - alpha) * alpha)
    # A constant signal is left alone.
    g = OneEuroFilter(fps=30)
    assert all(g(np.array([5.0, -2.0])).tolist() == [5.0, -2.0] for _ in range(5))
    with pytest.raises(ValueError, match="min_cutoff"):
        OneEuroFilter(fps=30, min_cutoff=0)


def test_smoothing_removes_jitter_and_follows_each_track_on_its_own():
    rng = np.random.default_rng(0)
    t = np.arange(60)
    truth = np.stack([2.0 * t, 0.5 * t], -1)[:, None, :].repeat(3, 1)          # [T, K, 2], constant velocity
    noisy = truth + rng.normal(0, 1.0, truth.shape)
    smoother = TrackSmoother(fps=30, min_cutoff=1.0, beta=0.05)
    out = []
    for i in t:
        kp = np.concatenate([noisy[i], np.ones((3, 1))], -1)
        far = kp + np.array([500.0, 0, 0])                # a second track far away must not pull this one
        out.append(smoother.smooth(int(i), np.array([0, 1]), np.stack([kp, far]))[0, :, :2])
    out = np.stack(out)
    assert jitter(out) < 0.5 * jitter(noisy)
    # Confidences pass through; the smoothed track stays near the truth (lag at 60 px/s is bounded).
    assert np.abs(out - truth)[10:].mean() < np.abs(noisy - truth)[10:].mean() + 1.0


def test_jitter_is_zero_on_a_straight_line_at_constant_speed():
    t = np.arange(10, dtype=np.float64)
    assert jitter(np.stack([t, 2 * t], -1)[:, None]) == pytest.approx(0.0)
