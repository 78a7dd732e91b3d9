"""Checkpoints: atomic writes, weights_only loading, mismatches explained by tensor name."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from engine import checkpoint as ckpt
from models.errors import CheckpointError


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
    with pytest.raises(CheckpointError, match="missing.pt"):
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


KILL_SCRIPT = r"""
import sys, time
import torch
from engine.checkpoint import save_checkpoint

path = sys.argv[1]
save_checkpoint({"model": {"w": torch.ones(1000)}, "epoch": 1}, path)
real_save = torch.save

class SlowFile:
    # Writes the real serialised bytes, then stalls half way so that the parent can kill the process.
    def __init__(self, f):
        self.f, self.written = f, 0
    def write(self, data):
        n = self.f.write(data)
        self.written += len(data)
        if self.written > 1 << 20:
            self.f.flush()
            print("writing", flush=True)
            time.sleep(120)
        return n
    def flush(self):
        self.f.flush()

torch.save = lambda obj, f, *a, **k: real_save(obj, SlowFile(f), *a, **k)
save_checkpoint({"model": {"w": torch.zeros(4_000_000)}, "epoch": 2}, path)
"""


def test_a_save_killed_midway_leaves_the_previous_checkpoint(tmp_path):
    """SIGKILL during the write of a new `last.pt`: the old one is still there and loads."""
    import signal
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = tmp_path / "last.pt"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(path)], cwd=repo, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        partial = [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]
        assert len(partial) == 1 and os.path.getsize(tmp_path / partial[0]) > 1 << 20
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    state = ckpt.load_checkpoint(str(path))
    assert state["epoch"] == 1 and torch.equal(state["model"]["w"], torch.ones(1000))
    removed = ckpt.remove_stale_temporaries(str(tmp_path))
    assert removed == partial and not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


def test_fine_tuning_from_the_ema_weights(tmp_path):
    """``train.init_weights_from=ema`` starts from a run's EMA weights, which a long run's best model often is;
    a file without them is refused in one line naming the setting."""
    model = nn.Linear(2, 2)
    trained = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    averaged = {k: torch.ones_like(v) for k, v in model.state_dict().items()}
    path = str(tmp_path / "run.pt")
    ckpt.save_checkpoint({"model": trained, "ema": {"model": averaged, "updates": 3}}, path)
    report = ckpt.load_weights_for_finetuning(model, path, "ema")
    assert report["loaded"] == ["bias", "weight"] and torch.equal(model.weight, torch.ones(2, 2))
    ckpt.load_weights_for_finetuning(model, path)              # the default: the trained weights
    assert torch.equal(model.weight, torch.zeros(2, 2))

    ckpt.save_checkpoint({"model": trained, "ema": None}, str(tmp_path / "no_ema.pt"))
    with pytest.raises(CheckpointError, match=r"no_ema\.pt carries no EMA weights .*init_weights_from=model"):
        ckpt.load_weights_for_finetuning(model, str(tmp_path / "no_ema.pt"), "ema")
    ckpt.save_checkpoint(trained, str(tmp_path / "plain.pt"))
    with pytest.raises(CheckpointError, match=r"plain\.pt is not a checkpoint of this repository, so it has no ema "
                                              r"weights \(train\.init_weights_from=ema\)"):
        ckpt.load_weights_for_finetuning(model, str(tmp_path / "plain.pt"), "ema")
