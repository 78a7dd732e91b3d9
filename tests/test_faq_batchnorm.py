"""FAQ: what does batch normalisation compute, in training and in evaluation?

Train mode, per channel c, over the N*H*W values of a batch x: (N, C, H, W):

    mu_c      = mean(x[:, c])
    var_c     = mean((x[:, c] - mu_c)^2)              (biased, divides by N*H*W)
    x_hat     = (x - mu_c) / sqrt(var_c + eps)
    y         = gamma_c * x_hat + beta_c

and the running estimates are updated with the *unbiased* variance (divides by N*H*W - 1):

    running_mean <- (1 - momentum) running_mean + momentum mu_c
    running_var  <- (1 - momentum) running_var  + momentum var_c * n / (n - 1)

Eval mode uses running_mean / running_var instead of the batch statistics.

The formulas are checked against ``nn.BatchNorm2d`` (the FAQ's arithmetic, run in ``make test``), and the
last test against what ``train.freeze_bn`` does to a layer in this repository (engine/train/freeze.py).
"""

import pytest
import torch
import torch.nn as nn
from torch.testing import assert_close

DT = torch.float64


def batch(seed=0, shape=(4, 3, 5, 6)):
    g = torch.Generator().manual_seed(seed)
    # channels with very different means and scales, so a missing normalisation would show
    scale = torch.tensor([0.5, 3.0, 10.0], dtype=DT)[None, :, None, None]
    shift = torch.tensor([-2.0, 5.0, 40.0], dtype=DT)[None, :, None, None]
    return torch.randn(*shape, generator=g, dtype=DT) * scale + shift


def hand_bn_train(x, gamma, beta, eps):
    """x: (N, C, H, W); gamma, beta: (C,). Returns y (N, C, H, W), batch mean (C,), biased var (C,)."""
    mean = x.mean(dim=(0, 2, 3))
    var = ((x - mean[None, :, None, None]) ** 2).mean(dim=(0, 2, 3))  # biased: / (N*H*W)
    x_hat = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + eps)
    return gamma[None, :, None, None] * x_hat + beta[None, :, None, None], mean, var


def make_bn(gamma, beta, eps=1e-5, momentum=0.1):
    bn = nn.BatchNorm2d(len(gamma), eps=eps, momentum=momentum).to(DT)
    with torch.no_grad():
        bn.weight.copy_(gamma)
        bn.bias.copy_(beta)
    return bn


def test_train_forward_matches_hand_formula():
    x = batch()
    gamma = torch.tensor([1.5, -0.7, 2.0], dtype=DT)
    beta = torch.tensor([0.3, -1.0, 4.0], dtype=DT)
    bn = make_bn(gamma, beta, eps=1e-3).train()
    y_hand, _, _ = hand_bn_train(x, gamma, beta, eps=1e-3)
    assert_close(bn(x), y_hand)


def test_gamma_scales_and_beta_shifts_the_output_distribution():
    x = batch(seed=1, shape=(8, 3, 16, 16))
    gamma = torch.tensor([2.0, -0.5, 7.0], dtype=DT)
    beta = torch.tensor([1.0, -3.0, 0.25], dtype=DT)
    y = make_bn(gamma, beta, eps=1e-8).train()(x)
    # per channel: mean == beta, (biased) std == |gamma| (eps makes it a hair smaller)
    assert_close(y.mean(dim=(0, 2, 3)), beta, atol=1e-10, rtol=0)
    assert_close(y.std(dim=(0, 2, 3), unbiased=False), gamma.abs(), rtol=1e-6, atol=0)


def test_running_var_uses_unbiased_variance_normalisation_uses_biased():
    x = batch(seed=2)
    n = x.shape[0] * x.shape[2] * x.shape[3]  # values per channel
    momentum = 0.1
    bn = make_bn(torch.ones(3, dtype=DT), torch.zeros(3, dtype=DT), momentum=momentum).train()
    bn.running_mean.fill_(1.0)  # non-default start so the (1 - momentum) term is tested
    bn.running_var.fill_(2.0)
    y = bn(x)

    _, mean, var_biased = hand_bn_train(x, torch.ones(3, dtype=DT), torch.zeros(3, dtype=DT), bn.eps)
    var_unbiased = var_biased * n / (n - 1)
    assert_close(bn.running_mean, (1 - momentum) * 1.0 + momentum * mean)
    assert_close(bn.running_var, (1 - momentum) * 2.0 + momentum * var_unbiased)
    # with n = 120 the two variances differ by ~0.8%: the test can tell them apart
    assert not torch.allclose(bn.running_var, (1 - momentum) * 2.0 + momentum * var_biased, rtol=1e-4)
    # ...while the output itself was normalised with the biased variance
    x_hat_unbiased = (x - mean[None, :, None, None]) / torch.sqrt(var_unbiased[None, :, None, None] + bn.eps)
    assert not torch.allclose(y, x_hat_unbiased, rtol=1e-4)
    assert_close(y.var(dim=(0, 2, 3), unbiased=False), var_biased / (var_biased + bn.eps))


def test_eval_mode_uses_running_statistics():
    gamma = torch.tensor([1.5, -0.7, 2.0], dtype=DT)
    beta = torch.tensor([0.3, -1.0, 4.0], dtype=DT)
    bn = make_bn(gamma, beta)
    bn.train()
    for seed in range(3):  # a few training batches to move the running statistics
        bn(batch(seed=seed))
    bn.eval()
    x = batch(seed=10)
    rm, rv = bn.running_mean.clone(), bn.running_var.clone()
    expected = (x - rm[None, :, None, None]) / torch.sqrt(rv[None, :, None, None] + bn.eps)
    expected = gamma[None, :, None, None] * expected + beta[None, :, None, None]
    y = bn(x)
    assert_close(y, expected)
    # eval mode neither uses nor updates the batch statistics
    assert_close(bn.running_mean, rm)
    assert_close(bn.running_var, rv)
    with pytest.raises(AssertionError):
        assert_close(y, hand_bn_train(x, gamma, beta, bn.eps)[0])


def test_frozen_batchnorm_uses_running_statistics_in_train_mode():
    """``train.freeze_bn`` (engine.train.freeze) keeps a layer on the eval-mode formula even while the model
    trains: the running statistics are used and stay as they were."""
    from engine.train.freeze import freeze_batchnorm

    gamma = torch.tensor([1.5, -0.7, 2.0], dtype=DT)
    beta = torch.tensor([0.3, -1.0, 4.0], dtype=DT)
    bn = make_bn(gamma, beta)
    for seed in range(3):
        bn(batch(seed=seed))
    model = nn.Sequential(bn)
    assert freeze_batchnorm(model, "all") == ["0"]
    model.train()
    x = batch(seed=10)
    rm, rv = bn.running_mean.clone(), bn.running_var.clone()
    x_hat = (x - rm[None, :, None, None]) / torch.sqrt(rv[None, :, None, None] + bn.eps)
    expected = gamma[None, :, None, None] * x_hat + beta[None, :, None, None]
    assert_close(model(x), expected)
    assert_close(bn.running_mean, rm)
    assert_close(bn.running_var, rv)
