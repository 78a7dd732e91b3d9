"""Inference on images: loading a trained or exported model (``loading``), predictors, box sources and
detection files, the two-stage pipeline, OKS-NMS, the per-image loop (``images``) and drawing. Imports
models, datasets, engine.tasks, engine.export and engine.checkpoint."""
