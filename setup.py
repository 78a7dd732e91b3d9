"""Installs ONE import name, ``hgfpn_keypoints`` (docs/install.md): our ``models``, ``datasets``, ``engine`` and
``tools`` are generic names (Hugging Face's ``datasets`` is everywhere), so they are never installed as top-level
packages. An editable install (``pip install -e .``) leaves them in the checkout; a wheel carries them under
``hgfpn_keypoints/_repository/``. ``hgfpn_keypoints.use_repository()`` and the ``hgfpn-*`` commands put that folder
first on ``sys.path`` in their own process."""

from setuptools import find_packages, setup

OURS = ("models", "datasets", "engine", "tools")
BUNDLED = "hgfpn_keypoints._repository"
# One console script per user-facing tools/<name>.py, hgfpn-<name with hyphens> (tests/test_shadow.py checks it).
TOOLS = ("train", "eval", "infer", "export", "convert", "make_config", "demo", "browse_dataset", "show_heatmaps",
         "estimate_sigmas", "diagnose_training", "fpn_inputs")
BUNDLED_PACKAGES = [f"{BUNDLED}.{p}" for p in find_packages(include=[n for o in OURS for n in (o, f"{o}.*")])]

setup(
    name="hgfpn-keypoints",
    version="0.1.0",
    description="Keypoint heatmap detection and FPN detection on any timm backbone",
    python_requires=">=3.10",
    packages=["hgfpn_keypoints", *BUNDLED_PACKAGES],
    package_dir={f"{BUNDLED}.{o}": o for o in OURS},
    entry_points={"console_scripts": [f"hgfpn-{t.replace('_', '-')} = hgfpn_keypoints.cli:{t}" for t in TOOLS]},
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "timm>=1.0",
        "albumentations>=2.0,<2.1",
        "opencv-python-headless>=4.9",
        "numpy",
        "pycocotools>=2.0.7",
        "omegaconf>=2.3",
        "tqdm",
        "matplotlib",
        "scipy",
    ],
    extras_require={
        "dev": ["pytest", "pytest-timeout", "hypothesis", "ruff", "tensorboard"],
        # The peer model of bench/dlib_landmarks.py (dlib's 68-point shape predictor); never needed by tests.
        "peers": ["dlib-bin>=19.24", "face-recognition-models>=0.3"],
        "onnx": ["onnx", "onnxscript", "onnxruntime"],
        # DeepLabCut's .h5 (engine/video/outputs.py writes it beside each CSV; datasets/formats/dlc.py reads it).
        "h5": ["pandas", "tables"],
    },
)
