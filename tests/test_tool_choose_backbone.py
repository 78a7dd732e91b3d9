"""tools/choose_backbone.py: params, FLOPs, saved-activation bytes and latency of backbones; the feature levels a
config's FPN receives (--config); the memory of the classification input policies (--input-policies)."""

import csv
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from datasets.input_policy import fit_to_input
from engine.config import load_config
from models.classifier import ImageClassifier
from tools import choose_backbone as cb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KPT_CONFIG = os.path.join(REPO, "configs", "hg-fpn_resnet18_synthetic-kpt_64x96.yaml")
DET_CONFIG = os.path.join(REPO, "configs", "centernet-fpn_resnet18_synthetic-det_128x128.yaml")
CLS_CONFIG = os.path.join(REPO, "configs", "cls_resnet10t_synthetic-shapes_32x32.yaml")

F32 = 4  # bytes per float32 element


def _measure(model, input_size, batch_size=1):
    return cb.measure_model(model, input_size, batch_size, "cpu", warmup=1, repeats=1)


def test_flops_of_a_conv_by_hand():
    # FLOPs = 2 * Cin * Cout * k * k * Hout * Wout per image (multiply-add = 2, bias not counted)
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    r = _measure(conv, (3, 16, 16), batch_size=2)
    assert r["flops"] == 2 * (2 * 3 * 8 * 3 * 3 * 16 * 16)
    assert r["params"] == 8 * 3 * 3 * 3 + 8

    strided = nn.Conv2d(4, 6, kernel_size=3, stride=2)  # Hout = Wout = (17 - 3) // 2 + 1 = 8
    assert _measure(strided, (4, 17, 17))["flops"] == 2 * 4 * 6 * 3 * 3 * 8 * 8


def test_flops_of_a_linear_by_hand():
    # batch 4, 10 -> 20 features: 2 * 4 * 10 * 20
    assert _measure(nn.Linear(10, 20), (10,), batch_size=4)["flops"] == 1600


def test_saved_activation_bytes_linear_relu():
    # Linear saves its input x (4 x 10) for dL/dW = G^T x; ReLU saves its output (4 x 20) for the mask
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU())
    r = _measure(model, (10,), batch_size=4)
    assert r["activation_bytes"] == r["saved_tensor_bytes"] == (4 * 10 + 4 * 20) * F32


def test_saved_activation_bytes_excludes_weights():
    # the second Linear also saves its weight (for dL/dh = G W), which is a parameter, not an activation:
    # only x (4 x 10) and h (4 x 20) count; counting W2 would add 5 * 20 * 4 bytes
    model = nn.Sequential(nn.Linear(10, 20), nn.Linear(20, 5))
    assert _measure(model, (10,), batch_size=4)["activation_bytes"] == (4 * 10 + 4 * 20) * F32


class Square(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(10, 20)

    def forward(self, x):
        y = self.lin(x)
        return y * y  # mul saves y twice (as self and as other): one storage


def test_saved_activation_bytes_counts_shared_storage_once():
    assert _measure(Square(), (10,), batch_size=4)["activation_bytes"] == (4 * 10 + 4 * 20) * F32


def test_measure_restores_mode_and_buffers_and_flops_scale_with_batch():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r1 = _measure(model, (3, 12, 12), batch_size=1)
    r3 = _measure(model, (3, 12, 12), batch_size=3)
    assert not model.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert r3["flops"] == 3 * r1["flops"] == 3 * 2 * 3 * 4 * 9 * 10 * 10
    assert r3["activation_bytes"] > r1["activation_bytes"]
    assert r1["latency_ms"] > 0


@pytest.mark.slow  # builds three ImageNet-size models end to end (~8 s on 2 cores)
def test_cli_writes_csv_and_png(tmp_path, capsys):
    models = ["resnet18", "test_resnet", "tv:alexnet"]
    out = tmp_path / "cb"
    result = cb.main(
        ["--models", *models, "--input-size", "3", "64", "64", "--output-dir", str(out)]
        + ["--warmup", "1", "--repeats", "1"]
    )
    assert result["fpn"] is None and result["input_policies"] == []
    rows = result["models"]
    assert [r["model"] for r in rows] == models
    for r in rows:
        assert r["params"] > 0 and r["flops"] > 0 and r["activation_bytes"] > 0 and r["latency_ms"] > 0
    by = {r["model"]: r for r in rows}
    assert by["tv:alexnet"]["params"] == 61_100_840  # torchvision AlexNet, 1000 classes
    assert by["resnet18"]["params"] == 11_689_512
    with open(out / "choose_backbone_b1.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["model"] for t in table] == models
    assert int(table[0]["flops"]) == by["resnet18"]["flops"]
    assert (out / "choose_backbone_b1.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "multiply-add = 2" in printed and "tv:alexnet" in printed


def test_googlenet_builds_without_aux_heads():
    model = cb.build_model("tv:googlenet")
    assert model.aux1 is None and model.aux2 is None


@pytest.mark.parametrize(
    "name,hint",
    [
        ("resnet18x", "timm.list_models"),
        ("alexnet", "tv:alexnet"),  # torchvision-only model without the prefix
        ("tv:not_a_model", "torchvision.models.list_models"),
    ],
)
def test_unknown_model_names_error(tmp_path, name, hint):
    with pytest.raises(ValueError, match="unknown model") as e:
        cb.main(["--models", "resnet18", name, "--output-dir", str(tmp_path)])
    assert hint in str(e.value) and name in str(e.value)
    assert not (tmp_path / "choose_backbone_b1.csv").exists()  # fails before measuring anything


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_activation_memory_is_at_least_the_saved_tensors():
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU())
    r = cb.measure_model(model, (256,), 64, "cuda", warmup=1, repeats=2)
    # saved: input 64x256 and ReLU output 64x512; the peak also holds the pre-ReLU output
    assert r["saved_tensor_bytes"] == (64 * 256 + 64 * 512) * F32
    assert r["activation_bytes"] >= 64 * 512 * F32 * 2


# ---------------------------------------------------------------------------------------------- --config
def test_fpn_inputs_of_the_keypoint_config(capsys):
    # resnet18, out_indices [1, 2, 3], input 64 x 96 (width x height), FPN 64 channels
    r = cb.main(["--config", KPT_CONFIG])["fpn"]
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
    r = cb.fpn_inputs(cfg)
    model = build_pose_model(3, backbone="resnet10t", out_indices=(1, 2, 3, 4), fpn_channels=cfg.model.fpn_channels)
    assert [lv["channels"] for lv in r["levels"]] == model.neck.in_channels == [64, 128, 256, 512]
    assert [lv["stride"] for lv in r["levels"]] == model.neck.in_strides == [4, 8, 16, 32]
    assert [(lv["height"], lv["width"]) for lv in r["levels"]] == [(32, 32), (16, 16), (8, 8), (4, 4)]


def test_fpn_inputs_errors():
    with pytest.raises(ValueError, match="has no FPN"):
        cb.main(["--config", CLS_CONFIG])
    # the finest level must have the head's stride 4: the Backbone's own check, with the levels to pick from
    with pytest.raises(ValueError, match="finest stride of 8") as e:
        cb.main(["--config", KPT_CONFIG, "model.out_indices=[2,3]"])
    assert "1: layer1, stride 4, 64 ch" in str(e.value)
    with pytest.raises(ValueError, match="stride x2 per level"):
        cb.main(["--config", KPT_CONFIG, "model.out_indices=[1,3]"])
    with pytest.raises(ValueError, match="need --config"):
        cb.main(["--models", "resnet18", "--batch-size", "1", "model.backbone=resnet50"])
    with pytest.raises(ValueError, match="--models"):
        cb.main([])


# ---------------------------------------------------------------------------------------------- --input-policies
def test_policy_geometry_by_hand():
    # 40 x 30 (4:3) into 32 x 32
    g = cb.policy_geometry(40, 30, (32, 32), "resize")
    assert g["kept"] == g["image_share"] == 1 and g["aspect"] == pytest.approx((32 / 30) / (32 / 40))
    # cover 32 x 32 (scale 32/30), no extra zoom: 43 x 32, the centre 32 x 32 of it is kept
    g = cb.policy_geometry(40, 30, (32, 32), "center_crop", crop_scale=1.0)
    assert g["kept"] == pytest.approx(32 * 32 / (43 * 32)) and g["image_share"] == 1
    # fit into 32 x 32 (scale 0.8): 32 x 24 of image, the rest padding
    g = cb.policy_geometry(40, 30, (32, 32), "letterbox")
    assert g["image_share"] == pytest.approx(32 * 24 / (32 * 32)) and g["kept"] == 1 and g["aspect"] == 1
    assert cb.policy_geometry(40, 30, (32, 32), "native") == {"image_share": 1.0, "kept": 1.0, "aspect": 1.0}


@pytest.mark.parametrize("w,h", [(40, 30), (24, 64), (33, 17)])
def test_policy_geometry_letterbox_matches_fit_to_input(w, h):
    # a white image letterboxed with a black fill: the white pixels are the image share
    white = np.full((h, w, 3), 255, np.uint8)
    out, _ = fit_to_input(white, (32, 32), "letterbox", fill=(0, 0, 0))
    share = (out[..., 0] == 255).mean()
    assert cb.policy_geometry(w, h, (32, 32), "letterbox")["image_share"] == pytest.approx(share)


def test_input_policies_shapes_and_memory(tmp_path):
    # batch 3 of sizes 40x30, 24x64, 40x30 (width x height) into a 32 x 32 input
    result = cb.main(["--models", "resnet10t", "--input-size", "3", "32", "32", "--batch-size", "3",
                      "--input-policies", "--image-sizes", "40x30", "24x64", "--output-dir", str(tmp_path)])
    assert result["models"] == []  # the policy table replaces the model table
    rows = {r["policy"]: r for r in result["input_policies"]}
    assert list(rows) == ["resize", "center_crop", "random_crop", "letterbox", "native"]
    for policy in ("resize", "center_crop", "random_crop", "letterbox"):
        assert rows[policy]["batch_shape"] == (3, 3, 32, 32)  # the input size, whatever the images
        assert rows[policy]["activation_bytes"] == rows["resize"]["activation_bytes"]
    # native: padded to the largest height (64) and the largest width (40) of the batch
    assert rows["native"]["batch_shape"] == (3, 3, 64, 40)
    assert rows["native"]["image_share"] == pytest.approx((2 * 40 * 30 + 24 * 64) / (3 * 64 * 40))
    # memory grows with the tensor's area (64 * 40 / 32^2 = 2.5; strided levels round up a little)
    ratio = rows["native"]["activation_bytes"] / rows["resize"]["activation_bytes"]
    assert 2.3 < ratio < 2.8
    # the resize batch is a plain forward: the same saved-tensor count as measure_model on that shape
    plain = cb.measure_model(ImageClassifier("resnet10t", 1000), (3, 32, 32), 3, warmup=1, repeats=0)
    assert rows["resize"]["activation_bytes"] == plain["activation_bytes"]
    assert rows["letterbox"]["kept"] == 1 and rows["letterbox"]["image_share"] < 1
    assert rows["center_crop"]["kept"] < 1 and rows["resize"]["aspect"] > 1
    with open(tmp_path / "input_policies_b3.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["policy"] for t in table] == list(rows) and table[-1]["batch_shape"] == "3x3x64x40"


def test_native_batch_of_input_sized_images_costs_what_resize_costs(tmp_path):
    rows = cb.measure_input_policies("resnet10t", (3, 32, 32), [(32, 32)], ["resize", "native"], batch_size=2)
    assert rows[0]["batch_shape"] == rows[1]["batch_shape"] == (2, 3, 32, 32)
    assert rows[0]["activation_bytes"] == rows[1]["activation_bytes"]


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--models", "resnet10t", "--input-policies", "stretch"], "not one of"),
        (["--models", "resnet10t", "--input-policies", "--image-sizes", "500by375"], "WIDTHxHEIGHT"),
        (["--models", "tv:alexnet", "--input-policies"], "torchvision"),
        (["--config", KPT_CONFIG, "--input-policies"], "name at least one"),
    ],
)
def test_input_policies_errors(tmp_path, argv, match):
    with pytest.raises(ValueError, match=match):
        cb.main(argv + ["--output-dir", str(tmp_path)])
