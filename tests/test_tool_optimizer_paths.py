"""tools/faq/optimizer_paths.py: optimiser trajectories on J = 0.5 (theta_1^2 + cond theta_2^2)."""

import math

import numpy as np
import pytest

from tools.faq import optimizer_paths as op

START = [-5.0, 1.5]
COND = 50.0


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("opt") / "paths.png"
    res = op.main(["--steps", "8", "--output", str(out)])
    assert out.is_file() and out.stat().st_size > 10_000
    return res


def test_all_optimizers_run_and_lower_the_loss(results):
    assert set(results) == {"sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"}
    for name, r in results.items():
        assert r["path"].shape == (9, 2) and r["effective_step"].shape == (8, 2)
        np.testing.assert_array_equal(r["path"][0], START)  # same start for everyone
        # initial loss by hand: 0.5 * (25 + 50 * 2.25) = 68.75
        assert r["loss"][0] == pytest.approx(68.75)
        assert r["loss"][-1] < r["loss"][0], name


def test_sgd_effective_step_is_lr_for_both_coordinates(results):
    r = results["sgd"]
    np.testing.assert_allclose(r["effective_step"], r["lr"], rtol=1e-12)
    # first step by hand: grad = (theta_1, 50 theta_2) = (-5, 75)
    np.testing.assert_allclose(r["path"][1], [-5 + 0.035 * 5, 1.5 - 0.035 * 75])


@pytest.mark.parametrize("name", ["adagrad", "rmsprop", "adam"])
def test_adaptive_effective_steps_differ_between_coordinates(results, name):
    eff = results[name]["effective_step"]
    # |grad_2| > |grad_1| at the start, so the steep coordinate gets the smaller effective step
    assert np.all(eff[:3, 1] < 0.5 * eff[:3, 0]), eff[:3]


def test_adagrad_first_two_steps_by_hand():
    r = op.run_optimizer("adagrad", lr=1.0, start=START, steps=2, cond=COND)
    eps = 1e-10  # torch.optim.Adagrad default
    g1 = np.array([-5.0, 75.0])  # grad at (-5, 1.5)
    step1 = 1.0 / (np.sqrt(g1**2) + eps)  # lr / (sqrt(sum of squared grads) + eps)
    theta1 = np.array(START) - step1 * g1  # = (-4, 0.5): each coordinate moves by lr
    np.testing.assert_allclose(theta1, [-4.0, 0.5])
    g2 = np.array([theta1[0], COND * theta1[1]])  # (-4, 25)
    step2 = 1.0 / (np.sqrt(g1**2 + g2**2) + eps)  # = (1/sqrt(41), 1/sqrt(6250))
    np.testing.assert_allclose(step2, [1 / math.sqrt(41), 1 / math.sqrt(6250)])

    np.testing.assert_allclose(r["effective_step"][0], step1, rtol=1e-12)
    np.testing.assert_allclose(r["effective_step"][1], step2, rtol=1e-12)
    np.testing.assert_allclose(r["path"][2], theta1 - step2 * g2, rtol=1e-12)


def test_lr_override_and_bad_arguments(tmp_path):
    res = op.main(
        ["--steps", "2", "--output", str(tmp_path / "p.png"), "--lr", "sgd=0.01", "--optimizers", "sgd"]
    )
    np.testing.assert_allclose(res["sgd"]["effective_step"], 0.01)
    with pytest.raises(ValueError, match="--lr"):
        op.main(["--steps", "2", "--output", str(tmp_path / "p.png"), "--lr", "sgdd=0.1"])
    with pytest.raises(ValueError, match="--lr"):
        op.main(["--steps", "2", "--output", str(tmp_path / "p.png"), "--lr", "adam=fast"])
    with pytest.raises(ValueError, match="--steps"):
        op.main(["--steps", "0", "--output", str(tmp_path / "p.png")])
