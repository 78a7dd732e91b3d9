"""Videos in and out: frame source (range, stride, damaged files), writer, DeepLabCut CSV and per-frame JSON,
batched video inference through tools.infer with tracking and smoothing. Every video is made here."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import torch

from datasets.synthetic_video import render_moving_figures, truth_detections, write_video
from engine.video.frames import VideoSource, VideoWriter, split_inputs
from engine.video.outputs import frame_results, read_dlc_csv, write_dlc_csv
from models.errors import InputError
from tests.inference_utils import tiny_keypoint_checkpoint


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("clip")
    frames, truth = render_moving_figures(num_frames=8, size=(128, 96), num_figures=2, figure_height=60, seed=1)
    path = write_video(str(folder / "walk.mp4"), frames, fps=12.0)
    return {"path": path, "frames": frames, "truth": truth, "folder": str(folder)}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return tiny_keypoint_checkpoint(str(tmp_path_factory.mktemp("kpt") / "kpt.pt"))


def _avi(path: str, frames: list[np.ndarray], fps: float = 10.0) -> str:
    return write_video(path, frames, fps, fourcc="MJPG")


# ---------------------------------------------------------------------------------------------- reading
def test_source_reads_range_and_stride_with_the_files_fps_and_size(clip):
    src = VideoSource(clip["path"], start=1, stop=7, stride=2)
    assert src.fps == pytest.approx(12.0) and src.size == (128, 96) and src.frame_count == 8
    assert src.expected_frames() == 3
    got = list(src)
    assert [i for i, _ in got] == [1, 3, 5] and src.broken_at is None
    # The frames are the ones written (lossy codec: close, and closer to their own frame than a neighbour's).
    for i, frame in got:
        own = np.abs(frame.astype(int) - clip["frames"][i]).mean()
        assert own < 6 and own < np.abs(frame.astype(int) - clip["frames"][i + 1]).mean()


def test_bad_videos_are_named_errors(tmp_path, clip):
    with pytest.raises(InputError, match="does not exist"):
        VideoSource(str(tmp_path / "missing.mp4"))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(InputError, match=r"junk.mp4 cannot be opened .* re-encode"):
        VideoSource(str(junk))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty.mp4"):
        list(VideoSource(str(empty)))
    with pytest.raises(InputError, match="past its end"):
        VideoSource(clip["path"], start=50)
    with pytest.raises(InputError, match="stride"):
        VideoSource(clip["path"], stride=0)
    with pytest.raises(InputError, match="camera 7 does not open"):
        VideoSource(7)


def test_a_video_that_breaks_off_keeps_its_frames_and_says_where(tmp_path, clip, caplog):
    path = _avi(str(tmp_path / "whole.avi"), clip["frames"])
    data = open(path, "rb").read()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.7)])
    src = VideoSource(str(cut))
    got = [i for i, _ in src]
    assert 0 < len(got) < 8 and got == list(range(len(got)))
    assert src.broken_at == len(got) and f"breaks off at frame {len(got)}" in caplog.text
    # Cut before the first frame's data: nothing can be read, an error that says so.
    head = tmp_path / "head.avi"
    head.write_bytes(data[: int(len(data) * 0.08)])
    with pytest.raises(InputError, match="head.avi"):
        list(VideoSource(str(head)))


def test_inputs_mix_images_and_videos_and_take_a_camera_index(tmp_path, clip):
    cv2.imwrite(str(tmp_path / "b.png"), np.zeros((4, 4, 3), np.uint8))
    os.symlink(clip["path"], tmp_path / "a.mp4")
    (tmp_path / "notes.txt").write_text("x")
    images, videos = split_inputs(str(tmp_path))
    assert [os.path.basename(p) for p in images] == ["b.png"] and [os.path.basename(p) for p in videos] == ["a.mp4"]
    assert split_inputs("0") == ([], ["0"])
    with pytest.raises(InputError, match="notes.txt"):
        split_inputs(str(tmp_path / "notes.txt"))


def test_writer_keeps_fps_and_size(tmp_path, clip):
    out = str(tmp_path / "o.mp4")
    with VideoWriter(out, fps=12.0) as w:
        for f in clip["frames"][:5]:
            w.write(f)
    src = VideoSource(out)
    assert src.fps == pytest.approx(12.0) and src.size == (128, 96) and len(list(src)) == 5


# ---------------------------------------------------------------------------------------------- outputs
def test_dlc_csv_layout_with_and_without_individuals(tmp_path):
    names = ["nose", "tail"]
    k0 = np.array([[[1, 2, 0.9], [3, 4, 0.8]], [[10, 20, 0.5], [30, 40, 0.4]]])
    res = frame_results(0, k0, np.array([0.9, 0.3]), np.array([[0, 0, 9, 9], [5, 5, 9, 9]]), np.array([3, 7]))
    res += frame_results(2, k0[1:], np.array([0.6]), np.array([[5, 5, 9, 9]]), np.array([7]))
    assert res[0]["image_id"] == res[0]["frame"] == 0 and res[1]["track_id"] == 7 and res[0]["bbox"] == [0, 0, 10, 10]
    path = str(tmp_path / "t.csv")
    write_dlc_csv(path, res, names, "net", frames=[0, 1, 2], tracked=True)
    header, frames, values = read_dlc_csv(path)
    assert [r[0] for r in header] == ["scorer", "individuals", "bodyparts", "coords"]
    assert header[1][1:] == ["ind3"] * 6 + ["ind7"] * 6
    assert header[2][1:7] == ["nose"] * 3 + ["tail"] * 3 and header[3][1:4] == ["x", "y", "likelihood"]
    assert frames.tolist() == [0, 1, 2]
    np.testing.assert_allclose(values[0], [1, 2, 0.9, 3, 4, 0.8, 10, 20, 0.5, 30, 40, 0.4])
    assert np.isnan(values[1]).all() and np.isnan(values[2, :6]).all()
    np.testing.assert_allclose(values[2, 6:], [10, 20, 0.5, 30, 40, 0.4])
    # Untracked: one individual, the best-scoring instance of each frame, no individuals row.
    write_dlc_csv(path, res, names, "net", frames=[0, 1, 2], tracked=False)
    header, _, values = read_dlc_csv(path)
    assert [r[0] for r in header] == ["scorer", "bodyparts", "coords"] and values.shape == (3, 6)
    np.testing.assert_allclose(values[0], [1, 2, 0.9, 3, 4, 0.8])
    np.testing.assert_allclose(values[2], [10, 20, 0.5, 30, 40, 0.4])


# ---------------------------------------------------------------------------------------------- pipeline
@pytest.mark.parametrize("passes", [0, 1])
def test_batched_frames_give_the_per_image_poses(checkpoint, clip, passes):
    """Frames batched together (videos) get what each frame gets alone, the config's re-crop passes included."""
    from engine.inference.loading import load_keypoint_predictor

    predictor, _ = load_keypoint_predictor(checkpoint, torch.device("cpu"), batch_size=3, recrop_passes=passes)
    rng = np.random.default_rng(0)
    frames = clip["frames"][:3]
    boxes = [np.array([[5, 5, 60, 90], [40, 10, 120, 80]], float)[: n] + rng.uniform(0, 3, (n, 4))
             for n in (2, 1, 2)]
    batched = predictor.predict_many(frames, boxes)
    for f, b, got in zip(frames, boxes, batched):
        np.testing.assert_allclose(got, predictor.predict(f, b), rtol=0, atol=1e-3)
    if passes:      # and the re-crop is not skipped: the poses are not those of a single pass
        predictor.recrop_passes = 0
        assert not np.allclose(batched[0], predictor.predict(frames[0], boxes[0]), atol=0.5)


def _truth_boxes(truth: np.ndarray, path: str) -> str:
    with open(path, "w") as f:
        json.dump(truth_detections(truth), f)
    return path


def test_infer_on_a_video_writes_video_json_and_csv_with_stable_ids(checkpoint, clip, tmp_path):
    from tools import infer

    boxes = _truth_boxes(clip["truth"], str(tmp_path / "boxes.json"))
    out = infer.main(["--checkpoint", checkpoint, "--input", clip["path"], "--boxes", boxes, "--output-dir",
                      str(tmp_path / "o"), "--track", "--smooth", "--video-batch-size", "3", "--no-progress"])
    (summary,) = out["videos"]
    assert summary["frames"] == 8 and summary["broken_at"] is None and summary["track_ids"] == [0, 1]
    paths = summary["outputs"]
    video = VideoSource(paths["video"])
    assert video.fps == pytest.approx(12.0) and video.size == (128, 96) and len(list(video)) == 8
    results = json.load(open(paths["json"]))
    assert len(results) == summary["instances"] == 16
    assert {r["frame"] for r in results} == set(range(8)) and all(r["image_id"] == r["frame"] for r in results)
    assert all(len(r["keypoints"]) == 51 and r["category_id"] == 1 for r in results)
    # Each figure keeps its id: the id's box stays on the figure's side of the frame.
    for tid in (0, 1):
        xs = [r["bbox"][0] for r in results if r["track_id"] == tid]
        assert len(xs) == 8 and max(xs) - min(xs) < 40
    header, frames, values = read_dlc_csv(paths["csv"])
    assert frames.tolist() == list(range(8)) and values.shape == (8, 2 * 17 * 3)
    assert header[1][1] == "ind0" and header[0][1] == "tiny"


def test_video_frame_range_stride_and_whole_frame_boxes(checkpoint, clip, tmp_path):
    from tools import infer

    out = infer.main(["--checkpoint", checkpoint, "--input", clip["path"], "--output-dir", str(tmp_path),
                      "--start-frame", "2", "--end-frame", "8", "--frame-stride", "3", "--no-progress"])
    (summary,) = out["videos"]
    results = json.load(open(summary["outputs"]["json"]))
    assert summary["frames"] == 2 and [r["frame"] for r in results] == [2, 5]
    assert all(r["track_id"] is None for r in results)
    assert results[0]["bbox"] == [0, 0, 128, 96]


def test_a_broken_video_keeps_what_was_written(checkpoint, clip, tmp_path):
    from tools import infer

    path = _avi(str(tmp_path / "whole.avi"), clip["frames"])
    data = open(path, "rb").read()
    os.makedirs(tmp_path / "in")
    (tmp_path / "in" / "cut.avi").write_bytes(data[: int(len(data) * 0.7)])
    out = infer.main(["--checkpoint", checkpoint, "--input", str(tmp_path / "in" / "cut.avi"), "--output-dir",
                      str(tmp_path / "o"), "--no-progress"])
    (summary,) = out["videos"]
    assert 0 < summary["frames"] == summary["broken_at"] < 8
    assert len(json.load(open(summary["outputs"]["json"]))) == summary["frames"]
    assert len(list(VideoSource(summary["outputs"]["video"]))) == summary["frames"]


def test_video_flags_that_cannot_work_are_named(checkpoint, clip, tmp_path):
    from tools import infer

    with pytest.raises(InputError, match="--smooth .* --track"):
        infer.main(["--checkpoint", checkpoint, "--input", clip["path"], "--output-dir", str(tmp_path), "--smooth",
                    "--no-progress"])
    # One --boxes file for images and a video would read its image_ids as both image ids and frame indices.
    mixed = tmp_path / "mixed"
    os.makedirs(mixed)
    os.symlink(os.path.abspath(clip["path"]), mixed / "clip.avi")
    cv2.imwrite(str(mixed / "7.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "boxes.json").write_text("[]")
    with pytest.raises(InputError, match="--boxes .* images and videos"):
        infer.main(["--checkpoint", checkpoint, "--input", str(mixed), "--boxes", str(tmp_path / "boxes.json"),
                    "--output-dir", str(tmp_path / "o"), "--no-progress"])


class _MovingDetector:
    """A stand-in DetectionPredictor: one box that moves 10 px per call, and a count of the frames it saw."""

    def __init__(self):
        self.seen = 0
        self.task = type("T", (), {"meta": type("M", (), {"category_ids": [1], "class_names": ["figure"]})()})()

    def predict_many(self, images):
        out = []
        for _ in images:
            x = 10.0 * self.seen
            self.seen += 1
            out.append({"boxes": np.array([[x, 0, x + 40, 60]]), "scores": np.array([0.9]),
                        "labels": np.array([0]), "category_ids": np.array([1])})
        return out


def test_detector_every_n_frames_reuses_its_last_boxes(clip):
    from engine.inference.box_sources import DetectorBoxes
    from engine.video.runner import VideoPoseRunner

    det = _MovingDetector()
    runner = VideoPoseRunner(None, DetectorBoxes(det, score_threshold=0.5), det_every=3, batch_size=4)
    results = list(runner.run(enumerate(clip["frames"])))
    assert det.seen == 3                                       # frames 0, 3 and 6 of 8
    assert [r.boxes[0, 0] for r in results] == [0, 0, 0, 10, 10, 10, 20, 20]


def test_demo_video_stage_on_a_tiny_model(checkpoint, tmp_path):
    from tools import demo

    timings: dict = {}
    out = demo.run_video_stage(checkpoint, str(tmp_path), ["--no-progress"], timings, num_frames=6)
    (summary,) = out["videos"]
    assert summary["frames"] == 6 and summary["track_ids"] == [0, 1] and timings["video"] > 0
    src = VideoSource(summary["outputs"]["video"])
    assert src.size == (256, 192) and src.fps == pytest.approx(15.0)
