"""Training: the loop (``loop``), setting up a run from a config (``run``), optimisers and schedules, EMA,
freezing, precision, non-finite handling, run folder, provenance, logs and curves, diagnosis, memory
counting. Imports models, datasets, engine.config, engine.tasks, engine.checkpoint and engine.distributed."""
