"""ONNX export and the onnxruntime backend: heatmaps as PyTorch's to float tolerance, keypoints within 0.01 px
(through tools.infer, on synthetic and real images), decoding in the graph, a detector, metadata, and named
errors for models that do not fit. Skipped without onnxruntime."""

from __future__ import annotations

import json
import os
import shutil

import cv2
import numpy as np
import pytest
import torch

from datasets.synthetic_video import render_moving_figures
from engine.checkpoint import save_checkpoint
from engine.config.loading import config_to_dict
from engine.tasks.registry import config_from_dict
from models.errors import CheckpointError, ConfigError, InputError
from tests.inference_utils import tiny_keypoint_checkpoint

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    from tools import export

    folder = tmp_path_factory.mktemp("onnx")
    ckpt = tiny_keypoint_checkpoint(str(folder / "kpt.pt"), input_size=(32, 48))
    heat = export.main(["--checkpoint", ckpt, "--output", str(folder / "kpt.onnx")])
    dec = export.main(["--checkpoint", ckpt, "--output", str(folder / "kpt_decoded.onnx"), "--decode"])
    assert heat["max_abs_diff"] < 1e-4 and dec["max_abs_diff"] < 1e-2
    return {"ckpt": ckpt, "onnx": heat["output"], "decoded": dec["output"], "folder": folder}


def _crops(n: int = 12, size=(32, 48), seed: int = 0) -> torch.Tensor:
    """Crops of synthetic figures (structured images, not only noise): uint8 [n, 3, H, W]."""
    frames, truth = render_moving_figures(num_frames=n, size=(96, 96), num_figures=1, figure_height=70, seed=seed)
    crops = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


def test_heatmaps_match_pytorch_and_the_batch_is_dynamic(exported):
    from engine.inference.loading import load_for_inference

    _, model, _ = load_for_inference(exported["ckpt"], torch.device("cpu"))
    _, onnx_model, state = load_for_inference(exported["onnx"], torch.device("cpu"))
    for n in (1, 5, 12):
        x = _crops(n)
        with torch.no_grad():
            ref = model(x)[-1]
        got = onnx_model(x)[-1]
        assert got.shape == ref.shape == (n, 17, 12, 8)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    noise = torch.randint(0, 256, (4, 3, 48, 32), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(onnx_model(noise)[-1], model(noise)[-1], rtol=1e-4, atol=1e-5)
    assert state["meta"]["keypoint_names"][0] == "nose"


def test_metadata_carries_what_inference_needs(exported):
    import onnx

    props = {p.key: p.value for p in onnx.load(exported["onnx"]).metadata_props}
    assert json.loads(props["input_size"]) == [32, 48]
    assert len(json.loads(props["keypoint_names"])) == 17 and json.loads(props["flip_index"])[1] == 2
    codec = json.loads(props["codec"])
    assert codec["heatmap_size"] == [8, 12] and codec["refine"] == "dark" and codec["sigma"] == 2.0
    # resnet18's ImageNet statistics, recovered from the normaliser inside the graph.
    np.testing.assert_allclose(json.loads(props["mean"]), [0.485, 0.456, 0.406], atol=1e-5)
    np.testing.assert_allclose(json.loads(props["std"]), [0.229, 0.224, 0.225], atol=1e-5)
    doc = json.loads(props["repo.inference"])
    assert doc["kind"] == "keypoints" and doc["outputs"] == "heatmaps" and doc["config"]["task"] == "keypoints"


def _infer_both(exported, images: str, tmp, extra=()) -> tuple[list, list]:
    from tools import infer

    a = infer.main(["--checkpoint", exported["ckpt"], "--input", images, "--output-dir", str(tmp / "pt"),
                    "--no-progress", *extra])
    b = infer.main(["--backend", "onnxruntime", "--model", exported["onnx"], "--input", images, "--output-dir",
                    str(tmp / "ort"), "--no-progress", *extra])
    return json.load(open(a["results"])), json.load(open(b["results"]))


def _assert_same_results(pt: list, ox: list) -> None:
    assert len(pt) == len(ox) > 0
    for p, o in zip(sorted(pt, key=lambda r: (r["image_id"], -r["score"])),
                    sorted(ox, key=lambda r: (r["image_id"], -r["score"]))):
        assert p["image_id"] == o["image_id"]
        kp, ko = np.array(p["keypoints"]).reshape(-1, 3), np.array(o["keypoints"]).reshape(-1, 3)
        # 0.01 px, plus the 0.001 of the json's rounding to 3 decimals on each side.
        np.testing.assert_allclose(ko[:, :2], kp[:, :2], rtol=0, atol=0.012)
        np.testing.assert_allclose(ko[:, 2], kp[:, 2], rtol=0, atol=1e-3)


def test_infer_with_onnxruntime_writes_the_same_keypoints_as_pytorch(exported, tmp_path):
    frames, _ = render_moving_figures(num_frames=4, size=(120, 100), num_figures=2, figure_height=60, seed=4)
    os.makedirs(tmp_path / "images")
    for i, f in enumerate(frames):
        cv2.imwrite(str(tmp_path / "images" / f"{i:03d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    pt, ox = _infer_both(exported, str(tmp_path / "images"), tmp_path)       # flip test on (the config's)
    _assert_same_results(pt, ox)


def test_onnx_parity_on_real_images(exported, shared_data, tmp_path):
    root = os.path.join(shared_data, "coco_mini")
    det = os.path.join(shared_data, "coco_mini", "test_coco_det_AP_H_56.json")
    pt, ox = _infer_both(exported, root, tmp_path,
                         ["--boxes", det, "--image-info", os.path.join(root, "test_coco.json")])
    _assert_same_results(pt, ox)


def test_decoding_in_the_graph_matches_pytorch(exported):
    from engine.export.runtime import DecodedKeypointRunner
    from engine.inference.loading import load_for_inference
    from engine.tasks import keypoints as kp

    cfg, model, state = load_for_inference(exported["ckpt"], torch.device("cpu"))
    task = kp.KeypointTask(kp.build_codec(cfg), kp.KeypointMeta.from_dict(state["meta"]), flip_test=True)
    x = _crops(12, seed=2)
    mats = np.tile(np.array([[2.0, 0.0, 10.0], [0.0, 2.0, -5.0]]), (12, 1, 1))
    ref = task.predict_batch(model, {"image": x, "crop_to_image": torch.from_numpy(mats).float()})
    got = DecodedKeypointRunner(exported["decoded"]).predict(x.permute(0, 2, 3, 1).numpy(), mats)
    np.testing.assert_allclose(got[..., :2], ref["keypoints"].numpy(), rtol=0, atol=0.01)
    np.testing.assert_allclose(got[..., 2], ref["scores"].numpy(), rtol=0, atol=1e-5)


def test_eval_overrides_at_export_change_the_graph_and_the_metadata_not_the_model(exported, tmp_path):
    """The tiny checkpoint's config has the flip test on: exported with eval.flip_test=false (and a shift that
    the graph must then ignore) its decoded keypoints are the single pass of PyTorch, and the file's config
    carries the new re-crop count. Other sections are refused: the weights fix them."""
    from engine.export.runtime import DecodedKeypointRunner
    from engine.inference.loading import load_for_inference
    from engine.tasks import keypoints as kp
    from tools import export

    out = str(tmp_path / "noflip.onnx")
    export.main(["--checkpoint", exported["ckpt"], "--output", out, "--decode", "eval.flip_test=false",
                 "eval.flip_test_shift=3.0", "eval.recrop_passes=2"])
    cfg, model, state = load_for_inference(exported["ckpt"], torch.device("cpu"))
    assert cfg.eval.flip_test                        # the checkpoint itself is unchanged
    meta = kp.KeypointMeta.from_dict(state["meta"])
    x = _crops(6, seed=3)
    mats = np.tile(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), (6, 1, 1))
    batch = {"image": x, "crop_to_image": torch.from_numpy(mats).float()}
    single = kp.KeypointTask(kp.build_codec(cfg), meta, flip_test=False).predict_batch(model, batch)
    flipped = kp.KeypointTask(kp.build_codec(cfg), meta, flip_test=True).predict_batch(model, batch)
    got = DecodedKeypointRunner(out).predict(x.permute(0, 2, 3, 1).numpy(), mats)
    np.testing.assert_allclose(got[..., :2], single["keypoints"].numpy(), rtol=0, atol=0.01)
    assert np.abs(got[..., :2] - flipped["keypoints"].numpy()).max() > 0.05     # not the flip-tested pass
    import onnx

    props = {p.key: p.value for p in onnx.load(out).metadata_props}
    doc = json.loads(props["repo.inference"])
    assert doc["config"]["eval"]["flip_test"] is False and doc["config"]["eval"]["recrop_passes"] == 2
    with pytest.raises(ConfigError, match=r"model.fpn_channels=8: only eval.\* settings can change after training"):
        export.main(["--checkpoint", exported["ckpt"], "--output", str(tmp_path / "x.onnx"), "model.fpn_channels=8"])
    with pytest.raises(ConfigError, match=r"eval.recrop_passes = 9: must be 0 \(off\) to 5"):
        export.main(["--checkpoint", exported["ckpt"], "--output", str(tmp_path / "x.onnx"), "eval.recrop_passes=9"])
    assert not os.path.exists(tmp_path / "x.onnx")


def test_mismatches_and_wrong_flags_are_named_errors(exported, tmp_path):
    from engine.export.runtime import check_matches_checkpoint
    from tools import infer

    other = tiny_keypoint_checkpoint(str(tmp_path / "other.pt"), input_size=(64, 96))
    with pytest.raises(CheckpointError, match=r"input size differs.*\[32, 48\].*\[64, 96\]"):
        check_matches_checkpoint(exported["onnx"], other)
    state = torch.load(exported["ckpt"], weights_only=True)
    state["meta"]["keypoint_names"] = state["meta"]["keypoint_names"][:5]
    torch.save(state, tmp_path / "five.pt")
    with pytest.raises(CheckpointError, match=r"keypoint_names differ \(17 vs 5\)"):
        check_matches_checkpoint(exported["onnx"], str(tmp_path / "five.pt"))
    check_matches_checkpoint(exported["onnx"], exported["ckpt"])          # its own checkpoint fits
    os.makedirs(tmp_path / "in")
    cv2.imwrite(str(tmp_path / "in" / "1.png"), np.zeros((40, 30, 3), np.uint8))
    args = ["--input", str(tmp_path / "in"), "--output-dir", str(tmp_path / "o"), "--no-progress"]
    with pytest.raises(InputError, match="add --backend onnxruntime"):
        infer.main(["--model", exported["onnx"], *args])
    with pytest.raises(InputError, match="export it"):
        infer.main(["--backend", "onnxruntime", "--checkpoint", exported["ckpt"], *args])
    with pytest.raises(CheckpointError, match="input size differs"):
        infer.main(["--backend", "onnxruntime", "--model", exported["onnx"], "--checkpoint", other, *args])
    with pytest.raises(CheckpointError, match="--decode"):
        infer.main(["--backend", "onnxruntime", "--model", exported["decoded"], *args])
    shutil.copy(exported["onnx"], tmp_path / "bare.onnx")
    import onnx

    proto = onnx.load(str(tmp_path / "bare.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    with pytest.raises(CheckpointError, match="no 'repo.inference' metadata"):
        infer.main(["--backend", "onnxruntime", "--model", str(tmp_path / "bare.onnx"), *args])


@pytest.mark.parametrize("head", [{}, {"head": "multi_level", "head_strides": [4, 8, 16], "shared_head": False}],
                         ids=["single_level", "multi_level"])
def test_detector_export_matches_pytorch(tmp_path, head):
    from engine.inference.loading import load_for_inference
    from engine.inference.predictors import DetectionPredictor
    from engine.tasks import detection as det_task
    from tools import export

    torch.manual_seed(0)
    split = {"ann_file": "x", "image_root": "x"}
    cfg = config_from_dict({"task": "detection", "model": {"out_indices": [1, 2, 3], "fpn_channels": 16,
                                                           "head_channels": 16, **head},
                            "data": {"input_size": [64, 64], "train": split, "val": split},
                            "eval": {"topk": 5}})
    meta = det_task.DetectionMeta(["square", "disc"], [1, 2])
    model = det_task.build_model(cfg, 2, pretrained=False)
    save_checkpoint({"model": model.state_dict(), "config": config_to_dict(cfg), "meta": meta.to_dict()},
                    str(tmp_path / "det.pt"))
    out = export.main(["--checkpoint", str(tmp_path / "det.pt"), "--output", str(tmp_path / "det.onnx")])
    assert out["kind"] == "detection" and out["max_abs_diff"] < 1e-4
    if head:    # one output per level and key, regrouped into PyTorch's per-level lists
        assert out["outputs"][:3] == ["heatmap_s4", "heatmap_s8", "heatmap_s16"] and len(out["outputs"]) == 9
    images = [np.asarray(f) for f in render_moving_figures(num_frames=3, size=(90, 70), num_figures=1,
                                                           figure_height=50)[0]]
    preds = []
    for path in ("det.pt", "det.onnx"):
        dcfg, m, state = load_for_inference(str(tmp_path / path), torch.device("cpu"))
        task = det_task.build_task(dcfg, det_task.DetectionMeta.from_dict(state["meta"]), progress=False)
        preds.append(DetectionPredictor(m, task, dcfg.data.input_size).predict_many(images))
    for a, b in zip(*preds):
        assert len(a["boxes"]) == len(b["boxes"]) > 0
        np.testing.assert_allclose(b["boxes"], a["boxes"], rtol=0, atol=0.01)
        np.testing.assert_allclose(b["scores"], a["scores"], rtol=0, atol=1e-5)
        assert (a["labels"] == b["labels"]).all()
    # A detector given as --model runs alone through tools.infer.
    from tools import infer

    os.makedirs(tmp_path / "images")
    for i, im in enumerate(images):
        cv2.imwrite(str(tmp_path / "images" / f"{i}.png"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    out = infer.main(["--backend", "onnxruntime", "--model", str(tmp_path / "det.onnx"), "--input",
                      str(tmp_path / "images"), "--output-dir", str(tmp_path / "o"), "--det-score-threshold", "0",
                      "--no-progress"])
    assert out["images"] == 3 and os.path.isfile(out["detection_results"])


def test_api_loads_an_exported_model(exported):
    from engine.api import load

    image = render_moving_figures(num_frames=1, size=(100, 90), num_figures=1, figure_height=60, seed=8)[0][0]
    boxes = [[10, 5, 60, 80], [30, 10, 95, 85]]
    pt = load(exported["ckpt"], device="cpu")(image, boxes=boxes)
    ox = load(exported["onnx"], device="cpu")(image, boxes=boxes)
    np.testing.assert_allclose(ox[..., :2], pt[..., :2], rtol=0, atol=0.01)
    np.testing.assert_allclose(ox[..., 2], pt[..., 2], rtol=0, atol=1e-5)


def test_video_through_onnxruntime_matches_pytorch(exported, tmp_path):
    from datasets.synthetic_video import truth_detections, write_video
    from tools import infer

    frames, truth = render_moving_figures(num_frames=4, size=(120, 100), num_figures=2, figure_height=60, seed=5)
    video = write_video(str(tmp_path / "clip.mp4"), frames)
    (tmp_path / "boxes.json").write_text(json.dumps(truth_detections(truth)))
    common = ["--input", video, "--boxes", str(tmp_path / "boxes.json"), "--track", "--no-progress"]
    a = infer.main(["--checkpoint", exported["ckpt"], "--output-dir", str(tmp_path / "pt"), *common])
    b = infer.main(["--backend", "onnxruntime", "--model", exported["onnx"], "--output-dir", str(tmp_path / "ox"),
                    *common])
    pt = json.load(open(a["videos"][0]["outputs"]["json"]))
    ox = json.load(open(b["videos"][0]["outputs"]["json"]))
    assert [r["track_id"] for r in pt] == [r["track_id"] for r in ox]
    _assert_same_results(pt, ox)


@pytest.mark.parametrize("passes", [0, 2])
def test_decoded_runner_on_boxes_matches_the_pytorch_predictor(exported, passes):
    """The fast path (a --decode export on onnxruntime, crops and re-crops in numpy) gives the PyTorch
    predictor's keypoints for the same boxes, re-crop passes included."""
    from engine.export.runtime import DecodedKeypointRunner
    from engine.inference.loading import load_keypoint_predictor

    frames, _ = render_moving_figures(num_frames=1, size=(120, 100), num_figures=2, figure_height=60, seed=5)
    boxes = np.array([[10.0, 20.0, 60.0, 90.0], [50.0, 5.0, 110.0, 95.0]])
    predictor, _ = load_keypoint_predictor(exported["ckpt"], torch.device("cpu"))
    predictor.recrop_passes = passes
    ref = predictor.predict(frames[0], boxes)
    got = DecodedKeypointRunner(exported["decoded"]).predict_boxes(frames[0], boxes, recrop_passes=passes)
    # The network's float differences (onnxruntime vs PyTorch, 0.01 px) move each re-crop's box a little too.
    np.testing.assert_allclose(got[..., :2], ref[..., :2], rtol=0, atol=0.01 * (1 + 2 * passes))
    np.testing.assert_allclose(got[..., 2], ref[..., 2], rtol=0, atol=1e-3)


def test_face_bench_times_every_model_on_every_face_each_round(exported, tmp_path):
    import importlib.util

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("face_fast_path", os.path.join(repo, "bench", "face_fast_path.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from engine.export.runtime import DecodedKeypointRunner

    frames, _ = render_moving_figures(num_frames=3, size=(96, 80), num_figures=1, figure_height=60, seed=2)
    faces = []
    for i, frame in enumerate(frames):
        path = str(tmp_path / f"f{i}.png")
        cv2.imwrite(path, cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        faces.append({"index": i, "path": path, "box": [10.0 + i, 8.0, 60.0, 70.0 - i]})
    rounds_seen = []
    times, points = bench.time_ours([exported["decoded"], exported["decoded"]], faces, rounds=2, threads=1,
                                    between_rounds=rounds_seen.append)
    assert rounds_seen == [0, 1]
    assert [len(t) for t in times] == [6, 6] and all(v > 0 for t in times for v in t)
    runner = DecodedKeypointRunner(exported["decoded"], threads=1)
    for face, got in zip(faces, points[1]):
        image = cv2.cvtColor(cv2.imread(face["path"]), cv2.COLOR_BGR2RGB)
        expected = runner.predict_boxes(image, [face["box"]])[0, :, :2]
        assert np.allclose(got, expected, atol=1e-4)
    assert points[0].shape == (3, 17, 2)
    # In blocks of 2 faces (turns rotating between the models), every face is still timed once per round and
    # its points stay in the faces' order.
    times, points = bench.time_ours([exported["decoded"], exported["decoded"]], faces, rounds=1, threads=1, block=2)
    assert [len(t) for t in times] == [3, 3]
    for face, got in zip(faces, points[0]):
        image = cv2.cvtColor(cv2.imread(face["path"]), cv2.COLOR_BGR2RGB)
        assert np.allclose(got, runner.predict_boxes(image, [face["box"]])[0, :, :2], atol=1e-4)
    with pytest.raises(SystemExit):         # refused before any model or face is loaded
        bench.main(["--block", "0"])


def test_a_fixed_batch_graph_gives_the_dynamic_graphs_answers_for_any_number_of_crops(exported, tmp_path):
    """``--batch N`` fixes the graph's batch dimension (no shape arithmetic left for onnxruntime); the runners
    split any number of crops into calls of N, padding the last, and return what the dynamic graph returns."""
    from engine.export.runtime import DecodedKeypointRunner, OnnxModule
    from tools import export

    one = export.main(["--checkpoint", exported["ckpt"], "--output", str(tmp_path / "one.onnx"), "--decode",
                       "--batch", "1"])
    two = export.main(["--checkpoint", exported["ckpt"], "--output", str(tmp_path / "two.onnx"), "--batch", "2"])
    assert one["max_abs_diff"] < 1e-2 and two["max_abs_diff"] < 1e-4
    fixed_one, dynamic_decoded = DecodedKeypointRunner(one["output"]), DecodedKeypointRunner(exported["decoded"])
    assert fixed_one.batch == 1 and dynamic_decoded.batch is None and fixed_one.doc["batch"] == 1
    assert ort.InferenceSession(one["output"]).get_inputs()[0].shape == [1, 3, 48, 32]
    for n in (1, 3):
        crops = _crops(n, seed=4).permute(0, 2, 3, 1).numpy()
        mats = np.tile(np.array([[1.5, 0.0, 3.0], [0.0, 1.5, 7.0]]), (n, 1, 1))
        np.testing.assert_allclose(fixed_one.predict(crops, mats), dynamic_decoded.predict(crops, mats), atol=1e-3)
    fixed_two, dynamic = OnnxModule(two["output"]), OnnxModule(exported["onnx"])
    for n in (0, 1, 2, 5):                  # none, fewer than the batch, exactly it, and 2 + 2 + 1 (padded)
        x = _crops(max(n, 1), seed=5)[:n]
        got, ref = fixed_two(x)[-1], dynamic(x)[-1]
        assert got.shape == ref.shape == (n, 17, 12, 8)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(InputError, match=r"--batch 0: a fixed batch must be 1 or more"):
        export.main(["--checkpoint", exported["ckpt"], "--output", str(tmp_path / "zero.onnx"), "--batch", "0"])
    assert not os.path.exists(tmp_path / "zero.onnx")


def test_face_bench_picture_keeps_crowded_labels_apart_and_the_budget_in_view(tmp_path):
    """Five models a few hundredths of a point apart (a real run's values) and dlib: every label inside the
    axes, no two labels on each other, and the 5 ms line inside the x range even when every model is faster."""
    import importlib.util

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("face_fast_path", os.path.join(repo, "bench", "face_fast_path.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = [{"label": "cascade, fixed batch", "ms/face": 1.66, "NME": 0.0344},
            {"label": "cascade, dynamic batch", "ms/face": 1.85, "NME": 0.0344},
            {"label": "cascade, quarter first pass", "ms/face": 1.72, "NME": 0.0343},
            {"label": "fast, own re-crop", "ms/face": 2.07, "NME": 0.0343},
            {"label": "earlier", "ms/face": 1.9, "NME": 0.0345, "before": True},
            {"label": "dlib", "ms/face": 0.71, "NME": 0.0323}]
    layout = bench.plot(rows, str(tmp_path / "nme_vs_ms.png"))
    assert os.path.getsize(tmp_path / "nme_vs_ms.png") > 10_000
    frame, labels = layout["frame"], layout["labels"]
    assert len(labels) == len(rows)
    for i, a in enumerate(labels):
        assert frame.contains(a.x0, a.y0) and frame.contains(a.x1, a.y1)
        assert not any(a.overlaps(b) for b in labels[i + 1:])
    assert layout["xlim"][0] < 0.71 and layout["xlim"][1] > 5.0


def test_int8_quantisation_keeps_the_metadata_and_stays_near_the_float_graph(exported, tmp_path):
    """bench/quantize_int8.py: the convolutions in int8 (QDQ), the decoding in float; the file keeps the
    original's metadata, so the repository's runners load it, and its points stay near the fp32 graph's."""
    import importlib.util

    import onnx

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("quantize_int8", os.path.join(repo, "bench", "quantize_int8.py"))
    quant = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quant)
    from engine.export.runtime import DecodedKeypointRunner

    out = str(tmp_path / "int8.onnx")
    quant.quantize(exported["decoded"], out, _crops(16, seed=6).numpy())
    ops = {n.op_type for n in onnx.load(out).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "ArgMax"} <= ops
    fp32, int8 = DecodedKeypointRunner(exported["decoded"]), DecodedKeypointRunner(out)
    assert int8.doc == fp32.doc
    crops = _crops(4, seed=7).permute(0, 2, 3, 1).numpy()
    mats = np.tile(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), (4, 1, 1))
    got, ref = int8.predict(crops, mats), fp32.predict(crops, mats)
    assert got.shape == ref.shape and np.isfinite(got).all()
    # An untrained model's flat heatmaps put some peaks anywhere; most points must still agree.
    assert np.median(np.abs(got[..., :2] - ref[..., :2])) < 2.0


def test_an_interrupted_export_leaves_the_previous_file_and_no_partial_one(exported, tmp_path, monkeypatch):
    import onnx

    from tools import export

    out = tmp_path / "model.onnx"
    shutil.copy(exported["decoded"], out)
    before = out.read_bytes()

    def interrupt(proto):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx.checker, "check_model", interrupt)
    with pytest.raises(KeyboardInterrupt):
        export.main(["--checkpoint", exported["ckpt"], "--output", str(out), "--decode", "--batch", "1"])
    assert out.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["model.onnx"]
