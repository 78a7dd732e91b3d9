"""models/backbone.py: what timm declares (channels, strides, layout, mean/std) and local weight loading."""

from __future__ import annotations

import logging

import pytest
import timm
import torch
import torchvision

from models.backbone import Backbone


@pytest.fixture(scope="module")
def resnet18() -> Backbone:
    return Backbone("resnet18", out_indices=(1, 2, 3, 4)).eval()


@pytest.fixture(scope="module")
def torchvision_resnet18_state() -> dict:
    torch.manual_seed(123)
    return torchvision.models.resnet18(weights=None).state_dict()


def test_resnet18_channels_strides_and_shapes(resnet18):
    assert resnet18.channels == [64, 128, 256, 512]
    assert resnet18.strides == [4, 8, 16, 32]
    assert not resnet18.channels_last_output
    with torch.no_grad():
        feats = resnet18(torch.randn(2, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(2, 64, 16, 24), (2, 128, 8, 12), (2, 256, 4, 6), (2, 512, 2, 3)]


def test_missing_out_index_lists_available_levels():
    with pytest.raises(ValueError, match=r"out_indices \(1, 2, 3, 4, 5\).*0: stride 2, 64 ch.*4: stride 32, 512 ch"):
        Backbone("resnet18", out_indices=(1, 2, 3, 4, 5))


def test_out_indices_must_start_at_required_stride():
    with pytest.raises(ValueError, match="finest stride of 8, but the head needs stride 4"):
        Backbone("resnet18", out_indices=(2, 3, 4), required_stride=4)
    # Without the requirement the same levels are fine (e.g. for a detection neck).
    assert Backbone("resnet18", out_indices=(2, 3, 4), required_stride=None).strides == [8, 16, 32]
    with pytest.raises(ValueError, match="strictly increasing"):
        Backbone("resnet18", out_indices=(2, 1))


def test_nhwc_model_comes_out_nchw():
    # mambaout_femto is timm's cheapest NHWC features_only model (swin is 5x larger); a non-square input
    # catches a permute that swaps H and W.
    bb = Backbone("mambaout_femto", out_indices=(0, 1, 2, 3)).eval()
    assert bb.channels_last_output
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = bb(x)
        raw = bb.body(x)                     # timm's own NHWC output
    assert [tuple(f.shape) for f in feats] == [(1, c, 64 // s, 96 // s) for c, s in zip(bb.channels, bb.strides)]
    assert [tuple(r.shape) for r in raw] == [(1, 64 // s, 96 // s, c) for c, s in zip(bb.channels, bb.strides)]
    for f, r in zip(feats, raw):
        torch.testing.assert_close(f, r.permute(0, 3, 1, 2))


def test_mean_std_come_from_pretrained_cfg():
    # tf_mobilenetv3 was trained with inception normalisation (0.5, 0.5): not the ImageNet default.
    bb = Backbone("tf_mobilenetv3_small_minimal_100")
    cfg = timm.get_pretrained_cfg("tf_mobilenetv3_small_minimal_100").to_dict()
    assert bb.mean == tuple(cfg["mean"]) == (0.5, 0.5, 0.5)
    assert bb.std == tuple(cfg["std"]) == (0.5, 0.5, 0.5)
    assert bb.strides == [4, 8, 16, 32]


def test_unknown_model_name_raises_with_hint():
    with pytest.raises(ValueError, match=r"unknown timm model 'resnet_18'.*timm\.list_models\('\*resnet\*'\)"):
        Backbone("resnet_18")


# ---------------------------------------------------------------------------------------------- weights
def _assert_loaded(bb: Backbone, state: dict):
    own = bb.body.state_dict()
    for k, v in own.items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0, msg=lambda m, k=k: f"{k}: {m}")


def test_load_torchvision_state_dict(tmp_path, torchvision_resnet18_state, caplog):
    path = tmp_path / "resnet18_tv.pth"
    torch.save(torchvision_resnet18_state, path)
    bb = Backbone("resnet18")
    before = bb.body.conv1.weight.clone()
    with caplog.at_level(logging.INFO, logger="models.backbone"):
        missing, unexpected = bb.load_weights(str(path))
    assert missing == []
    assert sorted(unexpected) == ["fc.bias", "fc.weight"]
    assert "fc.weight" in caplog.text
    assert not torch.equal(before, bb.body.conv1.weight)
    _assert_loaded(bb, torchvision_resnet18_state)


def test_load_via_constructor_matches_torchvision_trunk(tmp_path, torchvision_resnet18_state):
    path = tmp_path / "w.pth"
    torch.save(torchvision_resnet18_state, path)
    bb = Backbone("resnet18", pretrained_path=str(path)).eval()
    _assert_loaded(bb, torchvision_resnet18_state)
    # Same features as torchvision's own resnet18 trunk with those weights.
    tv = torchvision.models.resnet18(weights=None)
    tv.load_state_dict(torchvision_resnet18_state)
    tv.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        y = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        ref = []
        for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4):
            y = layer(y)
            ref.append(y)
        ours = bb(x)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("wrap", ["module_prefix", "state_dict_key", "model_key_backbone_prefix"])
def test_load_wrapped_state_dicts(tmp_path, torchvision_resnet18_state, wrap):
    sd = torchvision_resnet18_state
    if wrap == "module_prefix":
        obj = {f"module.{k}": v for k, v in sd.items()}
    elif wrap == "state_dict_key":
        obj = {"state_dict": dict(sd), "epoch": 3}
    else:
        obj = {"model": {f"backbone.{k}": v for k, v in sd.items()}}
    path = tmp_path / f"{wrap}.pth"
    torch.save(obj, path)
    bb = Backbone("resnet18")
    missing, unexpected = bb.load_weights(str(path))
    assert missing == []
    assert sorted(unexpected) == ["fc.bias", "fc.weight"]
    _assert_loaded(bb, sd)


def test_weights_of_another_model_raise_naming_tensors(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    # resnet50's layer1.0.conv1 is a 1x1 bottleneck conv; resnet18's is 3x3.
    with pytest.raises(ValueError, match=r"does not fit backbone 'resnet18'.*layer1\.0\.conv1\.weight: "
                                         r"file \(64, 64, 1, 1\) vs model \(64, 64, 3, 3\)"):
        Backbone("resnet18").load_weights(str(path))


def test_shape_mismatch_raises_and_leaves_weights_alone(tmp_path, torchvision_resnet18_state):
    sd = dict(torchvision_resnet18_state)
    sd["layer2.0.conv1.weight"] = torch.zeros(128, 64, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    bb = Backbone("resnet18")
    before = {k: v.clone() for k, v in bb.body.state_dict().items()}
    with pytest.raises(ValueError, match=r"1 tensors: layer2\.0\.conv1\.weight: file \(128, 64, 1, 1\) "
                                         r"vs model \(128, 64, 3, 3\)"):
        bb.load_weights(str(path))
    for k, v in bb.body.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_unrelated_state_dict_raises(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder_layer.weight": torch.zeros(3), "head.bias": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="shares no tensor names"):
        Backbone("resnet18").load_weights(str(path))


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such.pth"):
        Backbone("resnet18", pretrained_path=str(tmp_path / "no_such.pth"))
