"""models/pose.py and models/normalize.py: composition, input normalisation, stride check, it can learn."""

from __future__ import annotations

import pytest
import torch

from models.backbone import Backbone
from models.errors import ConfigError
from models.fpn import FPN
from models.heatmap_codec import HeatmapCodec
from models.hourglass import HourglassHead
from models.losses import keypoint_mse_loss, stacked_heatmap_loss
from models.normalize import InputNormalizer
from models.pose import TopDownPoseModel, build_pose_model, make_normalizer

TINY = dict(backbone="resnet18", fpn_channels=16, num_stacks=2, depth=2, head_channels=16)


@pytest.fixture(scope="module")
def tiny_model() -> TopDownPoseModel:
    torch.manual_seed(0)
    return build_pose_model(num_keypoints=3, **TINY).eval()


def test_uint8_and_float_inputs_give_the_same_heatmaps(tiny_model):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 64, 48), generator=g, dtype=torch.uint8)
    with torch.no_grad():
        out_u8 = tiny_model(images)
        out_f = tiny_model(images.float())
    assert len(out_u8) == 2
    assert all(o.shape == (2, 3, 16, 12) and o.dtype == torch.float32 for o in out_u8)
    for a, b in zip(out_u8, out_f):
        torch.testing.assert_close(a, b)


def test_normalizer_hand_values():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    norm = InputNormalizer(mean, std)
    x = torch.tensor([255 * m for m in mean]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    torch.testing.assert_close(norm(x), torch.zeros(1, 3, 2, 2), atol=1e-6, rtol=0)
    white = norm(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8))
    torch.testing.assert_close(white.flatten(), torch.tensor([(1 - m) / s for m, s in zip(mean, std)]))
    assert white.dtype == torch.float32
    with pytest.raises(ValueError, match="std > 0"):
        InputNormalizer((0.5, 0.5, 0.5), (0.5, 0.0, 0.5))


def test_unit_and_backbone_normalization_modes():
    bb = Backbone("tf_mobilenetv3_small_minimal_100")
    unit = make_normalizer("unit", bb)
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    torch.testing.assert_close(unit(x).flatten(), torch.tensor([0.0, 0.2, 1.0]))
    # "backbone" uses this backbone's (0.5, 0.5) statistics: 0 -> -1, 255 -> 1.
    torch.testing.assert_close(make_normalizer("backbone", bb)(x).flatten(), torch.tensor([-1.0, -0.6, 1.0]))
    with pytest.raises(ValueError, match="model.normalization='imagenet'"):
        make_normalizer("imagenet", bb)


def test_normalization_buffers_are_in_the_state_dict(tiny_model):
    state = tiny_model.state_dict()
    assert {"normalizer.scale", "normalizer.shift"} <= set(state)
    # They hold the backbone's statistics: shift = -mean / std.
    mean, std = tiny_model.backbone.mean, tiny_model.backbone.std
    torch.testing.assert_close(state["normalizer.shift"].flatten(), torch.tensor([-m / s for m, s in zip(mean, std)]))
    # ...and are restored by load_state_dict (a checkpoint carries its statistics).
    other = build_pose_model(num_keypoints=3, normalization="unit", **TINY)
    other.load_state_dict(state)
    torch.testing.assert_close(other.normalizer.shift, tiny_model.normalizer.shift)


def test_finest_level_must_be_stride_4():
    with pytest.raises(ValueError, match="finest stride of 8, but the head needs stride 4"):
        build_pose_model(num_keypoints=3, out_indices=(2, 3, 4), **TINY)
    # The model itself also refuses a stride-8 neck, whoever built the parts.
    bb = Backbone("resnet18", out_indices=(2, 3, 4), required_stride=None)
    neck = FPN(bb.channels, bb.strides, out_channels=16, output_levels=[0])
    head = HourglassHead(16, 3, num_stacks=1, depth=2, channels=16)
    with pytest.raises(ValueError, match=r"must have stride 4; got strides \[8\]"):
        TopDownPoseModel(bb, neck, head, InputNormalizer(bb.mean, bb.std))


def test_a_few_adam_steps_lower_the_loss():
    torch.manual_seed(0)
    model = build_pose_model(num_keypoints=3, **TINY).train()
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 64, 64), generator=g, dtype=torch.uint8)
    xy = torch.rand(2, 3, 2, generator=g) * 48 + 8
    keypoints = torch.cat([xy, torch.full((2, 3, 1), 2.0)], dim=-1)
    target, weights = HeatmapCodec((64, 64), (16, 16), sigma=2.0).encode(keypoints)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def final_loss():
        with torch.no_grad():
            return keypoint_mse_loss(model(images)[-1], target, weights).item()

    before = final_loss()
    for _ in range(10):
        total, _ = stacked_heatmap_loss(model(images), target, weights)
        opt.zero_grad()
        total.backward()
        opt.step()
    after = final_loss()
    # Zero heatmaps score mean(target^2) ~ 0.05; ten steps roughly halve it.
    assert after < 0.75 * before, (before, after)


def test_stride_2_heatmaps_from_one_more_fpn_level():
    model = build_pose_model(num_keypoints=3, **{**TINY, "out_indices": (0, 1, 2, 3)}, heatmap_stride=2)
    assert model.stride == 2 and model.neck.strides[0] == 2
    outs = model(torch.zeros(1, 3, 64, 48, dtype=torch.uint8))
    assert [tuple(o.shape) for o in outs] == [(1, 3, 32, 24)] * len(outs)
    with pytest.raises(ValueError, match="finest stride of 4, but the head needs stride 2"):
        build_pose_model(num_keypoints=3, **TINY, heatmap_stride=2)
    with pytest.raises(ValueError, match="heatmap_stride=8"):
        build_pose_model(num_keypoints=3, **TINY, heatmap_stride=8)


def test_drop_path_rate_reaches_the_backbone_and_only_acts_in_training():
    from timm.layers import DropPath

    torch.manual_seed(0)
    plain = build_pose_model(num_keypoints=3, **TINY)
    assert not any(isinstance(m, DropPath) for m in plain.modules())
    model = build_pose_model(num_keypoints=3, **TINY, drop_path_rate=0.5)
    rates = [m.drop_prob for m in model.backbone.modules() if isinstance(m, DropPath)]
    # resnet18 has 8 residual blocks; timm raises the rate linearly with depth, 0.5 * i / 7 for block i, so the
    # first block (rate 0) has no DropPath and the last drops with probability 0.5.
    assert rates == pytest.approx([0.5 * i / 7 for i in range(1, 8)])
    # timm zero-initialises each residual branch's last norm, so a fresh branch adds nothing and dropping it
    # changes nothing: give the branches some output first.
    for m in model.backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(m.weight)
    x = torch.rand(2, 3, 64, 64)
    model.eval()
    assert torch.equal(model(x)[-1], model(x)[-1])          # eval: deterministic
    model.train()
    torch.manual_seed(1)
    first = model(x)[-1]
    assert not torch.equal(first, model(x)[-1])             # training: branches dropped at random


def test_a_backbone_without_drop_path_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"'vgg11' does not take \['drop_path_rate'\].*model.drop_path_rate: 0"):
        Backbone("vgg11", required_stride=None, drop_path_rate=0.1)
