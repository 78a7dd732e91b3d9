"""Inference on videos and cameras: frames in and out (``frames``), the batched per-frame runner
(``runner``), identities (``tracking``), One-Euro smoothing and per-frame outputs (JSON, DeepLabCut CSV).
Imports models, datasets and engine.inference."""
