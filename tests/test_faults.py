"""What a user sees when something is wrong: one table row per fault, each on a tiny copy of a real set.

Each row copies a few images and trimmed annotations of ``../shared/data`` (openfield keypoints, fruits_nuts
boxes) into ``tmp_path``, makes one edit, runs a tool in-process through ``run_cli`` (the tools' one entry
point) and checks the exit code, that the message names the file / annotation / field / key / flag, and that
no file that existed before was changed (a failed run overwrites nothing).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch

from models.errors import CheckpointError, DataError
from tools._common import run_cli

KPT_TINY = ["model.out_indices=[1,2,3]", "model.fpn_channels=16", "model.head_channels=16", "model.depth=2",
            "model.num_stacks=1", "data.input_size=[32,32]", "train.batch_size=2", "data.val_batch_size=2",
            "train.num_workers=0", "train.num_threads=1", "train.epochs=1", "train.warmup_steps=1",
            "train.log_interval=1", "eval.flip_test=false"]
DET_TINY = ["model.out_indices=[1,2,3]", "model.fpn_channels=16", "model.head_channels=16", "data.input_size=[64,64]",
            "train.batch_size=2", "data.val_batch_size=2", "train.num_workers=0", "train.num_threads=1",
            "train.epochs=1", "train.warmup_steps=1", "train.log_interval=1"]


# ---------------------------------------------------------------------------------------------- tiny real sets
def _copy_subset(src_json: str, src_images: str, dst_json, dst_images, n_images: int, skip: int = 0) -> dict:
    data = json.load(open(src_json))
    images = data["images"][skip:skip + n_images]
    ids = {im["id"] for im in images}
    out = {"images": images, "annotations": [a for a in data["annotations"] if a["image_id"] in ids],
           "categories": data["categories"]}
    os.makedirs(dst_images, exist_ok=True)
    for im in images:
        shutil.copy(os.path.join(src_images, im["file_name"]), os.path.join(dst_images, im["file_name"]))
    with open(dst_json, "w") as f:
        json.dump(out, f)
    return out


@pytest.fixture
def kpt_set(tmp_path, shared_data) -> dict:
    """4 train + 2 val openfield images (640 x 480, 4 keypoints, one mouse each) and a tiny config."""
    src = os.path.join(shared_data, "openfield")
    images = tmp_path / "images"
    _copy_subset(os.path.join(src, "train.json"), os.path.join(src, "images"), tmp_path / "train.json", images, 4)
    _copy_subset(os.path.join(src, "val.json"), os.path.join(src, "images"), tmp_path / "val.json", images, 2)
    cfg = tmp_path / "kpt.yaml"
    cfg.write_text(f"""task: keypoints
name: faults
output_dir: {tmp_path}/runs
data:
  train: {{ann_file: {tmp_path}/train.json, image_root: {images}}}
  val: {{ann_file: {tmp_path}/val.json, image_root: {images}}}
  flip_index: [0, 2, 1, 3]
  oks_sigmas: [0.08, 0.08, 0.08, 0.08]
""")
    return {"root": tmp_path, "cfg": str(cfg), "train": str(tmp_path / "train.json"),
            "val": str(tmp_path / "val.json"), "images": str(images), "run": str(tmp_path / "run")}


@pytest.fixture
def det_set(tmp_path, shared_data) -> dict:
    """4 train + 2 val fruits_nuts images (boxes of 3 classes) and a tiny config."""
    src = os.path.join(shared_data, "fruits_nuts")
    images = tmp_path / "images"
    _copy_subset(os.path.join(src, "trainval.json"), os.path.join(src, "images"), tmp_path / "train.json", images, 4)
    _copy_subset(os.path.join(src, "trainval.json"), os.path.join(src, "images"), tmp_path / "val.json", images, 2,
                 skip=4)
    cfg = tmp_path / "det.yaml"
    cfg.write_text(f"""task: detection
name: faults-det
output_dir: {tmp_path}/runs
data:
  train: {{ann_file: {tmp_path}/train.json, image_root: {images}}}
  val: {{ann_file: {tmp_path}/val.json, image_root: {images}}}
""")
    return {"root": tmp_path, "cfg": str(cfg), "train": str(tmp_path / "train.json"),
            "val": str(tmp_path / "val.json"), "images": str(images), "run": str(tmp_path / "run")}


def edit_json(path: str, fn) -> None:
    data = json.load(open(path))
    fn(data)
    with open(path, "w") as f:
        json.dump(data, f)     # NaN and Infinity are written as the json module's NaN / Infinity tokens


def snapshot(root) -> dict[str, str]:
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            out[path] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def run_tool(main, argv, capsys) -> tuple[int, str]:
    """Run a tool as its ``__main__`` does; (exit code, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv)
    return exc.value.code, capsys.readouterr().err


def _first(data, key="annotations"):
    return data[key][0]


def _set_kpt(i, value):
    def edit(d):
        _first(d)["keypoints"][i] = value
    return edit


def _set(field, value, index=0, key="annotations"):
    def edit(d):
        d[key][index][field] = value
    return edit


def _set_bbox(i, value):
    def edit(d):
        _first(d)["bbox"][i] = value
    return edit


def _dup_ann_id(d):
    d["annotations"][1]["id"] = d["annotations"][0]["id"]


def _dup_image_id(d):
    d["images"][1]["id"] = d["images"][0]["id"]


def _all_unknown_category(d):
    for a in d["annotations"]:
        a["category_id"] = 99


def _truncate_first_image(s):
    path = os.path.join(s["images"], json.load(open(s["train"]))["images"][0]["file_name"])
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: int(len(raw) * 0.4)])     # the last 60 % of the rows are gone


def _garble_train_images(s):
    for im in json.load(open(s["train"]))["images"]:
        open(os.path.join(s["images"], im["file_name"]), "wb").write(b"not an image")


def _remove_first_image(s):
    os.remove(os.path.join(s["images"], json.load(open(s["train"]))["images"][0]["file_name"]))


def _fake_finished_run(s):
    os.makedirs(s["run"])
    for name in ("last.pt", "best.pt", "epochs.csv", "metrics.json"):
        open(os.path.join(s["run"], name), "w").write(f"the finished run's {name}")


# Each row: id, set, which json to edit (or a function of the set), the edit, extra arguments, exit code,
# what stderr must name ({train}/{val}/{ann0}/{run} are filled in).
TRAIN_ROWS = [
    ("nan-keypoint-val", "kpt", "val", _set_kpt(0, math.nan), [], 2, ["{val}", "annotation {ann0}", "'keypoints'",
                                                                       "nan"]),
    ("nan-area-val", "kpt", "val", _set("area", math.nan), [], 2, ["{val}", "annotation {ann0}", "'area'"]),
    ("nan-bbox-train", "kpt", "train", _set_bbox(1, math.nan), [], 2, ["{train}", "annotation {ann0}", "'bbox'"]),
    ("inf-bbox-train", "kpt", "train", _set_bbox(2, math.inf), [], 2, ["{train}", "annotation {ann0}", "'bbox'",
                                                                       "inf"]),
    ("bbox-as-strings", "kpt", "train", _set("bbox", ["1", "2", "30", "40"]), [], 2,
     ["{train}", "annotation {ann0}", "'bbox'", "str, not a number"]),
    ("string-annotation-id", "kpt", "train", _set("id", "7"), [], 2, ["{train}", "field 'id' is '7', not an integer"]),
    ("string-image-id", "kpt", "train", _set("id", "1", key="images"), [], 2,
     ["{train}", "image record #0 has id '1', not an integer"]),
    ("duplicate-annotation-ids-val", "kpt", "val", _dup_ann_id, [], 2,
     ["{val}", "annotation ids [{ann0}] appear more than once"]),
    ("duplicate-image-ids", "kpt", "train", _dup_image_id, [], 2, ["{train}", "image ids [1] appear more than once"]),
    ("visibility-3", "kpt", "train", _set_kpt(2, 3), [], 2, ["{train}", "annotation {ann0}", "visibility 3"]),
    ("unknown-category-all", "kpt", "train", _all_unknown_category, [], 2,
     ["{train}", "no usable instances", "category not in categories 4"]),
    ("keypoints-wrong-length", "kpt", "train", _set("keypoints", [1.0, 2.0, 2]), [], 2,
     ["{train}", "annotation {ann0}", "3 keypoint values, expected 3 x 4"]),
    ("negative-area", "kpt", "val", _set("area", -5), [], 2, ["{val}", "'area' is -5"]),
    ("crowd-flag-string", "kpt", "train", _set("iscrowd", "no"), [], 2, ["{train}", "'iscrowd' is 'no'"]),
    ("truncated-jpeg", "kpt", _truncate_first_image, None, [], 2, ["img0000.jpg (truncated JPEG", "on_bad_image=skip"]),
    ("all-images-unreadable-skip", "kpt", _garble_train_images, None, ["data.on_bad_image=skip"], 2,
     ["{train}", "no usable instances", "image missing or unreadable 4"]),
    ("missing-image", "kpt", _remove_first_image, None, [], 2, ["img0000.jpg (missing)", "on_bad_image=skip"]),
    ("file-name-escapes-root", "kpt", "train", _set("file_name", "../train.json", key="images"), [], 2,
     ["{train}", "'../train.json' lies outside the image root"]),
    ("annotation-file-not-json", "kpt", lambda s: open(s["val"], "w").write("{not json"), None, [], 2,
     ["{val} is not valid JSON"]),
    ("annotation-file-missing", "kpt", lambda s: os.remove(s["val"]), None, [], 2,
     ["annotation file not found: {val}"]),
    ("epochs-negative", "kpt", None, None, ["train.epochs=-1"], 2, ["train.epochs = -1: must be >= 1"]),
    ("input-size-zero", "kpt", None, None, ["data.input_size=[0,32]"], 2,
     ["data.input_size = [0, 32]", ">= 16", "model.depth 2"]),
    ("input-size-below-head", "kpt", None, None, ["data.input_size=[8,32]"], 2, ["data.input_size = [8, 32]"]),
    ("train-values-out-of-range", "kpt", None, None,
     ["train.batch_size=0", "train.lr=0", "train.num_workers=-1", "eval.rescore_threshold=1.5",
      "eval.recrop_passes=9", "model.heatmap_stride=8", "model.drop_path_rate=1.0"], 2,
     ["train.batch_size = 0: must be >= 1", "train.lr = 0.0: must be a finite number > 0",
      "train.num_workers = -1: must be >= 0", "eval.rescore_threshold = 1.5: must be in [0, 1]",
      "eval.recrop_passes = 9: must be 0 (off) to 5", "model.heatmap_stride = 8: must be 4, or 2",
      "model.drop_path_rate = 1.0: must be in [0, 1)"]),
    ("unknown-precision-before-the-run-folder", "kpt", None, None, ["train.precision=fp8", "train.on_nonfinite=ignore",
                                                                    "train.init_weights_from=best"],
     2, ["train.precision = 'fp8': must be one of fp32, bf16, fp16, auto",
         "train.on_nonfinite = 'ignore': must be 'stop' or 'skip'",
         "train.init_weights_from = 'best': must be one of model, ema"]),
    ("target-sigmas-for-another-keypoint-count", "kpt", None, None, ["data.target_sigmas=[1.5,1.0]"], 2,
     ["data.target_sigmas has 2 values for 4 keypoints; give one per keypoint"]),
    ("target-sigmas-differ-between-flip-partners", "kpt", None, None, ["data.target_sigmas=[1.5,1.0,2.0,1.0]"], 2,
     ["data.target_sigmas differ between flip partners 1 and 2 (1.0 vs 2.0)"]),
    ("continuation-without-its-weights", "kpt", None, None, ["train.init_weights_from=ema"], 2,
     ["train.init_weights_from = 'ema' but no weights file: this config continues another run; give its "
      "checkpoint with --weights FILE"]),
    ("bad-annotation-policy", "kpt", None, None, ["data.on_bad_annotation=ignore"], 2,
     ["data.on_bad_annotation = 'ignore'"]),
    ("run-folder-holds-a-run", "kpt", _fake_finished_run, None, [], 2,
     ["run folder {run} already holds a run (last.pt, best.pt, metrics.json, epochs.csv)",
      "--resume {run}/last.pt", "--overwrite"]),
    # detection (fruits_nuts)
    ("det-nan-bbox", "det", "train", _set_bbox(0, math.nan), [], 2, ["{train}", "annotation {ann0}", "'bbox'"]),
    ("det-duplicate-annotation-ids", "det", "val", _dup_ann_id, [], 2,
     ["{val}", "annotation ids [{ann0}] appear more than once"]),
    ("det-unknown-category-all", "det", "train", _all_unknown_category, [], 2,
     ["{train}", "none of the", "category not in categories"]),
    ("det-score-threshold", "det", None, None, ["eval.score_threshold=2"], 2, ["eval.score_threshold = 2.0"]),
    ("det-input-size-zero", "det", None, None, ["data.input_size=[0,64]"], 2, ["data.input_size = [0, 64]", ">= 16"]),
]


@pytest.mark.parametrize("row", TRAIN_ROWS, ids=[r[0] for r in TRAIN_ROWS])
def test_train_refuses_with_one_line(row, request, capsys):
    from tools import train

    name, which, target, edit, extra, code, needles = row
    s = request.getfixturevalue("kpt_set" if which == "kpt" else "det_set")
    ann0 = json.load(open(s["val"] if target == "val" else s["train"]))["annotations"][0]["id"]
    if callable(target):
        target(s)
    elif target is not None:
        edit_json(s[target], edit)
    before = snapshot(s["root"])
    tiny = KPT_TINY if which == "kpt" else DET_TINY
    got, err = run_tool(train.main, ["--config", s["cfg"], "--run-dir", s["run"], "--no-progress", *tiny, *extra],
                        capsys)
    assert got == code, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle.format(train=s["train"], val=s["val"], ann0=ann0, run=s["run"]) in lines[0], lines[0]
    after = snapshot(s["root"])
    assert {p: h for p, h in after.items() if p in before} == before          # nothing was overwritten
    if name.startswith("unknown-precision"):                                 # refused before writing anything
        assert not os.path.exists(os.path.join(s["run"], "config.yaml"))
    for name in ("last.pt", "best.pt"):
        path = os.path.join(s["run"], name)
        assert not os.path.exists(path) or path in before


# ---------------------------------------------------------------------------------------------- other CLIs
def _fake_checkpoint(path: str, task: str) -> str:
    from engine.checkpoint import save_checkpoint

    save_checkpoint({"model": {"w": torch.zeros(1)}, "config": {"task": task}}, path)
    return path


def _tiny_keypoint_checkpoint(s) -> str:
    """An untrained tiny openfield model saved as tools.train saves one."""
    from engine.checkpoint import save_checkpoint
    from engine.config.loading import config_to_dict
    from engine.tasks import keypoints as kp
    from engine.tasks.registry import load_config

    cfg = load_config(s["cfg"], KPT_TINY)
    data, meta = kp.load_split_and_meta(cfg, cfg.data.val)
    model = kp.build_model(cfg, len(meta.keypoint_names), pretrained=False)
    path = os.path.join(s["root"], "kpt.pt")
    save_checkpoint({"model": model.state_dict(), "config": config_to_dict(cfg), "meta": meta.to_dict()}, path)
    return path


def test_eval_keypoint_checkpoint_with_detection_config_and_reverse(kpt_set, det_set, capsys):
    from tools import eval as eval_tool

    kpt = _fake_checkpoint(os.path.join(kpt_set["root"], "k.pt"), "keypoints")
    code, err = run_tool(eval_tool.main, ["--config", det_set["cfg"], "--checkpoint", kpt, "--no-progress"], capsys)
    assert code == 2 and f"error: {kpt} is a 'keypoints' checkpoint but {det_set['cfg']} is for 'detection'" in err
    det = _fake_checkpoint(os.path.join(kpt_set["root"], "d.pt"), "detection")
    code, err = run_tool(eval_tool.main, ["--config", kpt_set["cfg"], "--checkpoint", det, "--no-progress"], capsys)
    assert code == 2 and f"error: {det} is a 'detection' checkpoint but {kpt_set['cfg']} is for 'keypoints'" in err


def test_infer_max_images_below_one_and_boxes_not_json(kpt_set, capsys):
    from tools import infer

    code, err = run_tool(infer.main, ["--checkpoint", "k.pt", "--input", kpt_set["images"], "--max-images", "-1"],
                         capsys)
    assert code == 2 and "error: --max-images -1: must be >= 1" in err
    ckpt = _tiny_keypoint_checkpoint(kpt_set)
    boxes = os.path.join(kpt_set["root"], "boxes.json")
    open(boxes, "w").write("image_id,x,y,w,h\n1,2,3,4,5\n")
    out = os.path.join(kpt_set["root"], "out")
    image = os.path.join(kpt_set["images"], "img0000.jpg")
    code, err = run_tool(infer.main, ["--checkpoint", ckpt, "--input", image, "--boxes", boxes, "--image-info",
                                      kpt_set["train"], "--output-dir", out, "--no-progress", "--device", "cpu"],
                         capsys)
    assert code == 2 and f"error: {boxes} (--boxes) is not valid JSON" in err
    # an infinite box in --boxes is left out and counted, never a LinAlgError
    open(boxes, "w").write(json.dumps([{"image_id": 1, "bbox": [10, 10, float("inf"), 50], "score": 0.9},
                                       {"image_id": 1, "bbox": [10, 10, 100, 50], "score": 0.9}]))
    summary = infer.main(["--checkpoint", ckpt, "--input", image, "--boxes", boxes, "--output-dir", out,
                          "--no-progress", "--device", "cpu", "--image-info", kpt_set["train"]])
    assert summary["boxes"] == 1 and summary["box_stats"]["unusable"] == 1


def test_eval_and_browse_refuse_nan_ground_truth(kpt_set, capsys):
    from tools import browse_dataset
    from tools import eval as eval_tool

    ckpt = _tiny_keypoint_checkpoint(kpt_set)
    ann0 = json.load(open(kpt_set["val"]))["annotations"][0]["id"]
    edit_json(kpt_set["val"], _set_kpt(1, math.nan))
    code, err = run_tool(eval_tool.main, ["--config", kpt_set["cfg"], "--checkpoint", ckpt, "--no-progress",
                                          *KPT_TINY], capsys)
    assert code == 2 and f"error: {kpt_set['val']}: annotation {ann0}: field 'keypoints' value 1 is nan" in err
    out = os.path.join(kpt_set["root"], "browse")
    code, err = run_tool(browse_dataset.main, ["--config", kpt_set["cfg"], "--split", "val", "--output-dir", out,
                                               *KPT_TINY], capsys)
    assert code == 2 and f"annotation {ann0}: field 'keypoints'" in err
    # under data.on_bad_annotation=skip it draws the instances it kept
    written = browse_dataset.main(["--config", kpt_set["cfg"], "--split", "val", "--output-dir", out, *KPT_TINY,
                                   "data.on_bad_annotation=skip", "--num", "4"])
    assert len(written) == 1


def test_draw_keypoints_skips_nan_points():
    from engine.inference.drawing import draw_keypoints

    image = np.zeros((20, 20, 3), np.uint8)
    kpts = np.array([[[5, 5, 1.0], [np.nan, 3, 1.0], [4, 4, np.nan]]])
    out = draw_keypoints(image, kpts, skeleton=[(0, 1), (1, 2)], score_threshold=0.5,
                         boxes=np.array([[0, 0, np.inf, 5]]))
    assert out[5, 5].any() and out.shape == image.shape


# ---------------------------------------------------------------------------------------------- disk and Ctrl-C
def test_full_disk_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from engine import checkpoint as ckpt

    path = str(tmp_path / "last.pt")
    ckpt.save_checkpoint({"model": {"w": torch.ones(3)}, "epoch": 1}, path)
    before = open(path, "rb").read()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full)
    with pytest.raises(CheckpointError, match=rf"no space left on device while writing {path}; the previous "
                                              rf"checkpoint is intact"):
        ckpt.save_checkpoint({"model": {"w": torch.zeros(3)}, "epoch": 2}, path)
    assert open(path, "rb").read() == before and not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]

    def zip_writer_error(*args, **kwargs):   # what torch itself raises: the errno is lost on the way
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as err:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0") from err

    monkeypatch.setattr(ckpt.torch, "save", zip_writer_error)
    with pytest.raises(CheckpointError, match="no space left on device while writing"):
        ckpt.save_checkpoint({"model": {"w": torch.zeros(3)}}, path)
    assert open(path, "rb").read() == before
    with pytest.raises(CheckpointError, match="no earlier version of it existed"):
        ckpt.save_checkpoint({"model": {}}, str(tmp_path / "best.pt"))


@pytest.mark.slow
def test_ctrl_c_says_where_and_how_to_resume_then_the_command_resumes(kpt_set, capsys, monkeypatch):
    from engine.checkpoint import load_checkpoint
    from engine.train.loop import Trainer
    from tools import train

    original = Trainer.train_one_epoch

    def interrupt_second_epoch(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_one_epoch", interrupt_second_epoch)
    argv = ["--config", kpt_set["cfg"], "--run-dir", kpt_set["run"], "--no-progress", *KPT_TINY, "train.epochs=2"]
    code, err = run_tool(train.main, argv, capsys)
    last = os.path.join(kpt_set["run"], "last.pt")
    assert code == 130, err
    line = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(line) == 1 and "Traceback" not in err
    assert f"interrupted (Ctrl-C) in epoch 2 of 2, after 2 optimiser steps; {last} is complete (end of epoch 1)" \
        in line[0]
    command = line[0].split("continue with: ")[1]
    assert command.startswith("python -m tools.train ") and command.endswith(f"--resume {last}")
    monkeypatch.setattr(Trainer, "train_one_epoch", original)
    import shlex

    summary = train.main(shlex.split(command)[3:])          # the printed command, run as printed
    assert summary["epochs"] == 2 and load_checkpoint(last)["epoch"] == 2
    # the finished run is now refused without --resume / --overwrite, and kept
    before = snapshot(kpt_set["run"])
    code, err = run_tool(train.main, argv, capsys)
    assert code == 2 and "already holds a run" in err and snapshot(kpt_set["run"]) == before
    summary = train.main([*argv, "--overwrite"])
    assert summary["epochs"] == 2 and load_checkpoint(last)["epoch"] == 2


@pytest.mark.slow
def test_an_epoch_without_a_single_sample_is_an_error_and_saves_nothing(kpt_set, capsys, monkeypatch):
    import datasets.image_io
    from tools import train

    monkeypatch.setattr(datasets.image_io, "read_image_rgb", lambda path: None)   # unreadable after the check
    with pytest.warns(UserWarning, match="skipped"):
        code, err = run_tool(train.main, ["--config", kpt_set["cfg"], "--run-dir", kpt_set["run"], "--no-progress",
                                          *KPT_TINY, "data.on_bad_image=skip"], capsys)
    assert code == 2 and "error: epoch 1 trained on no sample" in err
    assert not os.path.exists(os.path.join(kpt_set["run"], "best.pt"))
    assert not os.path.exists(os.path.join(kpt_set["run"], "last.pt"))


# ---------------------------------------------------------------------------------------------- readers
def test_skip_policy_drops_and_counts_and_the_ground_truth_agrees(kpt_set, caplog):
    from datasets.coco_keypoints import load_coco_keypoints
    from engine.evaluation.coco import coco_eval
    from engine.tasks.keypoints import coco_subset

    val = json.load(open(kpt_set["val"]))
    bad_id = val["annotations"][0]["id"]
    edit_json(kpt_set["val"], _set_kpt(0, math.nan))
    with pytest.raises(DataError, match=f"annotation {bad_id}: field 'keypoints' value 0 is nan"):
        load_coco_keypoints(kpt_set["val"], kpt_set["images"])
    caplog.set_level("INFO")
    ds = load_coco_keypoints(kpt_set["val"], kpt_set["images"], on_bad_annotation="skip")
    assert ds.stats["bad_annotation"] == 1 and [i.ann_id for i in ds.instances] == [val["annotations"][1]["id"]]
    assert "malformed (skipped) 1" in caplog.text
    gt = coco_subset(kpt_set["val"], ds.image_ids, 1, on_bad_annotation="skip")
    assert [a["id"] for a in gt["annotations"]] == [val["annotations"][1]["id"]]
    results = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
               for a in gt["annotations"]]
    assert coco_eval(gt, results, "keypoints", sigmas=[0.08] * 4)["AP"] == pytest.approx(1.0)
    with pytest.raises(DataError, match="annotation .* value 0 is nan"):   # the raw file never reaches pycocotools
        coco_eval(kpt_set["val"], results, "keypoints", sigmas=[0.08] * 4)


def test_unknown_categories_are_counted_not_lost(det_set, caplog):
    from datasets.coco_detection import load_coco_detection

    data = json.load(open(det_set["train"]))
    n = len(data["annotations"])
    edit_json(det_set["train"], lambda d: [a.update(category_id=42) for a in d["annotations"][:5]])
    caplog.set_level("INFO")
    ds = load_coco_detection(det_set["train"], det_set["images"])
    assert ds.stats["unknown_category"] == 5 and ds.num_objects == n - 5 - ds.stats["crowd"]
    assert "category not in categories 5" in caplog.text and "have a category_id that is not in" in caplog.text


def test_symlinked_images_inside_the_root_are_read(kpt_set, tmp_path_factory):
    from datasets.coco_keypoints import load_coco_keypoints
    from datasets.image_io import read_image_rgb

    store = tmp_path_factory.mktemp("annex")     # e.g. a DVC / git-annex cache outside the image root
    for name in ("img0000.jpg", "img0001.jpg"):
        path = os.path.join(kpt_set["images"], name)
        shutil.move(path, store / name)
        os.symlink(store / name, path)
    ds = load_coco_keypoints(kpt_set["train"], kpt_set["images"])
    assert len(ds.instances) == 4 and read_image_rgb(ds.instances[0].image_path).shape == (480, 640, 3)
    os.symlink(store, os.path.join(kpt_set["images"], "linked_folder"))
    edit_json(kpt_set["train"], _set("file_name", "linked_folder/img0000.jpg", key="images"))
    assert len(load_coco_keypoints(kpt_set["train"], kpt_set["images"]).instances) == 4


def test_decoded_size_wins_over_the_json_and_is_counted(kpt_set, caplog):
    from datasets.coco_keypoints import load_coco_keypoints

    edit_json(kpt_set["train"], lambda d: d["images"][0].update(width=100, height=80))
    caplog.set_level("INFO")
    ds = load_coco_keypoints(kpt_set["train"], kpt_set["images"])
    inst = next(i for i in ds.instances if i.image_id == 1)
    assert inst.image_size == (640, 480) and ds.stats["resized_images"] == 1
    assert ds.stats["outside_image"] == 0          # masked against 640 x 480, not the json's 100 x 80
    assert "image 1: json 100x80, file 640x480; the file's size is used" in caplog.text


def test_truncated_png_and_jpeg_are_unreadable(tmp_path):
    import cv2

    from datasets.image_io import image_problem, read_image_rgb, truncation_problem

    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    for ext, word in ((".jpg", "JPEG"), (".png", "PNG")):
        path = str(tmp_path / f"a{ext}")
        cv2.imwrite(path, image)
        assert truncation_problem(path) is None and read_image_rgb(path) is not None
        raw = open(path, "rb").read()
        open(path, "wb").write(raw[: len(raw) // 2])
        assert read_image_rgb(path) is None and f"truncated {word}" in image_problem(path)
