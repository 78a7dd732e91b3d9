"""A new task is one registry entry: a toy fourth task, defined and registered here and nowhere else, trains
with ``tools.train`` and is scored by ``tools.eval`` (their ``main(argv)``, in-process), and the tools that it
declares no path for (``tools.export``, ``tools.infer``) refuse it in one line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import torch
import yaml
from torch import nn

from engine.config.sections import TrainConfig, range_checker
from engine.evaluation.evaluator import evaluate_model
from engine.tasks.base import Experiment, Task, TaskEntry
from engine.tasks.registry import TASKS, register, unregister
from models.errors import UserError


# ---------------------------------------------------------------------------------------------- the toy task
# Brightness regression: each image is one grey level plus noise, the model predicts the level in [0, 1].
@dataclass
class ToyModelConfig:
    channels: int = 4


@dataclass
class ToyDataConfig:
    num_train: int = 32
    num_val: int = 16
    size: int = 8
    val_batch_size: int = 8


@dataclass
class ToyEvalConfig:
    main_metric: str = "error"          # mean absolute error: lower is better


@dataclass
class ToyLossConfig:
    weight: float = 1.0


@dataclass
class ToyConfig:
    task: str = "toy_brightness"
    name: str = "toy"
    output_dir: str = "runs"
    model: ToyModelConfig = field(default_factory=ToyModelConfig)
    data: ToyDataConfig = field(default_factory=ToyDataConfig)
    loss: ToyLossConfig = field(default_factory=ToyLossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: ToyEvalConfig = field(default_factory=ToyEvalConfig)


def toy_ranges(cfg: ToyConfig) -> list[str]:
    out, need = range_checker()
    need("data.size", cfg.data.size, cfg.data.size >= 2, "must be >= 2")
    return out


def toy_data(n: int, size: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    levels = torch.rand(n, generator=g)
    images = levels[:, None, None, None] + 0.05 * torch.randn(n, 1, size, size, generator=g)
    return [{"image": images[i], "level": levels[i], "id": i} for i in range(n)]


class ToyEvaluator:
    def __init__(self):
        self.results: list = []
        self.reset()

    def reset(self) -> None:
        self.errors: list[torch.Tensor] = []

    def process(self, predictions: dict, seconds: float | None = None) -> None:
        self.errors.append((predictions["pred"] - predictions["level"]).abs())

    def evaluate(self) -> dict[str, float]:
        self.results = torch.cat(self.errors).tolist()
        return {"error": float(torch.cat(self.errors).mean())}

    def describe(self) -> dict:
        return {"task": "toy_brightness", "images": len(self.results)}


class ToyTask:
    def training_step(self, model: nn.Module, batch: dict) -> dict:
        pred = model(batch["image"])
        return {"loss": ((pred - batch["level"]) ** 2).mean(), "batch_size": len(pred)}

    def validate(self, model: nn.Module, loader) -> dict[str, float]:
        return evaluate_model(self, model, loader)[0]

    @staticmethod
    def batch_ids(batch: dict) -> list:
        return [f"toy {int(i)}" for i in batch["id"]]

    def evaluator(self) -> ToyEvaluator:
        return ToyEvaluator()

    @torch.no_grad()
    def predict_batches(self, model: nn.Module, loader) -> Iterator[dict]:
        was_training = model.training
        model.eval()
        try:
            for batch in loader:
                yield {"pred": model(batch["image"]), "level": batch["level"]}
        finally:
            model.train(was_training)


class ToyModel(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def _loader(cfg, data, batch_size, shuffle):
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=shuffle,
                                       generator=torch.Generator().manual_seed(cfg.train.seed))


def toy_experiment(cfg, device, progress=True, rank=0, world_size=1) -> Experiment:
    d = cfg.data
    return Experiment(model=ToyModel(cfg.model.channels).to(device), task=ToyTask(),
                      train_loader=_loader(cfg, toy_data(d.num_train, d.size, 0), cfg.train.batch_size, True),
                      val_loader=_loader(cfg, toy_data(d.num_val, d.size, 1), d.val_batch_size, False),
                      checkpoint_extra={"meta": {"levels": "grey"}})


def toy_evaluation(cfg, device, progress=True) -> Experiment:
    exp = toy_experiment(cfg, device, progress)
    exp.train_loader = None
    return exp


TOY = TaskEntry(name="toy_brightness", schema=ToyConfig, check_ranges=toy_ranges, build_experiment=toy_experiment,
                build_evaluation=toy_evaluation, summary="grey level of an image (a test's toy)")


# ---------------------------------------------------------------------------------------------- the tests
@pytest.fixture
def toy_config(tmp_path):
    register(TOY)
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump({"task": "toy_brightness", "name": "toy", "output_dir": str(tmp_path / "runs"),
                                    "train": {"epochs": 3, "batch_size": 8, "lr": 0.01, "warmup_steps": 0,
                                              "num_workers": 0, "device": "cpu"}}))
    yield str(path)
    unregister("toy_brightness")


def test_the_toy_task_satisfies_the_task_protocol():
    assert isinstance(ToyTask(), Task)


def test_a_registered_task_trains_and_evaluates_through_the_tools(toy_config, tmp_path):
    from tools import eval as eval_tool
    from tools import train as train_tool

    run_dir = tmp_path / "runs" / "toy"
    summary = train_tool.main(["--config", toy_config, "--run-dir", str(run_dir), "--no-progress"])
    assert os.path.isfile(run_dir / "best.pt") and summary["main_metric"] == "error" and summary["epochs"] == 3
    report = eval_tool.main(["--config", toy_config, "--checkpoint", str(run_dir / "best.pt"),
                             "--output-dir", str(tmp_path / "eval"), "--no-progress"])
    # The evaluator of training-time validation scores the checkpoint tools.eval scores: the same number.
    assert report["task"] == "toy_brightness" and report["images"] == 16
    assert report["metrics"]["error"] == pytest.approx(summary["best"], abs=1e-6)
    assert json.load(open(tmp_path / "eval" / "metrics.json"))["metrics"] == report["metrics"]
    assert "toy_brightness" in TASKS


def test_the_tools_refuse_what_the_toy_task_does_not_declare(toy_config, tmp_path, capsys):
    from tools import export as export_tool
    from tools import train as train_tool

    run_dir = tmp_path / "runs" / "toy"
    train_tool.main(["--config", toy_config, "--run-dir", str(run_dir), "--no-progress", "train.epochs=1"])
    with pytest.raises(UserError, match="toy_brightness.*(no ONNX export|declares no inference model)"):
        export_tool.main(["--checkpoint", str(run_dir / "last.pt"), "--output", str(tmp_path / "toy.onnx")])
    from engine.api import load

    with pytest.raises(UserError, match="toy_brightness.*declares no inference model"):
        load(str(run_dir / "last.pt"), device="cpu")


def test_an_unknown_task_is_one_line_naming_the_known_ones(tmp_path):
    from engine.tasks.registry import load_config

    path = tmp_path / "x.yaml"
    path.write_text("task: toy_brightness\n")
    with pytest.raises(UserError, match="'toy_brightness' is not one of .*keypoints"):
        load_config(str(path))
