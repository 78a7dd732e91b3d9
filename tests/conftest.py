"""Shared fixtures: RNG hygiene, devices, a tiny synthetic data set, and the real data in ../shared/data."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_configure(config):
    # The tests run tiny models. With two OpenMP threads on a busy 2-core machine every small op waits at a
    # barrier for a descheduled thread (10 Adam steps of a tiny pose model took 50 s instead of 2.5 s); one
    # intra-op thread is faster here and makes timings irrelevant to the results.
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_rng_state():
    """Tests may seed or draw from the global RNGs; restore them so tests stay independent."""
    py, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    yield
    random.setstate(py)
    np.random.set_state(np_state)
    torch.set_rng_state(torch_state)


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(scope="session")
def shared_data() -> str:
    """Path of ../shared/data; tests that need it skip when it is absent (a user's fresh clone)."""
    if not os.path.isdir(SHARED_DATA):
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory) -> dict:
    """A small synthetic keypoint set written once per session: {'root', 'train', 'val', 'spec'}."""
    from datasets.synthetic import SyntheticKeypointSpec, ensure_synthetic_dataset

    root = str(tmp_path_factory.mktemp("synthetic"))
    spec = SyntheticKeypointSpec(num_train_images=24, num_val_images=8, seed=3)
    paths = ensure_synthetic_dataset(root, spec)
    return {"root": root, "train": paths["train"], "val": paths["val"], "spec": spec,
            "images": os.path.join(root, "images")}


@pytest.fixture(scope="session")
def tiny_synthetic_detection(tmp_path_factory) -> dict:
    """A small synthetic detection set written once per session: {'root', 'train', 'val', 'spec', 'images'}."""
    from datasets.synthetic_detection import SyntheticDetectionSpec, ensure_synthetic_detection_dataset

    root = str(tmp_path_factory.mktemp("synthetic_detection"))
    spec = SyntheticDetectionSpec(num_train_images=24, num_val_images=8, seed=5)
    paths = ensure_synthetic_detection_dataset(root, spec)
    return {"root": root, "train": paths["train"], "val": paths["val"], "spec": spec,
            "images": os.path.join(root, "images")}
