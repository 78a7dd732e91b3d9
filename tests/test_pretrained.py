"""Pretrained backbones: ``model.pretrained`` goes through timm (here from a local cache, never the network);
offline without a cache it fails with a message naming the cache and ``model.pretrained_path``; weights files
in timm's formats (.safetensors, .bin, .pth) load with their missing/unexpected keys reported."""

from __future__ import annotations

import logging
import socket

import pytest
import timm
import torch
from safetensors.torch import save_file

from engine.tasks.keypoints import build_model
from engine.tasks.registry import load_config
from models.backbone import Backbone
from models.classifier import ImageClassifier
from models.errors import ConfigError


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network at all (a connect raises), Hugging Face in offline mode, empty caches under tmp_path."""
    from huggingface_hub import constants

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    old_hub = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch_hub"))
    yield cache
    torch.hub.set_dir(old_hub)


def _reference_state(seed: int = 7) -> dict:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in timm.create_model("resnet18", pretrained=False).state_dict().items()}


def _put_in_hf_cache(cache, repo_id: str, state: dict) -> None:
    """Lay a weights file out the way huggingface_hub caches a download (refs/main -> snapshots/<rev>/)."""
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    snap = folder / "snapshots" / revision
    snap.mkdir(parents=True)
    save_file(state, str(snap / "model.safetensors"))


def test_pretrained_true_loads_timms_weights_through_timm(offline):
    state = _reference_state()
    repo = timm.get_pretrained_cfg("resnet18").hf_hub_id
    _put_in_hf_cache(offline, repo, state)
    bb = Backbone("resnet18", pretrained=True)
    torch.testing.assert_close(bb.body.state_dict()["conv1.weight"], state["conv1.weight"])
    torch.testing.assert_close(bb.body.state_dict()["layer4.1.bn2.running_var"], state["layer4.1.bn2.running_var"])


def test_pretrained_offline_without_cache_names_the_fix(offline):
    with pytest.raises(ConfigError) as err:
        Backbone("resnet18", pretrained=True)
    msg = str(err.value)
    assert "model.pretrained_path" in msg and str(offline) in msg and "resnet18" in msg
    with pytest.raises(ConfigError, match="model.pretrained_path"):
        ImageClassifier("resnet18", num_classes=3, pretrained=True)


def test_pretrained_and_a_path_are_exclusive(tmp_path):
    with pytest.raises(ConfigError, match="keep one"):
        Backbone("resnet18", pretrained=True, pretrained_path=str(tmp_path / "w.pth"))


@pytest.mark.parametrize("suffix", [".safetensors", ".bin", ".pth"])
def test_pretrained_path_reads_timm_weight_files(tmp_path, suffix, caplog):
    state = _reference_state(seed=3)
    path = str(tmp_path / f"weights{suffix}")
    if suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)
    with caplog.at_level(logging.INFO, logger="models.backbone"):
        bb = Backbone("resnet18", pretrained_path=path)
    torch.testing.assert_close(bb.body.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    # features_only drops the classifier: its tensors are reported as unexpected
    assert any("unexpected keys" in r.message and "fc.weight" in r.message for r in caplog.records)


def test_missing_keys_are_reported(tmp_path, caplog):
    state = _reference_state(seed=4)
    del state["layer4.1.conv2.weight"]
    path = str(tmp_path / "partial.safetensors")
    save_file(state, path)
    with caplog.at_level(logging.INFO, logger="models.backbone"):
        missing, _ = Backbone("resnet18", pretrained_path=path).load_weights(path)
    assert missing == ["layer4.1.conv2.weight"]
    assert any("missing keys" in r.message and "layer4.1.conv2.weight" in r.message for r in caplog.records)


def test_config_key_reaches_the_keypoint_model(offline, tmp_path):
    _put_in_hf_cache(offline, timm.get_pretrained_cfg("resnet18").hf_hub_id, _reference_state(seed=5))
    path = tmp_path / "c.yaml"
    path.write_text("task: keypoints\nmodel: {backbone: resnet18, pretrained: true, num_stacks: 1}\n"
                    "data: {flip_index: [0, 1], input_size: [64, 64], train: {ann_file: a.json, image_root: .},\n"
                    "       val: {ann_file: a.json, image_root: .}}\n")
    cfg = load_config(str(path))
    model = build_model(cfg, num_keypoints=2)
    torch.testing.assert_close(model.backbone.body.state_dict()["conv1.weight"], _reference_state(5)["conv1.weight"])
    # inference rebuilds the model without fetching anything (its weights come from the checkpoint)
    assert build_model(cfg, num_keypoints=2, pretrained=False) is not None
