"""Optimisers, weight-decay groups and per-step schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from engine.train.optim import OPTIMIZERS, SCHEDULERS, build_optimizer, build_scheduler, lr_factor, parameter_groups


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))


def test_every_optimizer_builds_and_steps():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 6, 6)
    for name in OPTIMIZERS:
        net = small_net()
        net(x)   # materialise the lazy layer
        opt = build_optimizer(net, name, lr=0.01, weight_decay=1e-2, momentum=0.9, nesterov=name == "sgd")
        before = [p.detach().clone() for p in net.parameters()]
        net(x).pow(2).mean().backward()
        opt.step()
        assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters())), name
    assert {"sgd", "adam", "adamw", "rmsprop", "adagrad"} <= set(OPTIMIZERS)


def test_sgd_nesterov_and_adam_settings_reach_torch():
    net = nn.Linear(3, 2)
    sgd = build_optimizer(net, "sgd", 0.1, momentum=0.8, nesterov=True)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.8
    adam = build_optimizer(net, "adamw", 0.1, betas=(0.8, 0.9), eps=1e-6)
    assert adam.defaults["betas"] == (0.8, 0.9) and adam.defaults["eps"] == 1e-6
    rms = build_optimizer(net, "rmsprop", 0.1, alpha=0.9, momentum=0.5)
    assert rms.defaults["alpha"] == 0.9 and rms.defaults["momentum"] == 0.5
    with pytest.raises(ValueError, match="nesterov needs"):
        build_optimizer(net, "adam", 0.1, nesterov=True)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown optimizer 'lion'.*sgd, adam, adamw, rmsprop, adagrad"):
        build_optimizer(nn.Linear(2, 2), "lion", 0.1)
    with pytest.raises(ValueError, match=r"unknown scheduler 'poly'.*cosine, linear, step, multistep, constant"):
        build_scheduler(torch.optim.SGD(nn.Linear(2, 2).parameters(), 0.1), 10, 5, "poly")


def test_norm_layers_and_biases_get_no_weight_decay():
    net = small_net()
    net(torch.randn(1, 3, 6, 6))
    decay, no_decay = parameter_groups(net, 0.1)
    names = {id(p): n for n, p in net.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == ["0.weight", "4.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == ["0.bias", "1.bias", "1.weight", "4.bias"]
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    groups = parameter_groups(net, 0.1, decay_norm_and_bias=True)
    assert len(groups) == 1 and len(groups[0]["params"]) == 6


def test_frozen_parameters_are_left_out():
    net = nn.Linear(3, 2)
    net.weight.requires_grad_(False)
    groups = parameter_groups(net, 0.1)
    assert [len(g["params"]) for g in groups] == [0, 1]
    net.bias.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        parameter_groups(net, 0.1)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_schedules_per_step(scheduler):
    total, per_epoch = 100, 10
    f = [lr_factor(s, total, per_epoch, scheduler, warmup_steps=10, warmup_factor=0.1, min_lr_ratio=0.05,
                   step_epochs=[3, 6], gamma=0.5) for s in range(total + 1)]
    assert f[0] == pytest.approx(0.1 * (1.0 if scheduler not in ("cosine", "linear") else 1.0))
    assert all(a <= b + 1e-12 for a, b in zip(f[:10], f[1:11])), "warmup rises"
    if scheduler == "cosine":
        assert f[50] == pytest.approx(0.05 + 0.95 * 0.5) and f[100] == pytest.approx(0.05)
    elif scheduler == "linear":
        assert f[50] == pytest.approx(1 - 0.95 * 0.5) and f[100] == pytest.approx(0.05)
    elif scheduler == "step":
        assert f[29] == 1.0 and f[30] == 0.5 and f[99] == 0.5
    elif scheduler == "multistep":
        assert f[29] == 1.0 and f[30] == 0.5 and f[60] == 0.25
    else:
        assert set(f[10:]) == {1.0}


def test_scheduler_is_stepped_per_optimizer_step():
    net = nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    sched = build_scheduler(opt, 10, 5, "cosine", min_lr_ratio=0.0)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 1.0 and lrs[5] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
