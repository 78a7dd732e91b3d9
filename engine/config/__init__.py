"""Config machinery: the sections every task shares (``sections``), reading YAML against a schema with dotted
overrides (``loading``), the starter config of a new keypoint set (``starter``). Imports models, datasets and
engine.evaluation; a task's own schema lives in its package, and ``engine.tasks.registry.load_config`` reads a
config file against it."""
