"""What ties models and datasets together, one room per job; ``engine.api`` is the door for Python users.

    evaluation/  COCO, keypoint and face metrics, the data report, the evaluator contract
    config/      schema sections every task shares, reading YAML with overrides, the starter config
    tasks/       one package per task (schema, task object, evaluator, builders, ONNX outputs) and the registry
    train/       the loop and its craft: set-up, optimisers, EMA, freezing, precision, checkpoints, run folder
    export/      the ONNX format, export, and the onnxruntime runner
    inference/   loading for inference, predictors, box sources, the two-stage pipeline, drawing
    video/       frames in and out, the per-frame runner, tracking, smoothing, per-frame outputs
    api.py       load a model and call it on images and videos
    checkpoint.py, distributed.py   the checkpoint file and the process group, used by every room

Imports run one way, down this list: a room imports the rooms listed before it (and ``models``,
``datasets``, ``checkpoint``, ``distributed``), never one after it; ``train`` and ``export`` do not import
each other. ``tests/test_import_direction.py`` checks it. Command-line parsing lives in ``tools/`` only.
"""
