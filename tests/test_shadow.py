"""Installing the repository shadows no namesake: only ``hgfpn_keypoints`` is installed (docs/install.md).

Each test runs a scratch virtual environment that holds a stand-in ``datasets`` package (as Hugging Face's would
be) and this repository installed the README's way, from a folder outside the checkout. The scratch environment
reuses this interpreter's packages (torch, ...) through a ``.pth`` line instead of installing them; ``.pth`` files
inside that appended folder are not processed, so this venv's own editable install does not leak in. Nothing is
downloaded (``PIP_NO_INDEX``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from tests.inference_utils import tiny_keypoint_checkpoint

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "cls_resnet10t_synthetic-shapes_32x32.yaml")
TINY = ["data.synthetic.num_train_images=24", "data.synthetic.num_val_images=16", "data.synthetic.min_image_size=28",
        "data.synthetic.max_image_size=40", "data.input_size=[32,32]", "train.batch_size=8", "data.val_batch_size=16",
        "train.num_workers=0", "train.num_threads=1", "train.warmup_steps=2"]
TOOLS = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "tools")) if f.endswith(".py") and not f.startswith("_"))
OURS = ("models", "datasets", "engine", "tools")
ENV = {**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")},
       "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def run(argv: list[str], cwd: str, expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=180)
    output = f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == expect, f"{argv[:3]} exited {proc.returncode}:\n{output}"
    return proc


def scratch_env(root: str) -> dict:
    """A venv at ``root`` that sees this interpreter's packages and holds a stand-in ``datasets``."""
    run([sys.executable, "-m", "venv", "--without-pip", root], cwd=os.path.dirname(root))
    python = os.path.join(root, "bin", "python")
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root).stdout.strip()
    ours = sysconfig.get_paths()
    with open(os.path.join(site, "reuse_test_venv.pth"), "w") as f:
        f.write("\n".join(dict.fromkeys((ours["purelib"], ours["platlib"]))) + "\n")
    os.makedirs(os.path.join(site, "datasets"))
    with open(os.path.join(site, "datasets", "__init__.py"), "w") as f:
        f.write("STAND_IN = True\n")
    elsewhere = os.path.join(root, "elsewhere")
    os.makedirs(elsewhere)
    return {"python": python, "bin": os.path.join(root, "bin"), "site": site, "elsewhere": elsewhere}


def python_c(env: dict, code: str, cwd: str | None = None, expect: int = 0) -> str:
    return run([env["python"], "-c", code], cwd=cwd or env["elsewhere"], expect=expect).stdout


@pytest.fixture(scope="module")
def editable(tmp_path_factory) -> dict:
    """The scratch venv with the checkout installed the README's way (``make``'s line)."""
    env = scratch_env(str(tmp_path_factory.mktemp("shadow") / "venv"))
    # No leak from this venv's editable install: before ours, none of our names imports outside the checkout.
    leaked = python_c(env, "import importlib.util as u; print([n for n in ('hgfpn_keypoints', 'models', 'engine', "
                           "'tools') if u.find_spec(n)])")
    assert leaked == "[]\n"
    run([env["python"], "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "-e", REPO],
        cwd=env["elsewhere"])
    return env


def test_only_the_launcher_is_installed(editable):
    out = python_c(editable, "import datasets, hgfpn_keypoints, importlib.util as u; print(datasets.STAND_IN); "
                             "print(hgfpn_keypoints.__file__); print([u.find_spec(n) for n in ('models', 'engine', "
                             "'tools')]); print(hgfpn_keypoints.repository_root())")
    assert out.splitlines() == ["True", os.path.join(REPO, "hgfpn_keypoints", "__init__.py"), "[None, None, None]",
                                REPO]
    for tool in TOOLS:
        assert os.path.isfile(os.path.join(editable["bin"], f"hgfpn-{tool.replace('_', '-')}")), tool


def test_console_scripts_run_from_elsewhere(editable):
    where = editable["elsewhere"]
    for tool in ("hgfpn-train", "hgfpn-convert"):
        assert run([os.path.join(editable["bin"], tool), "--help"], cwd=where).stdout.startswith(f"usage: {tool}")
    run_dir = os.path.join(where, "run")
    run([os.path.join(editable["bin"], "hgfpn-train"), "--config", CONFIG, "--run-dir", run_dir, "--no-progress",
         "train.epochs=1", *TINY], cwd=where)
    assert os.path.isfile(os.path.join(run_dir, "best.pt")) and os.path.isfile(os.path.join(run_dir, "metrics.json"))
    err = run([os.path.join(editable["bin"], "hgfpn-train"), "--config", "missing.yaml"], cwd=where, expect=2).stderr
    assert err.strip().splitlines()[-1].startswith("error: config file not found: missing.yaml")


def test_python_api_from_elsewhere(editable, tmp_path):
    checkpoint = tiny_keypoint_checkpoint(str(tmp_path / "pose.pt"))
    out = python_c(editable, f"import numpy as np, hgfpn_keypoints; pose = hgfpn_keypoints.load({checkpoint!r}, "
                             f"device='cpu'); print(pose(np.zeros((48, 32, 3), np.uint8)).shape); import datasets; "
                             f"print(datasets.__file__)")
    assert out.splitlines() == ["(1, 17, 3)", os.path.join(REPO, "datasets", "__init__.py")]


def test_a_process_holding_another_datasets_gets_one_line(editable):
    out = python_c(editable, "import datasets, hgfpn_keypoints\ntry:\n    hgfpn_keypoints.use_repository()\n"
                             "except hgfpn_keypoints.RepositoryError as err:\n    print(err)")
    assert len(out.splitlines()) == 1
    assert out.startswith("another 'datasets' is already imported in this process") and "separate process" in out
    # ... and in a process that did not import it first, our packages import (and use_repository is idempotent).
    out = python_c(editable, "import sys, hgfpn_keypoints as h; h.use_repository(); n = len(sys.path); "
                             "h.use_repository(); import engine.api; print(len(sys.path) == n, engine.api.__file__)")
    assert out.split() == ["True", os.path.join(REPO, "engine", "api.py")]


def test_the_checkout_still_runs_tools_as_modules(editable):
    assert run([editable["python"], "-m", "tools.train", "--help"], cwd=REPO).stdout.startswith("usage:")


def test_a_wheel_carries_our_packages_inside_the_launcher(tmp_path):
    """``pip install .`` (not editable) puts our packages under ``hgfpn_keypoints/_repository/`` and leaves a
    namesake in site-packages alone. The wheel is built from a copy: a build writes build/ next to setup.py."""
    src = tmp_path / "src"
    for name in (*OURS, "hgfpn_keypoints"):
        shutil.copytree(os.path.join(REPO, name), src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy(os.path.join(REPO, name), src / name)
    env = scratch_env(str(tmp_path / "venv"))
    run([env["python"], "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
         str(src)], cwd=env["elsewhere"])
    (wheel,) = (str(p) for p in tmp_path.glob("hgfpn_keypoints-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"hgfpn_keypoints", "hgfpn_keypoints-0.1.0.dist-info"}
    inside = {n.split("/", 2)[2] for n in names if n.startswith("hgfpn_keypoints/_repository/")}
    assert {"models/__init__.py", "datasets/__init__.py", "engine/api.py", "tools/train.py"} <= inside
    run([env["python"], "-m", "pip", "install", "--quiet", "--no-deps", wheel], cwd=env["elsewhere"])
    assert os.listdir(os.path.join(env["site"], "datasets")) == ["__init__.py"]    # the namesake is untouched
    bundled = os.path.join(env["site"], "hgfpn_keypoints", "_repository")
    out = python_c(env, "import datasets, hgfpn_keypoints; print(datasets.STAND_IN, hgfpn_keypoints.repository_root())")
    assert out.split() == ["True", bundled]
    assert run([os.path.join(env["bin"], "hgfpn-convert"), "--help"], cwd=env["elsewhere"]).stdout.startswith("usage")
