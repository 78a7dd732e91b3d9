"""A cascade of two keypoint models: a cheap first pass places the crops, the second model reads them.

The first model's single prediction on the detector's box gives the tight box of its points; the second
model runs its ``eval.recrop_passes`` there. Checked by hand values (which box each model sees), against the
same steps done by hand with two predictors, through tools.eval, on videos (frames batched) and through
onnxruntime, and refused in one line where it cannot work.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from datasets.synthetic_video import render_moving_figures
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.inference.loading import load_keypoint_predictor
from engine.inference.predictors import TopDownPredictor
from models.bbox import keypoints_tight_box
from models.errors import CheckpointError, InputError
from tests.inference_utils import tiny_keypoint_checkpoint
from tests.test_api import tiny_detector_checkpoint

CPU = torch.device("cpu")


def _with_recrop(path: str, out: str, passes: int) -> str:
    state = load_checkpoint(path)
    state["config"]["eval"]["recrop_passes"] = passes
    save_checkpoint(state, out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """Two untrained tiny COCO-17 models of different inputs: ``first`` (no re-crop) and ``second`` (one)."""
    folder = tmp_path_factory.mktemp("cascade")
    first = tiny_keypoint_checkpoint(str(folder / "first.pt"), input_size=(32, 48), seed=1, flip_test=False)
    second = tiny_keypoint_checkpoint(str(folder / "second0.pt"), input_size=(48, 64), seed=2, flip_test=False)
    return {"first": first, "second": _with_recrop(second, str(folder / "second.pt"), 1),
            "second_r0": second, "detector": tiny_detector_checkpoint(str(folder / "det.pt")), "folder": folder}


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return render_moving_figures(num_frames=3, size=(128, 96), num_figures=2, figure_height=60, seed=4)[0]


BOXES = [np.array([[10.0, 8.0, 60.0, 80.0], [55.0, 12.0, 120.0, 90.0]]), np.array([[20.0, 10.0, 70.0, 85.0]]),
         np.zeros((0, 4))]


def test_first_pass_places_the_crops_the_second_model_reads():
    """Hand values: the second model's first crop is the tight box of the first model's points; with two passes
    its second crop is the tight box of its own first answer; the answer is its last pass."""
    names = type("M", (), {"keypoint_names": ["a", "b"]})

    class First:
        def predict_many(self, images, boxes, flip_test=None):
            seen_first.append([b.copy() for b in boxes])
            return [np.array([[[10.0, 20.0, 0.9], [50.0, 80.0, 0.9]]])]

    seen_first, seen = [], []
    answers = iter([[np.array([[[12.0, 22.0, 0.8], [48.0, 78.0, 0.8]]])],
                    [np.array([[[11.0, 21.0, 0.7], [49.0, 79.0, 0.7]]])]])
    second = TopDownPredictor(model=None, task=None, input_size=(64, 64), recrop_passes=2, first_pass=First())
    second.task = type("T", (), {"meta": names})()

    def once(images, boxes, flip_test):
        seen.append([b.copy() for b in boxes])
        return next(answers)

    second._predict_once = once
    out = second.predict(np.zeros((100, 100, 3), np.uint8), np.array([[0.0, 0.0, 99.0, 99.0]]))
    np.testing.assert_array_equal(seen_first[0][0], [[0, 0, 99, 99]])     # the detector's box goes to the first
    np.testing.assert_array_equal(seen[0][0], [[10, 20, 49, 79]])         # its points' tight box to the second
    np.testing.assert_array_equal(seen[1][0], [[12, 22, 47, 77]])         # then the second's own
    np.testing.assert_array_equal(out[0, 0], [11, 21, 0.7])


def test_cascade_equals_its_two_steps_by_hand_and_batches_frames_alike(models, frames):
    cascade, _ = load_keypoint_predictor(models["second"], CPU, first_pass=models["first"])
    first, _ = load_keypoint_predictor(models["first"], CPU)
    second_alone, _ = load_keypoint_predictor(models["second_r0"], CPU)
    assert cascade.first_pass.recrop_passes == 0 and cascade.recrop_passes == 1
    for frame, boxes in zip(frames, BOXES):
        by_hand = second_alone.predict(frame, keypoints_tight_box(first.predict(frame, boxes)[..., :2], boxes))
        np.testing.assert_allclose(cascade.predict(frame, boxes), by_hand, rtol=0, atol=1e-6)
        # The cascade is not the second model on the detector's box (its crop moved).
        if len(boxes):
            assert not np.allclose(cascade.predict(frame, boxes), second_alone.predict(frame, boxes), atol=0.5)
    # Frames batched together (videos) give every frame what it gets alone, first pass and re-crop included.
    batched = cascade.predict_many(frames, BOXES)
    for frame, boxes, got in zip(frames, BOXES, batched):
        np.testing.assert_allclose(got, cascade.predict(frame, boxes), rtol=0, atol=1e-4)
    assert batched[2].shape == (0, 17, 3)
    # The Python API takes the same first pass.
    from engine.api import load

    api = load(models["second"], device="cpu", first_pass=models["first"])
    np.testing.assert_allclose(api(frames[0], boxes=BOXES[0]), cascade.predict(frames[0], BOXES[0]), atol=1e-6)


def test_a_first_pass_that_cannot_work_is_refused_in_one_line(models, tmp_path):
    with pytest.raises(InputError, match="eval.recrop_passes is 0"):
        load_keypoint_predictor(models["second_r0"], CPU, first_pass=models["first"])
    with pytest.raises(InputError, match="recrop_passes is 0"):
        TopDownPredictor(model=None, task=None, input_size=(8, 8), recrop_passes=0, first_pass=object())
    with pytest.raises(InputError, match="--first-pass nowhere.pt: no such file"):
        load_keypoint_predictor(models["second"], CPU, first_pass="nowhere.pt")
    with pytest.raises(CheckpointError, match="--first-pass .* is a 'detection' checkpoint"):
        load_keypoint_predictor(models["second"], CPU, first_pass=models["detector"])
    other = load_checkpoint(models["first"])
    other["meta"]["keypoint_names"] = [f"p{i}" for i in range(17)]
    save_checkpoint(other, str(tmp_path / "other.pt"))
    with pytest.raises(InputError, match=r"must predict the same keypoints") as err:
        load_keypoint_predictor(models["second"], CPU, first_pass=str(tmp_path / "other.pt"))
    assert "p0" in str(err.value) and "nose" in str(err.value)


def test_eval_scores_the_cascade_it_is_given(models, shared_data, tmp_path):
    """tools.eval --first-pass gives the poses of the cascade predictor on the detection file's boxes (the
    Python API's), not those of the second model alone, and says so in its report."""
    from datasets.image_io import read_image_rgb
    from engine.inference.box_sources import DetectionFileBoxes
    from tools import eval as eval_tool

    root = os.path.join(shared_data, "coco_mini")
    split = {"ann_file": f"{root}/test_coco.json", "image_root": root}
    dets = os.path.join(root, "test_coco_det_AP_H_56.json")
    cfg = load_checkpoint(models["second"])["config"]        # the model's own config, on coco_mini's images
    cfg["data"].update(train=split, val=split)
    (tmp_path / "second.yaml").write_text(json.dumps(cfg))

    def run(out, *extra):
        return eval_tool.main(["--config", str(tmp_path / "second.yaml"), "--checkpoint", models["second"], "--boxes",
                               dets, "--output-dir", str(tmp_path / out), "--no-progress", "--oks-nms-threshold", "2",
                               *extra])

    def poses(folder):
        out = {}
        for r in json.load(open(tmp_path / folder / "keypoint_results.json")):
            out.setdefault(r["image_id"], []).append(np.asarray(r["keypoints"]).reshape(-1, 3))
        return out

    report = run("cascade", "--first-pass", models["first"])
    assert report["first_pass"] == models["first"] and "first_pass" not in run("alone")
    cascade, _ = load_keypoint_predictor(models["second"], CPU, first_pass=models["first"])
    source = DetectionFileBoxes(dets, category_ids=[1])
    got, alone = poses("cascade"), poses("alone")
    checked = differ = 0
    for im in json.load(open(split["ann_file"]))["images"]:
        image = read_image_rgb(os.path.join(root, im["file_name"]))
        boxes, _ = source.boxes_for(im["id"], image)
        for pose in cascade.predict(image, boxes):
            assert any(np.abs(pose[:, :2] - q[:, :2]).max() < 0.01 for q in got[im["id"]])
            differ += not any(np.abs(pose[:, :2] - q[:, :2]).max() < 0.5 for q in alone[im["id"]])
            checked += 1
    assert checked == report["boxes_used"] > 0 and differ > checked / 2
    with pytest.raises(InputError, match="add --boxes or --det-checkpoint"):
        eval_tool.main(["--config", str(tmp_path / "second.yaml"), "--checkpoint", models["second"],
                        "--first-pass", models["first"]])


def test_onnx_cascade_matches_pytorch_and_the_bench_reads_it(models, frames, tmp_path):
    import importlib.util

    from engine.export.runtime import DecodedKeypointRunner
    from tools import export

    onnx = {k: export.main(["--checkpoint", models[k], "--output", str(tmp_path / f"{k}.onnx"), "--decode"])["output"]
            for k in ("first", "second")}
    runner = DecodedKeypointRunner(onnx["second"], first_pass=DecodedKeypointRunner(onnx["first"]))
    cascade, _ = load_keypoint_predictor(models["second"], CPU, first_pass=models["first"])
    for frame, boxes in zip(frames[:2], BOXES[:2]):
        ref = cascade.predict(frame, boxes)
        got = runner.predict_boxes(frame, boxes)
        # onnxruntime's float differences (0.01 px) move the second model's crop a little too.
        np.testing.assert_allclose(got[..., :2], ref[..., :2], rtol=0, atol=0.05)
    # Threads that sleep between runs (spin=False, for sessions that take turns) change the time, not the points.
    quiet = DecodedKeypointRunner(onnx["second"], first_pass=DecodedKeypointRunner(onnx["first"], spin=False),
                                  spin=False)
    np.testing.assert_array_equal(quiet.predict_boxes(frames[0], BOXES[0]), runner.predict_boxes(frames[0], BOXES[0]))
    with pytest.raises(InputError, match="recrop_passes must be 1 or more"):
        runner.predict_boxes(frames[0], BOXES[0], recrop_passes=0)

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("face_fast_path", os.path.join(repo, "bench", "face_fast_path.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    built = bench.cascade_runner(f"{onnx['first']}+{onnx['second']}", threads=1)
    assert built.path == onnx["second"] and built.first_pass.path == onnx["first"]
    np.testing.assert_allclose(built.predict_boxes(frames[0], BOXES[0]), runner.predict_boxes(frames[0], BOXES[0]))
    assert bench.cascade_runner(onnx["first"], threads=1).first_pass is None
