"""bench/bench_train.py end to end on a tiny config: every line is measured, and the loop is compared with the
bare step in the config's own precision and layout (``auto`` resolved for the CPU)."""

from __future__ import annotations

import pytest
import torch
from test_tools_e2e import TINY_MODEL, write_config

from bench import bench_train


@pytest.mark.parametrize("precision, channels_last, line", [
    ("fp32", False, "fp32 eager"), ("fp32", True, "channels_last"), ("bf16", False, "bf16 autocast"),
    ("bf16", True, "channels_last + bf16"), ("fp16", False, "fp32 eager")])
def test_the_loop_is_compared_with_the_step_of_its_own_settings(precision, channels_last, line):
    assert bench_train.step_variant(precision, channels_last) == line


@pytest.mark.slow
def test_bench_train_measures_every_line(tmp_path, tiny_synthetic, capsys, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    cfg = write_config(tmp_path, tiny_synthetic)
    results = bench_train.main(["--config", cfg, "--steps", "1", "--repeats", "1", "--no-compile",
                                *TINY_MODEL, "train.precision=auto", "train.channels_last=true"])
    for key in ("fp32 eager", "channels_last", "bf16 autocast", "channels_last + bf16", "loader 0 workers",
                "loader 1 workers", "loader 2 workers", "full loop"):
        assert results[key] > 0, key
    out = capsys.readouterr().out
    assert "train.precision=auto (fp32)" in out
    assert "bare model step with the config's settings (channels_last)" in out
