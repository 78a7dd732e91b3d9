"""Every task satisfies the declared contract (engine.tasks.base.Task), and the task table's builders return
an Experiment whose parts the trainer can use."""

from __future__ import annotations

import pytest
import torch

from engine.tasks import classification, detection, keypoints
from engine.tasks.base import Experiment, SavesArtifacts, Task
from engine.tasks.registry import TASKS, build_experiment, load_config
from models.errors import ConfigError


def _tasks():
    kmeta = keypoints.KeypointMeta(["a", "b"], [(0, 1)], [1, 0], [0.05, 0.05])
    dmeta = detection.DetectionMeta(["x"], [1])
    codec = detection.build_codec(load_config("configs/centernet-fpn_resnet18_synthetic-det_128x128.yaml"), 1)
    return [keypoints.KeypointTask(None, kmeta), detection.DetectionTask(codec, dmeta),
            classification.ClassificationTask(["a", "b"])]


@pytest.mark.parametrize("task", _tasks(), ids=lambda t: type(t).__name__)
def test_every_task_class_satisfies_the_task_protocol(task):
    assert isinstance(task, Task)
    for name in ("training_step", "validate", "batch_ids", "evaluator", "predict_batches"):
        assert callable(getattr(task, name)), name


def test_a_class_missing_a_method_does_not_satisfy_the_protocol():
    class NoIds:
        def training_step(self, model, batch):
            return {}

        def validate(self, model, loader):
            return {}

    assert not isinstance(NoIds(), Task)


def test_only_classification_saves_artifacts():
    assert [isinstance(t, SavesArtifacts) for t in _tasks()] == [False, False, True]


def test_the_task_table_names_every_task_module():
    assert {"keypoints", "detection", "classification"} <= set(TASKS)
    cfg = load_config("configs/cls_resnet10t_synthetic-shapes_32x32.yaml")
    cfg.task = "segmentation"
    with pytest.raises(ConfigError, match="segmentation"):
        build_experiment(cfg, torch.device("cpu"))


def test_build_experiment_returns_an_experiment(tmp_path):
    cfg = load_config("configs/cls_resnet10t_synthetic-shapes_32x32.yaml",
                      ["data.synthetic.num_train_images=8", "data.synthetic.num_val_images=4",
                       "train.num_workers=0", "train.batch_size=4"])
    exp = build_experiment(cfg, torch.device("cpu"), progress=False)
    assert isinstance(exp, Experiment) and isinstance(exp.task, Task)
    assert len(exp.train_loader) == 2 and exp.checkpoint_extra["meta"]["class_names"] == exp.meta["class_names"]
    out = exp.task.training_step(exp.model, next(iter(exp.train_loader)))
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])


def test_keypoint_build_task_reads_the_config():
    cfg = load_config("configs/hg-fpn_resnet18_synthetic-kpt_64x96.yaml", ["eval.rescore_threshold=0.3"])
    meta = keypoints.KeypointMeta(["a", "b"], [(0, 1)], [1, 0], [0.05, 0.05])
    task = keypoints.build_task(cfg, meta, flip_test=False, progress=False)
    assert task.rescore_threshold == 0.3 and task.flip_test is False
    assert tuple(task.codec.input_size) == tuple(cfg.data.input_size)
    assert keypoints.build_task(cfg, meta).flip_test is cfg.eval.flip_test
