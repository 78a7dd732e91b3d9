"""The tasks: one package each (keypoints, detection, classification) with its schema, task object,
evaluator, builders and ONNX outputs, declared by one ``TaskEntry`` (``base``) in the table of ``registry``.
Imports models, datasets, engine.config, engine.evaluation, engine.checkpoint and engine.distributed."""
