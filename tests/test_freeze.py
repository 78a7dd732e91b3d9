"""Freezing by name pattern and by backbone stage; BatchNorm statistics; the trainable summary."""

from __future__ import annotations

import pytest
import torch

from engine.train.freeze import (
    freeze_batchnorm,
    freeze_parameters,
    freeze_stages,
    stage_parameter_names,
    trainable_summary,
)
from engine.train.optim import build_optimizer
from models.classifier import ImageClassifier
from models.pose import build_pose_model


@pytest.fixture(scope="module")
def classifier_state():
    return ImageClassifier("resnet18", 5).state_dict()


def fresh(state) -> ImageClassifier:
    model = ImageClassifier("resnet18", 5)
    model.load_state_dict(state)
    return model


def test_patterns_freeze_what_they_match_and_the_optimizer_skips_it(classifier_state):
    model = fresh(classifier_state)
    frozen = freeze_parameters(model, ["net.layer1.*", "net.conv1.weight"])
    assert frozen[0] == "net.conv1.weight" and all(n.startswith(("net.layer1.", "net.conv1")) for n in frozen)
    assert not model.net.layer1[0].conv1.weight.requires_grad and model.net.layer2[0].conv1.weight.requires_grad
    opt = build_optimizer(model, "sgd", 0.1)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model.net.layer1[0].conv1.weight) not in in_opt and id(model.net.fc.weight) in in_opt


def test_a_pattern_that_matches_nothing_is_an_error(classifier_state):
    with pytest.raises(ValueError, match=r"freeze pattern 'backbone\.\*' matches no parameter.*'net\.conv1\.weight'"):
        freeze_parameters(fresh(classifier_state), ["backbone.*"])


def test_stages_follow_timm_feature_levels(classifier_state):
    model = fresh(classifier_state)
    prefix, stages = stage_parameter_names(model)
    assert prefix == "net" and len(stages) == 5
    assert stages[0] == ["net.conv1.weight", "net.bn1.weight", "net.bn1.bias"]     # the stem
    assert all(n.startswith("net.layer1.") for n in stages[1])
    frozen = freeze_stages(model, 2)
    assert frozen == stages[0] + stages[1]
    assert model.net.layer2[0].conv1.weight.requires_grad and model.net.fc.weight.requires_grad
    with pytest.raises(ValueError, match="has only 5 feature levels"):
        freeze_stages(fresh(classifier_state), 6)


def test_stages_of_a_features_only_trunk_inside_the_pose_model():
    model = build_pose_model(3, out_indices=[1, 2, 3], fpn_channels=8, head_channels=8, depth=1, num_stacks=1)
    names = freeze_stages(model, 2)
    assert names[0] == "backbone.body.conv1.weight" and names[-1].startswith("backbone.body.layer1.")
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith(("neck.", "head.")))


def test_frozen_batchnorm_keeps_its_statistics_through_train_mode(classifier_state):
    model = fresh(classifier_state)
    freeze_stages(model, 2)
    layers = freeze_batchnorm(model, "frozen")
    assert "net.bn1" in layers and "net.layer1.0.bn1" in layers and "net.layer2.0.bn1" not in layers
    before = model.net.bn1.running_mean.clone()
    trainable_before = model.net.layer2[0].bn1.running_mean.clone()
    model.train()
    model(torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8))
    torch.testing.assert_close(model.net.bn1.running_mean, before, rtol=0, atol=0)
    assert not torch.equal(model.net.layer2[0].bn1.running_mean, trainable_before)

    everything = fresh(classifier_state)
    assert len(freeze_batchnorm(everything, "all")) == 20
    everything.train()
    mean = everything.net.layer4[1].bn2.running_mean.clone()
    everything(torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8))
    torch.testing.assert_close(everything.net.layer4[1].bn2.running_mean, mean, rtol=0, atol=0)
    assert everything.net.layer4[1].bn2.weight.requires_grad, "mode 'all' freezes statistics, not parameters"
    with pytest.raises(ValueError, match="freeze_bn='some'"):
        freeze_batchnorm(everything, "some")


def test_summary_lists_counts_by_module(classifier_state):
    model = fresh(classifier_state)
    freeze_stages(model, 1)
    text = trainable_summary(model)
    first = text.splitlines()[0]
    total = sum(p.numel() for p in model.parameters())
    assert first == f"trainable parameters: {total - 9408 - 128:,} of {total:,} ({100 * (total - 9536) / total:.1f}%)"
    lines = {line.split()[0]: line for line in text.splitlines()[1:]}
    assert lines["net.conv1"].endswith("frozen") and lines["net.fc"].endswith("trainable")
