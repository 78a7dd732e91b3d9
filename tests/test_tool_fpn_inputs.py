"""tools/fpn_inputs.py: the feature levels a keypoint or detection config's backbone hands to its FPN."""

import os

import pytest

from engine.tasks.registry import load_config
from tools import fpn_inputs as fi

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KPT_CONFIG = os.path.join(REPO, "configs", "hg-fpn_resnet18_synthetic-kpt_64x96.yaml")
DET_CONFIG = os.path.join(REPO, "configs", "centernet-fpn_resnet18_synthetic-det_128x128.yaml")
CLS_CONFIG = os.path.join(REPO, "configs", "cls_resnet10t_synthetic-shapes_32x32.yaml")


def test_fpn_inputs_of_the_keypoint_config(capsys):
    # resnet18, out_indices [1, 2, 3], input 64 x 96 (width x height), FPN 64 channels
    r = fi.main(["--config", KPT_CONFIG])
    assert r["backbone"] == "resnet18" and r["out_indices"] == [1, 2, 3] and r["input_size"] == (64, 96)
    assert [lv["stride"] for lv in r["levels"]] == [4, 8, 16]
    assert [lv["channels"] for lv in r["levels"]] == [64, 128, 256]
    assert [(lv["height"], lv["width"]) for lv in r["levels"]] == [(24, 16), (12, 8), (6, 4)]
    assert [lv["module"] for lv in r["levels"]] == ["layer1", "layer2", "layer3"]
    assert r["fpn_channels"] == 64
    # every level of the trunk, for choosing model.out_indices: the stem at stride 2 up to layer4 at 32
    assert [(a["stride"], a["channels"]) for a in r["available"]] == [(2, 64), (4, 64), (8, 128), (16, 256),
                                                                      (32, 512)]
    # the trunk only (no fc): resnet18's 11.69 M minus layer4 and the classifier
    assert r["params"] == 2_782_784
    printed = capsys.readouterr().out
    assert "24x16" in printed and "64 x 24x16 at stride 4" in printed


def test_fpn_inputs_match_the_model_the_task_builds():
    # the same levels the keypoint model's FPN is built from (engine -> models.pose.build_pose_model)
    from models.pose import build_pose_model

    cfg = load_config(DET_CONFIG, ["model.backbone=resnet10t", "model.out_indices=[1,2,3,4]"])
    r = fi.fpn_inputs(cfg)
    model = build_pose_model(3, backbone="resnet10t", out_indices=(1, 2, 3, 4), fpn_channels=cfg.model.fpn_channels)
    assert [lv["channels"] for lv in r["levels"]] == model.neck.in_channels == [64, 128, 256, 512]
    assert [lv["stride"] for lv in r["levels"]] == model.neck.in_strides == [4, 8, 16, 32]
    assert [(lv["height"], lv["width"]) for lv in r["levels"]] == [(32, 32), (16, 16), (8, 8), (4, 4)]


def test_fpn_inputs_errors():
    with pytest.raises(ValueError, match="has no FPN"):
        fi.main(["--config", CLS_CONFIG])
    # the finest level must have the head's stride 4: the Backbone's own check, with the levels to pick from
    with pytest.raises(ValueError, match="finest stride of 8") as e:
        fi.main(["--config", KPT_CONFIG, "model.out_indices=[2,3]"])
    assert "1: layer1, stride 4, 64 ch" in str(e.value)
    with pytest.raises(ValueError, match="stride x2 per level"):
        fi.main(["--config", KPT_CONFIG, "model.out_indices=[1,3]"])
    with pytest.raises(SystemExit):                 # argparse: --config is required
        fi.main([])
