"""train.precision=auto: bf16 only where the device runs it natively, fp32 elsewhere; explicit values unchanged."""

import pytest
import torch
from trainer_utils import make_trainer, toy_model

from engine.train import precision as prec


@pytest.mark.parametrize("explicit", ["fp32", "bf16", "fp16"])
def test_explicit_precision_is_kept(explicit):
    assert prec.resolve_precision(explicit, torch.device("cpu")) == explicit


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, "bf16"), (False, True, "bf16"),
                                                         (False, False, "fp32")])
def test_auto_on_the_cpu_follows_the_bf16_instructions(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert prec.resolve_precision("auto", torch.device("cpu")) == expected


def test_auto_is_fp32_when_torch_cannot_tell(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert prec.resolve_precision("auto", torch.device("cpu")) == "fp32"


@pytest.mark.parametrize("supported, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda_asks_the_device(monkeypatch, supported, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    assert prec.resolve_precision("auto", torch.device("cuda")) == expected


def test_unknown_precision_names_the_key_and_the_choices():
    with pytest.raises(ValueError, match=r"train\.precision='fp8' is not one of .*'auto'"):
        prec.resolve_precision("fp8", torch.device("cpu"))


def test_the_trainer_resolves_auto_once(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    trainer = make_trainer(toy_model(), tmp_path, precision="auto")
    assert trainer.precision == "fp32" and trainer.autocast_dtype is None
