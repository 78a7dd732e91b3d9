"""Typed configs: unknown keys and wrong types are named; overrides; round trips through checkpoints."""

from __future__ import annotations

import glob
import os

import pytest

from engine.config.loading import config_to_dict, save_config
from engine.tasks.registry import config_from_dict, load_config
from models.errors import ConfigError
from tools import eval as eval_tool
from tools import train as train_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "configs", "hg-fpn_resnet18_synthetic-kpt_64x96.yaml")


def test_every_shipped_config_loads():
    paths = sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))
    assert paths
    for path in paths:
        cfg = load_config(path)
        assert cfg.task in ("keypoints", "classification", "detection")


def test_overrides_are_typed():
    cfg = load_config(DEMO, ["train.lr=0.05", "data.input_size=[32,48]", "eval.flip_test=false"])
    assert cfg.train.lr == 0.05 and cfg.data.input_size == [32, 48] and cfg.eval.flip_test is False


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(open(DEMO).read().replace("  sigma: 2.0", "  sigmaa: 2.0"))
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'data\.sigmaa'; did you mean 'data\.sigma'"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match=r"unknown key 'train\.lrr'; did you mean 'train\.lr'"):
        load_config(DEMO, ["train.lrr=1"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"train\.epochs: Value 'many'"):
        load_config(DEMO, ["train.epochs=many"])
    with pytest.raises(ConfigError, match=r"data\.augment\.flip_prob"):
        load_config(DEMO, ["data.augment.flip_prob=[1,2]"])


def test_malformed_override_and_missing_file():
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(DEMO, ["train.lr"])
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config("nope.yaml")


def test_missing_mandatory_value_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task: keypoints\ndata:\n  flip_index: [0]\n  train: {ann_file: a, image_root: b}\n")
    with pytest.raises(ConfigError, match=r"data\.val\.ann_file"):
        load_config(str(path))


def test_round_trip_dict_and_yaml(tmp_path):
    cfg = load_config(DEMO, ["train.lr=0.003"])
    again = config_from_dict(config_to_dict(cfg))
    assert again == cfg
    out = tmp_path / "resolved.yaml"
    save_config(cfg, str(out))
    assert load_config(str(out)) == cfg



@pytest.mark.parametrize("tool", [train_tool, eval_tool], ids=["train", "eval"])
def test_overrides_may_sit_between_options(tool, tmp_path):
    """``--config c.yaml train.lr=0.1 --run-dir d data.sigma=1`` reaches the config (plain parse_args stops at
    the first option after a positional and refuses the second override as an unrecognized argument, exit 2)."""
    missing = str(tmp_path / "missing.yaml")
    argv = ["--config", missing, "train.lr=0.1", "--run-dir" if tool is train_tool else "--checkpoint",
            str(tmp_path / "x"), "data.sigma=1.0"]
    with pytest.raises(Exception, match="missing.yaml") as raised:
        tool.main(argv)
    assert not isinstance(raised.value, SystemExit)


@pytest.mark.parametrize("value", ["nan", "40.0"])
def test_flip_test_shift_out_of_range_is_named(value):
    with pytest.raises(ConfigError, match="eval.flip_test_shift"):
        load_config(DEMO, [f"eval.flip_test_shift={value}"])
