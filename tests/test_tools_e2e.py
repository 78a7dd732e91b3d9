"""The CLIs end to end on a tiny synthetic set, called in-process through their ``main(argv)``."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from engine.checkpoint import load_checkpoint
from models.errors import ConfigError, InputError

pytestmark = pytest.mark.slow

TINY_MODEL = ["model.out_indices=[1,2,3]", "model.fpn_channels=16", "model.head_channels=16", "model.depth=2",
              "model.num_stacks=2", "data.input_size=[32,48]", "train.batch_size=8", "data.val_batch_size=8",
              "train.num_workers=0", "train.log_interval=2", "train.warmup_steps=2"]


def write_config(tmp_path, tiny, extra: str = "") -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(f"""
task: keypoints
name: tiny
output_dir: {tmp_path}/runs
data:
  train: {{ann_file: {tiny['train']}, image_root: {tiny['images']}}}
  val: {{ann_file: {tiny['val']}, image_root: {tiny['images']}}}
  flip_index: [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
  upper_body_ids: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
{extra}""")
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_synthetic):
    """One short training run shared by the tests that only read its outputs."""
    from tools import train

    tmp = tmp_path_factory.mktemp("e2e")
    cfg = write_config(tmp, tiny_synthetic)
    run_dir = str(tmp / "run")
    summary = train.main(["--config", cfg, "--run-dir", run_dir, "--no-progress", "train.epochs=2", *TINY_MODEL])
    return {"cfg": cfg, "run_dir": run_dir, "summary": summary, "tmp": tmp}


def test_train_writes_a_complete_run_folder(trained):
    run = trained["run_dir"]
    for name in ("config.yaml", "provenance.json", "last.pt", "best.pt", "steps.csv", "epochs.csv",
                 "training_curves.png", "metrics.json"):
        assert os.path.isfile(os.path.join(run, name)), name
    state = load_checkpoint(os.path.join(run, "last.pt"))
    assert state["epoch"] == 2 and state["format_version"] == 2
    assert state["config"]["model"]["fpn_channels"] == 16
    assert state["meta"]["keypoint_names"][0] == "nose" and len(state["meta"]["flip_index"]) == 17
    prov = state["provenance"]
    assert prov["seed"] == 0 and "torch" in prov["packages"] and len(prov["annotations"]) == 2
    metrics = json.load(open(os.path.join(run, "metrics.json")))
    assert metrics["main_metric"] == "AP" and "AP" in metrics["last"] and "PCK@0.1" in metrics["last"]
    assert os.path.isdir(os.path.join(run, "tensorboard"))


def test_eval_reports_coco_pck_nme_and_flip_gain(trained, tmp_path):
    from tools import eval as eval_tool

    out = str(tmp_path / "eval")
    report = eval_tool.main(["--config", trained["cfg"], "--checkpoint", os.path.join(trained["run_dir"], "best.pt"),
                             "--output-dir", out, "--compare-flip", "--no-progress", *TINY_MODEL])
    m = report["metrics"]
    for key in ("AP", "AP50", "AR", "PCK@0.05", "PCK@0.1", "PCK@0.2", "NME"):
        assert key in m
    assert report["boxes"] == "ground truth" and "flip_gain" in report
    results = json.load(open(os.path.join(out, "keypoint_results.json")))
    assert results and len(results[0]["keypoints"]) == 51 and {"image_id", "score", "category_id"} <= set(results[0])


def test_eval_refuses_a_checkpoint_of_another_model(trained, tmp_path):
    from tools import eval as eval_tool

    with pytest.raises(ValueError, match="differ in shape"):
        eval_tool.main(["--config", trained["cfg"], "--checkpoint", os.path.join(trained["run_dir"], "best.pt"),
                        "--output-dir", str(tmp_path), "--no-progress", *TINY_MODEL, "model.head_channels=24"])


def test_eval_weights_ema_loads_the_average_and_refuses_a_run_without_one(trained, tmp_path):
    import torch

    from tools import eval as eval_tool

    last = os.path.join(trained["run_dir"], "last.pt")
    common = ["--config", trained["cfg"], "--no-progress", *TINY_MODEL]
    with pytest.raises(ValueError, match="carries no EMA weights"):
        eval_tool.main([*common, "--checkpoint", last, "--weights", "ema", "--output-dir", str(tmp_path / "x")])
    # a checkpoint whose EMA holds the trained weights and whose 'model' holds noise: --weights ema must score
    # exactly as the original's trained weights do
    state = torch.load(last, weights_only=True)
    state["ema"] = {"model": state["model"], "updates": torch.tensor(1), "decay": 0.999}
    state["model"] = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state["model"].items()}
    swapped = str(tmp_path / "swapped.pt")
    torch.save(state, swapped)
    reference = eval_tool.main([*common, "--checkpoint", last, "--output-dir", str(tmp_path / "ref")])
    ema = eval_tool.main([*common, "--checkpoint", swapped, "--weights", "ema", "--output-dir", str(tmp_path / "e")])
    noise = eval_tool.main([*common, "--checkpoint", swapped, "--output-dir", str(tmp_path / "n")])
    assert ema["weights"] == "ema" and ema["metrics"] == reference["metrics"]
    assert noise["metrics"]["NME"] != reference["metrics"]["NME"]


def test_export_weights_ema_refuses_a_run_without_one(trained, tmp_path):
    pytest.importorskip("onnx")
    from tools import export

    with pytest.raises(ValueError, match="carries no EMA weights"):
        export.main(["--checkpoint", os.path.join(trained["run_dir"], "last.pt"), "--output",
                     str(tmp_path / "m.onnx"), "--weights", "ema"])
    assert not os.path.exists(tmp_path / "m.onnx")


def test_infer_whole_images_and_boxes(trained, tmp_path, tiny_synthetic):
    from tools import infer

    ckpt = os.path.join(trained["run_dir"], "best.pt")
    val_dir = os.path.join(tiny_synthetic["images"], "val")
    out = infer.main(["--checkpoint", ckpt, "--input", val_dir, "--output-dir", str(tmp_path / "a"),
                      "--max-images", "3", "--no-progress"])
    assert out["images"] == 3 and out["instances"] == 3 and len(os.listdir(out["vis_dir"])) == 3

    gt = json.load(open(tiny_synthetic["val"]))
    dets = [{"image_id": a["image_id"], "bbox": a["bbox"], "score": 0.9, "category_id": 1} for a in gt["annotations"]]
    boxes = tmp_path / "dets.json"
    boxes.write_text(json.dumps(dets))
    out = infer.main(["--checkpoint", ckpt, "--input", os.path.join(val_dir, "*.jpg"), "--boxes", str(boxes),
                      "--image-info", tiny_synthetic["val"], "--output-dir", str(tmp_path / "b"), "--no-progress"])
    assert out["instances"] == len(dets)
    results = json.load(open(out["results"]))
    assert len(results) == len(dets) and all(r["score"] <= 0.9 + 1e-9 for r in results)


def test_infer_says_which_detection_ids_are_unknown(trained, tmp_path, tiny_synthetic):
    from tools import infer

    boxes = tmp_path / "dets.json"
    boxes.write_text(json.dumps([{"image_id": 987654, "bbox": [0, 0, 10, 10], "score": 1.0}]))
    with pytest.raises(ValueError, match="987654"):
        infer.main(["--checkpoint", os.path.join(trained["run_dir"], "best.pt"), "--input",
                    os.path.join(tiny_synthetic["images"], "val"), "--boxes", str(boxes), "--image-info",
                    tiny_synthetic["val"], "--output-dir", str(tmp_path), "--no-progress"])
    with pytest.raises(InputError, match="neither an image"):
        infer.main(["--checkpoint", os.path.join(trained["run_dir"], "best.pt"), "--input", str(tmp_path / "nope")])


def test_browse_dataset_writes_pictures(trained, tmp_path):
    from tools import browse_dataset

    written = browse_dataset.main(["--config", trained["cfg"], "--num", "3", "--output-dir", str(tmp_path),
                                   *TINY_MODEL])
    assert len(written) == 3 and all(os.path.getsize(p) > 0 for p in written)


def test_resume_continues_and_refuses_another_model(trained, tmp_path):
    from tools import train

    run = trained["run_dir"]
    summary = train.main(["--config", trained["cfg"], "--run-dir", str(tmp_path / "resumed"), "--no-progress",
                          "--resume", os.path.join(run, "last.pt"), "train.epochs=3", *TINY_MODEL])
    assert summary["epochs"] == 3
    assert load_checkpoint(str(tmp_path / "resumed" / "last.pt"))["epoch"] == 3
    with pytest.raises(ValueError, match=r"model\.fpn_channels: checkpoint 16 vs now 24"):
        train.main(["--config", trained["cfg"], "--run-dir", str(tmp_path / "bad"), "--no-progress",
                    "--resume", os.path.join(run, "last.pt"), "train.epochs=3", *TINY_MODEL, "model.fpn_channels=24"])


def test_distillation_trains_a_student_on_a_teachers_heatmaps(trained, tmp_path):
    import csv

    from tools import train

    teacher = os.path.join(trained["run_dir"], "last.pt")
    run = tmp_path / "student"
    # The student at another input size than the teacher's 32 x 48: the crops go up to the teacher's size.
    summary = train.main(["--config", trained["cfg"], "--run-dir", str(run), "--no-progress", "train.epochs=1",
                          *TINY_MODEL, "data.input_size=[48,64]", "model.num_stacks=1",
                          f"loss.distill_teacher={teacher}", "loss.distill_weight=0.5"])
    assert summary["epochs"] == 1
    rows = list(csv.DictReader(open(run / "steps.csv")))
    assert rows and all(float(r["loss_teacher"]) > 0 and float(r["loss_labels"]) > 0 for r in rows)
    for r in rows:      # the logged loss is the documented mix of the two
        mixed = 0.5 * float(r["loss_labels"]) + 0.5 * float(r["loss_teacher"])
        assert float(r["loss"]) == pytest.approx(mixed, rel=1e-3)
    student = load_checkpoint(str(run / "last.pt"))
    assert not any(k.startswith("teacher") for k in student["model"])     # the teacher is not saved with it
    with pytest.raises(ConfigError, match=r"loss\.distill_weight"):
        train.main(["--config", trained["cfg"], "--run-dir", str(tmp_path / "bad"), *TINY_MODEL,
                    f"loss.distill_teacher={teacher}", "loss.distill_weight=1.5"])
    with pytest.raises(ValueError, match=r"checkpoint not found: .*nope\.pt"):
        train.main(["--config", trained["cfg"], "--run-dir", str(tmp_path / "bad2"), *TINY_MODEL,
                    f"loss.distill_teacher={tmp_path / 'nope.pt'}"])


def test_bad_inputs_stop_before_training(tmp_path, tiny_synthetic):
    from tools import train

    cfg = write_config(tmp_path, tiny_synthetic)
    with pytest.raises(ConfigError, match="unknown key 'train.epoch'"):
        train.main(["--config", cfg, "train.epoch=3"])
    empty = tmp_path / "empty.json"
    gt = json.load(open(tiny_synthetic["train"]))
    empty.write_text(json.dumps({**gt, "annotations": []}))
    with pytest.raises(ValueError, match="no usable instances"):
        train.main(["--config", cfg, "--run-dir", str(tmp_path / "r"), f"data.train.ann_file={empty}", *TINY_MODEL])
    with pytest.raises(ValueError, match="not its own inverse"):
        train.main(["--config", cfg, "--run-dir", str(tmp_path / "r"), *TINY_MODEL,
                    "data.flip_index=[1,2,0,3,4,5,6,7,8,9,10,11,12,13,14,15,16]"])
    with pytest.raises(ValueError, match="OKS sigmas are for 17"):
        train.main(["--config", cfg, "--run-dir", str(tmp_path / "r"), *TINY_MODEL, "data.flip_index=[0]",
                    f"data.train.ann_file={_one_keypoint_json(tmp_path, tiny_synthetic)}",
                    f"data.val.ann_file={_one_keypoint_json(tmp_path, tiny_synthetic)}"])


def _one_keypoint_json(tmp_path, tiny) -> str:
    gt = json.load(open(tiny["train"]))
    gt["categories"][0]["keypoints"] = ["nose"]
    gt["categories"][0]["skeleton"] = []
    for a in gt["annotations"]:
        a["keypoints"] = a["keypoints"][:3]
        a["num_keypoints"] = int(a["keypoints"][2] > 0)
    path = tmp_path / "one.json"
    path.write_text(json.dumps(gt))
    return str(path)


def test_demo_runs_end_to_end(tmp_path):
    from tools import demo

    root = tmp_path / "syn"
    summary = demo.main(["--output-dir", str(tmp_path / "demo"), "--num-pictures", "2", "--no-progress",
                         f"data.synthetic_root={root}", "data.synthetic.num_train_images=6",
                         "data.synthetic.num_val_images=3", f"data.train.ann_file={root}/annotations/train.json",
                         f"data.train.image_root={root}/images", f"data.val.ann_file={root}/annotations/val.json",
                         f"data.val.image_root={root}/images", "train.epochs=1", *TINY_MODEL])
    for name in ("predictions.jpg", "training_curves.png", "demo_metrics.json"):
        assert os.path.isfile(tmp_path / "demo" / name), name
    assert "AP" in summary["metrics"] and summary["seconds"]["train"] > 0
    assert summary["video"]["frames"] == 48 and os.path.isfile(summary["video"]["video"])
    best = load_checkpoint(str(tmp_path / "demo" / "train" / "best.pt"))
    assert torch.is_tensor(best["model"]["head.heatmaps.0.weight"])


def test_show_heatmaps_draws_rows(trained, tmp_path):
    from tools import show_heatmaps

    out = show_heatmaps.main(["--config", trained["cfg"], "--checkpoint", os.path.join(trained["run_dir"], "best.pt"),
                              "--num", "2", "--output", str(tmp_path / "h.png"), *TINY_MODEL])
    import cv2

    img = cv2.imread(out)
    assert img is not None and img.shape[0] > 2 * 48 * 3     # two rows of upscaled 48-pixel-high crops


def test_what_training_changes(trained):
    from tools.faq import what_training_changes

    report = what_training_changes.main(["--config", trained["cfg"], "--checkpoint",
                                         os.path.join(trained["run_dir"], "best.pt"), *TINY_MODEL])
    assert report["eval_forward_changes"] == []
    # A train-mode forward touches only BatchNorm buffers; an optimiser step touches only parameters.
    assert set(report["train_forward_changes"]) == {"buffers (num_batches_tracked)", "buffers (running_mean)",
                                                    "buffers (running_var)"}
    assert all(k.startswith("parameters") for k in report["optimizer_step_changes"])
    assert report["train_vs_eval_output_max_abs_diff"] > 0
    # Training changed weights and BN statistics, never the input normalisation constants.
    assert "normalizer.scale" in report["checkpoint_unchanged"]
    assert "normalizer.shift" in report["checkpoint_unchanged"]


def test_eval_face_report_on_ground_truth_and_on_a_boxes_file(trained, tmp_path):
    """``eval.face`` adds NME/FR/AUC/regions and ced.png; the same boxes given as a detection file score the same."""
    from models.bbox import xyxy_to_coco_xywh
    from tools import eval as eval_tool

    face = ["eval.face.normalize=box", "eval.face.regions={head:[0,1,2,3,4],legs:[11,12,13,14,15,16]}"]
    ckpt = os.path.join(trained["run_dir"], "best.pt")
    on_gt = eval_tool.main(["--config", trained["cfg"], "--checkpoint", ckpt, "--output-dir", str(tmp_path / "gt"),
                            "--no-progress", *TINY_MODEL, *face])
    m = on_gt["metrics"]
    for key in ("NME", "FR@0.08", "FR@0.1", "AUC@0.08", "AUC@0.1", "NME/head", "NME/legs", "ms/face"):
        assert key in m, key
    assert 0 <= m["FR@0.1"] <= m["FR@0.08"] <= 1 and 0 <= m["AUC@0.08"] <= m["AUC@0.1"] <= 1
    assert on_gt["face_report"]["normalize"] == "box" and os.path.isfile(tmp_path / "gt" / "ced.png")
    saved = json.load(open(tmp_path / "gt" / "metrics.json"))
    assert saved["boxes"] == "ground truth" and saved["metrics"]["NME"] == m["NME"]

    from engine.tasks.registry import load_config

    cfg = load_config(trained["cfg"])
    anns = json.load(open(cfg.data.val.ann_file))["annotations"]
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
             "bbox": xyxy_to_coco_xywh(np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2] - 1,
                                                  a["bbox"][1] + a["bbox"][3] - 1]]))[0].tolist()}
            for a in anns if a.get("num_keypoints", 1) > 0 and not a.get("iscrowd", 0)]
    boxes_file = tmp_path / "boxes.json"
    boxes_file.write_text(json.dumps(dets))
    on_file = eval_tool.main(["--config", trained["cfg"], "--checkpoint", ckpt, "--output-dir", str(tmp_path / "det"),
                              "--boxes", str(boxes_file), "--no-progress", *TINY_MODEL, *face])
    assert on_file["boxes"] != "ground truth" and os.path.isfile(tmp_path / "det" / "ced.png")
    d = on_file["metrics"]
    assert d["faces"] == m["faces"] and d.get("faces_missed", 0) == 0
    for key in ("NME", "NME/head", "AUC@0.1"):
        assert d[key] == pytest.approx(m[key], rel=1e-3, abs=1e-5), key


def test_stride_2_heatmaps_adaptive_wing_and_occlusion_train_evaluate_and_load(tmp_path, tiny_synthetic):
    """The face-recipe levers end to end: stride-2 heatmaps (one more FPN level), the Adaptive Wing loss,
    occlusion patches and blur; the checkpoint carries them, so evaluation and inference rebuild the same."""
    from engine.inference.loading import load_for_inference
    from engine.tasks.keypoints import build_codec
    from tools import eval as eval_tool
    from tools import train

    levers = ["model.heatmap_stride=2", "model.out_indices=[0,1,2,3]", "loss.heatmap=awing",
              "data.augment.occlusion_prob=0.5", "data.augment.blur_prob=0.5"]
    cfg = write_config(tmp_path, tiny_synthetic)
    run_dir = str(tmp_path / "run")
    summary = train.main(["--config", cfg, "--run-dir", run_dir, "--no-progress", "train.epochs=1", *TINY_MODEL,
                          *levers])
    assert summary["steps"] == 6 and np.isfinite(summary["last"]["NME"])
    loaded_cfg, model, _ = load_for_inference(os.path.join(run_dir, "last.pt"), torch.device("cpu"))
    assert model.stride == 2 and build_codec(loaded_cfg).heatmap_size == (16, 24)    # input 32 x 48
    assert loaded_cfg.loss.heatmap == "awing"
    report = eval_tool.main(["--config", cfg, "--checkpoint", os.path.join(run_dir, "last.pt"), "--output-dir",
                             str(tmp_path / "eval"), "--no-progress", *TINY_MODEL, *levers])
    assert 0 <= report["metrics"]["AP"] <= 1
    with pytest.raises(ConfigError, match="loss.heatmap"):
        train.main(["--config", cfg, "--run-dir", str(tmp_path / "bad"), "--no-progress", "train.epochs=1",
                    *TINY_MODEL, "loss.heatmap=l1"])
