"""The Python API: the README's snippet runs as written, and each call agrees with the tools' code path."""

from __future__ import annotations

import os
import re

import cv2
import numpy as np
import pytest
import torch

from datasets.synthetic_video import render_moving_figures, write_video
from engine.checkpoint import save_checkpoint
from engine.config.loading import config_to_dict
from engine.tasks.registry import config_from_dict
from models.errors import InputError
from tests.inference_utils import tiny_keypoint_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_snippet() -> str:
    """The ```python block of the README's section on using it on your data."""
    text = open(os.path.join(REPO, "README.md")).read()
    section = text.split("## Use it on your data", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


def tiny_detector_checkpoint(path: str, class_names=("figure",)) -> str:
    torch.manual_seed(0)
    split = {"ann_file": "x", "image_root": "x"}
    cfg = config_from_dict({"task": "detection", "model": {"out_indices": [1, 2, 3], "fpn_channels": 16,
                                                           "head_channels": 16},
                            "data": {"input_size": [64, 64], "train": split, "val": split}})
    from engine.tasks import detection as det_task

    model = det_task.build_model(cfg, len(class_names), pretrained=False)
    # A bias that puts every heatmap cell at probability ~0.5: the untrained detector then finds boxes.
    torch.nn.init.zeros_(model.head.heatmap[-1].bias)
    meta = det_task.DetectionMeta(list(class_names), list(range(1, len(class_names) + 1)))
    save_checkpoint({"model": model.state_dict(), "config": config_to_dict(cfg), "meta": meta.to_dict()}, path)
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> str:
    """A folder with the files the README snippet names."""
    d = tmp_path_factory.mktemp("api")
    os.makedirs(d / "runs" / "pose")
    os.makedirs(d / "runs" / "det")
    tiny_keypoint_checkpoint(str(d / "runs" / "pose" / "best.pt"))
    tiny_detector_checkpoint(str(d / "runs" / "det" / "best.pt"))
    frames, _ = render_moving_figures(num_frames=5, size=(128, 96), num_figures=1, figure_height=60, seed=2)
    cv2.imwrite(str(d / "photo.jpg"), cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR))
    write_video(str(d / "clip.mp4"), frames, fps=10)
    return str(d)


def test_readme_snippet_runs_as_written(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    scope: dict = {}
    exec(compile(readme_snippet(), "README.md", "exec"), scope)
    assert scope["keypoints"].shape == (1, 17, 3)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and lines[0].startswith("0 (1, 17, 3) [0]")


def test_api_agrees_with_the_predictor_and_checks_its_input(workdir):
    from engine.api import Detector, KeypointModel, load
    from engine.inference.loading import load_keypoint_predictor

    pose = load(os.path.join(workdir, "runs/pose/best.pt"), device="cpu")
    assert isinstance(pose, KeypointModel) and len(pose.keypoint_names) == 17
    image = cv2.cvtColor(cv2.imread(os.path.join(workdir, "photo.jpg")), cv2.COLOR_BGR2RGB)
    boxes = np.array([[10, 20, 110, 90], [0, 0, 60, 60]], float)
    predictor, _ = load_keypoint_predictor(os.path.join(workdir, "runs/pose/best.pt"), torch.device("cpu"))
    np.testing.assert_array_equal(pose(image, boxes=boxes), predictor.predict(image, boxes))
    # No boxes: the whole image [0, 0, W - 1, H - 1].
    np.testing.assert_array_equal(pose(image), predictor.predict(image, np.array([[0, 0, 127, 95]])))
    with pytest.raises(InputError, match="RGB uint8"):
        pose(image.astype(np.float32))
    det = load(os.path.join(workdir, "runs/det/best.pt"), device="cpu", score_threshold=0.0)
    assert isinstance(det, Detector)
    out = det(image)
    assert out["boxes"].shape[1] == 4 and len(out["class_names"]) == len(out["scores"]) > 0
    frames = list(det.video(os.path.join(workdir, "clip.mp4"), stop=3))
    assert [f.frame for f in frames] == [0, 1, 2] and frames[0].keypoints is None


def test_detector_keeps_the_categories_asked_for_on_images_as_on_videos(workdir, tmp_path):
    from engine.api import load

    path = tiny_detector_checkpoint(str(tmp_path / "two.pt"), class_names=("square", "disc"))
    image = cv2.cvtColor(cv2.imread(os.path.join(workdir, "photo.jpg")), cv2.COLOR_BGR2RGB)
    every = load(path, device="cpu", score_threshold=0.0)(image)
    assert set(every["class_names"]) == {"square", "disc"}
    discs = load(path, device="cpu", score_threshold=0.0, categories=["disc"])
    out = discs(image)
    assert len(out["scores"]) == (every["labels"] == 1).sum() > 0 and set(out["class_names"]) == {"disc"}
    assert (out["category_ids"] == 2).all()
    (frame,) = discs.video(os.path.join(workdir, "clip.mp4"), stop=1)
    assert len(frame.labels) > 0 and (frame.labels == 1).all()


def test_load_reads_the_checkpoint_once(workdir, monkeypatch):
    import engine.tasks.registry
    from engine.api import load

    calls = []
    original = engine.tasks.registry.load_checkpoint      # the one place a checkpoint is read for inference
    monkeypatch.setattr(engine.tasks.registry, "load_checkpoint",
                        lambda *a, **k: calls.append(a) or original(*a, **k))
    load(os.path.join(workdir, "runs/pose/best.pt"), device="cpu")
    load(os.path.join(workdir, "runs/det/best.pt"), device="cpu")
    assert len(calls) == 2


def test_video_generator_tracks_and_smooths(workdir):
    from engine.api import load

    pose = load(os.path.join(workdir, "runs/pose/best.pt"), device="cpu")
    raw = list(pose.video(os.path.join(workdir, "clip.mp4"), track=True))
    smooth = list(pose.video(os.path.join(workdir, "clip.mp4"), smooth=True,
                             smoother_options={"min_cutoff": 0.5, "beta": 0.0}))
    assert [r.frame for r in raw] == list(range(5)) and all(list(r.track_ids) == [0] for r in raw)
    # The first frame passes through the filter unchanged; later ones move towards the past.
    np.testing.assert_array_equal(smooth[0].keypoints, raw[0].keypoints)
    assert all(np.array_equal(s.keypoints[..., 2], r.keypoints[..., 2]) for s, r in zip(smooth, raw))


def test_infer_runs_a_detector_on_a_video_alone_and_before_keypoints(workdir, tmp_path):
    import json

    from tools import infer

    det, kpt, clip = (os.path.join(workdir, p) for p in ("runs/det/best.pt", "runs/pose/best.pt", "clip.mp4"))
    alone = infer.main(["--det-checkpoint", det, "--det-score-threshold", "0", "--input", clip, "--output-dir",
                        str(tmp_path / "det"), "--no-progress"])["videos"][0]
    dets = json.load(open(alone["outputs"]["json"]))
    assert alone["frames"] == 5 and {d["frame"] for d in dets} == set(range(5)) and alone["outputs"]["video"]
    both = infer.main(["--det-checkpoint", det, "--det-score-threshold", "0", "--det-every", "2", "--checkpoint",
                       kpt, "--input", clip, "--output-dir", str(tmp_path / "both"), "--track",
                       "--no-progress"])["videos"][0]
    # Ids and smoothing follow keypoints: asked of a detector alone, the flag is named (not ignored, nor
    # answered with "add --track" when it was given).
    for flags in (["--track"], ["--track", "--smooth"]):
        with pytest.raises(InputError, match="--track matches and smooths keypoints"):
            infer.main(["--det-checkpoint", det, "--input", clip, "--output-dir", str(tmp_path / "t"), *flags])
    poses = json.load(open(both["outputs"]["json"]))
    assert both["frames"] == 5 and poses and all(len(p["keypoints"]) == 51 for p in poses)
    assert {p["frame"] for p in poses} <= set(range(5)) and all(p["track_id"] is not None for p in poses)
