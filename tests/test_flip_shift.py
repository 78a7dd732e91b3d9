"""bench/flip_shift.py: twice the learnt left-right offset, read off a model's direct and mirrored passes."""

from __future__ import annotations

import importlib.util
import os
from types import SimpleNamespace

import pytest
import torch

from models.heatmap_codec import HeatmapCodec
from tests.inference_utils import OffsetModel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench():
    spec = importlib.util.spec_from_file_location("flip_shift", os.path.join(REPO, "bench", "flip_shift.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("b_cells", [0.0, 0.75, -0.5])
def test_mirror_offset_is_twice_the_learnt_offset(b_cells):
    codec = HeatmapCodec((64, 64), (16, 16), sigma=1.5)
    task = SimpleNamespace(codec=codec, meta=SimpleNamespace(flip_index=[0]))
    images = torch.zeros(4, 3, 64, 64, dtype=torch.uint8)
    for i, col in enumerate((20, 25, 31, 40)):
        images[i, ..., col] = 255
    loader = [{"image": images[:2]}, {"image": images[2:]}]
    mean, std, n = _bench().mirror_offset(task, OffsetModel(b_cells), loader)
    assert n == 4
    assert mean == pytest.approx(2 * b_cells * 4, abs=0.05)       # 2 b, in input pixels (stride 4)
    assert std < 0.05
