"""ONNX: the file's metadata (``format``), writing a model with it (``exporter``), and running one on
onnxruntime behind the PyTorch interfaces (``runtime``); what a task exports is its ``OnnxOutputs``. Imports
models, engine.config, engine.tasks and engine.checkpoint."""
