"""Checkpoints: atomic writes, weights_only loading, mismatches explained by tensor name."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from engine import checkpoint as ckpt


def test_save_load_round_trip(tmp_path):
    model = nn.Linear(3, 2)
    path = str(tmp_path / "a.pt")
    ckpt.save_checkpoint({"model": model.state_dict(), "config": {"x": 1}, "rng": torch.get_rng_state()}, path)
    state = ckpt.load_checkpoint(path)
    assert state["format_version"] == ckpt.FORMAT_VERSION and state["config"] == {"x": 1}
    other = nn.Linear(3, 2)
    ckpt.load_model_state(other, state["model"])
    torch.testing.assert_close(other.weight, model.weight)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_interrupted_save_keeps_previous_file(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pt")
    ckpt.save_checkpoint({"model": {"w": torch.ones(3)}}, path)
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")      # a partial write, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint({"model": {"w": torch.zeros(3)}}, path)
    monkeypatch.setattr(torch, "save", real_save)
    torch.testing.assert_close(ckpt.load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_pickled_objects_are_refused(tmp_path):
    path = str(tmp_path / "evil.pt")
    torch.save({"model": nn.Linear(2, 2)}, path)        # a whole module: needs unpickling code
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        ckpt.load_checkpoint(path)


def test_truncated_and_foreign_files(tmp_path):
    path = str(tmp_path / "t.pt")
    ckpt.save_checkpoint({"model": {"w": torch.ones(100)}}, path)
    with open(path, "r+b") as f:
        f.truncate(50)
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        ckpt.load_checkpoint(path)
    torch.save({"weights": torch.ones(2)}, path)
    with pytest.raises(ValueError, match="no 'model'"):
        ckpt.load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        ckpt.load_checkpoint(str(tmp_path / "missing.pt"))


def test_mismatch_names_the_tensors():
    small, big = nn.Sequential(nn.Linear(4, 17)), nn.Sequential(nn.Linear(4, 12))
    with pytest.raises(ValueError, match=r"0\.weight: checkpoint \(17, 4\) vs model \(12, 4\)"):
        ckpt.load_model_state(big, small.state_dict())
    extra = {**small.state_dict(), "head.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="not in the model: head.weight"):
        ckpt.load_model_state(small, extra)
    missing, unexpected = ckpt.load_model_state(small, extra, strict=False)
    assert unexpected == ["head.weight"] and missing == []
