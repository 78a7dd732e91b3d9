from setuptools import find_packages, setup

setup(
    name="hgfpn-keypoints",
    version="0.1.0",
    description="Keypoint heatmap detection and FPN detection on any timm backbone",
    python_requires=">=3.10",
    packages=find_packages(include=["models", "models.*", "datasets", "datasets.*",
                                    "engine", "engine.*", "tools", "tools.*"]),
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
    },
)
