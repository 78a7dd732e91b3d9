"""tools/faq/choose_backbone.py: params, FLOPs, saved-activation bytes and latency of backbones."""

import csv

import pytest
import torch
import torch.nn as nn

from tools.faq import choose_backbone as cb

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
    rows = cb.main(
        ["--models", *models, "--input-size", "3", "64", "64", "--output-dir", str(out)]
        + ["--warmup", "1", "--repeats", "1"]
    )
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
