"""OKS sigma estimation recovers the sigmas that generated the annotator disagreement."""

from __future__ import annotations

import json

import numpy as np

from engine.evaluation.keypoint_metrics import estimate_oks_sigmas


def test_recovers_generating_sigmas():
    rng = np.random.default_rng(0)
    n, true = 4000, np.array([0.025, 0.062, 0.107])
    areas = rng.uniform(1000, 20000, n)
    a = np.concatenate([rng.uniform(0, 200, (n, 3, 2)), np.full((n, 3, 1), 2.0)], axis=-1)
    # The second annotation differs by (dx, dy), each N(0, sigma^2 s^2 / 2), so E[d^2 / s^2] = sigma^2.
    noise = rng.normal(0, 1, (n, 3, 2)) * (true[None, :, None] * np.sqrt(areas)[:, None, None] / np.sqrt(2))
    b = a.copy()
    b[..., :2] += noise
    b[:10, 0, 2] = 0                                  # unlabelled in one annotation: left out
    est = estimate_oks_sigmas(a, b, areas)
    np.testing.assert_allclose(est, true, rtol=0.05)


def test_tool_prints_config_line(tmp_path, capsys):
    from tools import estimate_sigmas

    ann = {"annotations": [{"id": 1, "keypoints": [0, 0, 2, 10, 10, 2], "area": 100.0, "bbox": [0, 0, 10, 10]}],
           "categories": [{"id": 1, "keypoints": ["a", "b"]}]}
    other = {"annotations": [{"id": 1, "keypoints": [3, 4, 2, 10, 10, 2], "area": 100.0}]}
    (tmp_path / "a.json").write_text(json.dumps(ann))
    (tmp_path / "b.json").write_text(json.dumps(other))
    sigmas = estimate_sigmas.main(["--ann-a", str(tmp_path / "a.json"), "--ann-b", str(tmp_path / "b.json")])
    assert sigmas == [0.5, 0.0]                       # d = 5 px, s = 10 px
    assert "data.oks_sigmas: [0.500, 0.000]" in capsys.readouterr().out
