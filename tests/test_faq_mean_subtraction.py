"""FAQ: mean subtraction. All-positive inputs give a linear unit's weight gradients one sign; centring gives
them both signs and removes the mean's eigenvalue from E[x x^T]; what torchvision/timm expect."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from models.classifier import backbone_mean, letterbox_fill
from models.normalize import InputNormalizer
from tools.faq import mean_subtraction as ms


def test_mean_subtraction_one_sample_gradient_has_one_sign_by_hand():
    # y = w . x + b, dL/dw = dL/dy * x. Inputs (1, 2) and (3, 1), upstream +1 and -1:
    x = np.array([[1.0, 2.0], [3.0, 1.0]])
    g = ms.weight_gradients(x, np.array([1.0, -1.0]))
    assert g.tolist() == [[1.0, 2.0], [-3.0, -1.0]]          # each row: one sign, the sign of dL/dy
    assert ms.one_sign(g).all()
    # Centred on the mean (2, 1.5): (-1, 0.5) and (1, -0.5); the gradients now have both signs.
    g = ms.weight_gradients(x - x.mean(0), np.array([1.0, -1.0]))
    assert g.tolist() == [[-1.0, 0.5], [-1.0, 0.5]] and not ms.one_sign(g).any()


def test_mean_subtraction_removes_the_means_eigenvalue():
    # Inputs m + z, z ~ N(0, I_4), |m|^2 = 4 * 10^2: E[x x^T] = I + m m^T has eigenvalues 1 + 400 and 1 (x3).
    rng = np.random.default_rng(0)
    z = rng.normal(size=(200_000, 4))
    m = np.full(4, 10.0)
    assert ms.condition_number(m + z, bias=False) == pytest.approx(401, rel=0.02)
    assert ms.condition_number(z, bias=False) == pytest.approx(1, abs=0.03)
    # Gradient descent at its largest stable rate needs about kappa ln(1 / tol) steps: far more uncentred.
    assert ms.gd_steps(m + z) > 20 * ms.gd_steps(z)


def test_mean_subtraction_on_image_patches():
    # A smooth positive image (a ramp plus noise): raw and [0, 1]-scaled inputs give 100% one-sign per-sample
    # gradients; centring brings that down and lowers the condition number and the GD steps.
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:64, :64]
    image = np.clip(80 + xx[..., None] + yy[..., None] + rng.normal(0, 20, (64, 64, 3)), 0, 255).astype(np.uint8)
    rows = {r["inputs"]: r for r in ms.analyse(ms.sample_patches(image, 3, 1000), max_steps=20_000)}
    raw, unit, centred = rows["raw [0, 255]"], rows["scaled to [0, 1]"], rows["data-centred"]
    assert raw["per_sample_one_sign"] == unit["per_sample_one_sign"] == 1.0
    assert unit["batch_one_sign"] == raw["batch_one_sign"] > 0.5      # scaling keeps every sign
    assert centred["per_sample_one_sign"] < 0.2 and centred["batch_one_sign"] < 0.2
    assert centred["kappa"] < unit["kappa"] / 5 and centred["gd_steps"] < unit["gd_steps"]
    assert abs(centred["mean"]) < 1e-9


def test_mean_subtraction_what_torchvision_and_timm_expect():
    # torchvision's ImageNet weights: ToTensor ([0, 1]) then Normalize(ImageNet mean, std); timm declares the
    # same per model in pretrained_cfg (some models declare 0.5), and the repository's models read it.
    assert timm.get_pretrained_cfg("resnet18").mean == ms.IMAGENET_MEAN
    assert timm.get_pretrained_cfg("resnet18").std == ms.IMAGENET_STD
    assert backbone_mean("resnet18") == ms.IMAGENET_MEAN
    assert timm.get_pretrained_cfg("inception_v3").mean == (0.5, 0.5, 0.5)
    # InputNormalizer inside the model: uint8 -> (x / 255 - mean) / std; the mean colour maps to about 0.
    norm = InputNormalizer(ms.IMAGENET_MEAN, ms.IMAGENET_STD)
    fill = torch.tensor(letterbox_fill(ms.IMAGENET_MEAN), dtype=torch.uint8).view(1, 3, 1, 1)
    assert norm(fill).abs().max() < 0.5 / 255 / min(ms.IMAGENET_STD)
    # (0, 1) scaling alone (normalization "unit") keeps every input positive.
    unit = InputNormalizer((0, 0, 0), (1, 1, 1))
    assert (unit(torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)) >= 0).all()


def test_mean_subtraction_tool_runs(tmp_path, capsys):
    import cv2

    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    path = str(tmp_path / "x.png")
    cv2.imwrite(path, image)
    rows = ms.main(["--image", path, "--samples", "300", "--max-steps", "2000"])
    assert [r["inputs"] for r in rows] == list(ms.PREPROCESSINGS)
    assert "one-sign grads" in capsys.readouterr().out
