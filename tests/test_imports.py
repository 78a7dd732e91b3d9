"""The generic package names resolve to this repository, not to an installed namesake."""

from __future__ import annotations

import os

import datasets
import models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_models_and_datasets_are_ours():
    for pkg in (models, datasets):
        assert os.path.dirname(os.path.abspath(pkg.__file__)) == os.path.join(REPO, pkg.__name__)


def test_leaf_modules_import_nothing_of_ours():
    for leaf in ("models/bbox.py", "models/heatmap_codec.py"):
        source = open(os.path.join(REPO, leaf)).read()
        for ours in ("from models", "from datasets", "from engine", "import models", "import engine"):
            assert ours not in source, f"{leaf} imports {ours}"


def test_models_never_import_engine_or_tools():
    for root, _, files in os.walk(os.path.join(REPO, "models")):
        for f in files:
            if f.endswith(".py"):
                src = open(os.path.join(root, f)).read()
                assert "from engine" not in src and "from tools" not in src, f
