"""The converters' and writers' edge cases, each on files written as the tools write them: points on one line
keep their instance, padded boxes stay inside the image, LabelMe's imageData is decoded beside the output, one
track is written in DeepLabCut's single-animal layout, and the .h5 DeepLabCut's readers want is written beside
the CSV (with pandas + PyTables; skipped without them)."""

from __future__ import annotations

import base64
import io
import json
import logging
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from datasets.coco_keypoints import load_coco_keypoints
from datasets.formats.common import MIN_BOX_SIZE, keypoint_box
from datasets.formats.dlc import convert_dlc
from datasets.formats.labelme import convert_labelme
from datasets.formats.pts import convert_pts
from datasets.image_io import read_image_rgb
from engine.video import outputs
from engine.video.outputs import frame_results, read_dlc_csv, write_dlc_csv
from tools import convert as convert_tool


def _labelme_file(folder, name: str, points: dict, size=(64, 48), image: np.ndarray | None = None,
                  image_data: bool = False, write_image: bool = True) -> str:
    """A LabelMe 5 json (points in LabelMe's corner-origin pixels) beside a PNG, or carrying it as imageData."""
    os.makedirs(folder, exist_ok=True)
    w, h = size
    pixels = image if image is not None else np.full((h, w, 3), 90, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    if write_image:
        with open(os.path.join(folder, name + ".png"), "wb") as f:
            f.write(buf.getvalue())
    doc = {"version": "5.4.1", "flags": {}, "imagePath": name + ".png",
           "imageData": base64.b64encode(buf.getvalue()).decode() if image_data else None,
           "imageHeight": h, "imageWidth": w,
           "shapes": [{"label": k, "points": [list(p)], "group_id": None, "shape_type": "point", "flags": {}}
                      for k, p in points.items()]}
    path = os.path.join(folder, name + ".json")
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


def _dlc_project(root, rows: list[str], size=(64, 48)) -> str:
    os.makedirs(root / "labeled-data" / "v1")
    (root / "config.yaml").write_text("Task: mice\nmultianimalproject: false\nbodyparts: [snout, tail]\n")
    for i in range(len(rows)):
        cv2.imwrite(str(root / "labeled-data" / "v1" / f"img{i}.png"), np.zeros((size[1], size[0], 3), np.uint8))
    header = ["scorer,me,me,me,me", "bodyparts,snout,snout,tail,tail", "coords,x,y,x,y"]
    (root / "labeled-data" / "v1" / "CollectedData_me.csv").write_text("\n".join(header + rows) + "\n")
    return str(root)


# ---------------------------------------------------------------------------------------------- 1. one line
def test_points_on_one_line_keep_their_instance_with_a_minimum_box(tmp_path):
    # snout straight above the tail base (one x), and side by side (one y): no width / no height
    _labelme_file(tmp_path / "lm", "a", {"snout": (20.5, 10.5), "tail": (20.5, 40.5)})
    result = convert_labelme(str(tmp_path / "lm"), keypoint_names=["snout", "tail"])
    (ann,) = result.coco["annotations"]        # was: "1 images, 0 instances", silently
    x, y, w, h = ann["bbox"]
    assert w == MIN_BOX_SIZE and x + w / 2 == pytest.approx(20.0)     # centred on the points' x (20.5 - 0.5)
    assert h == pytest.approx(30 * 1.2) and y == pytest.approx(10.0 - 3.0)

    project = _dlc_project(tmp_path / "dlc", ["labeled-data/v1/img0.png,10,20,50,20",     # one y
                                              "labeled-data/v1/img1.png,30,5,30,5"])       # one position: no box
    result = convert_dlc(project)
    (ann,) = result.coco["annotations"]        # was: counted as an unlabelled instance although it has two points
    assert ann["bbox"][3] == MIN_BOX_SIZE and ann["bbox"][2] == pytest.approx(48.0)
    assert result.counts["instances"] == 1 and result.counts["instances_with_one_point"] == 1
    assert result.counts["unlabelled_instances"] == 0


def test_a_lone_point_is_left_out_and_counted_not_silently(tmp_path, capsys):
    _labelme_file(tmp_path / "lm", "a", {"snout": (20.5, 10.5)})
    result = convert_tool.main(["labelme", str(tmp_path / "lm"), "--output", str(tmp_path / "x.json")])
    out = capsys.readouterr().out
    assert result.counts["instances_with_one_point"] == 1
    assert "instances_with_one_point: 1" in out and "no instance was written" in out


# ---------------------------------------------------------------------------------------------- 2. clipping
def test_padded_boxes_are_clipped_to_the_image():
    # the task's example: a box grown to [-64, -48, 768, 576] on 640x480 becomes the whole image
    kp = np.array([[0.0, 0.0, 2], [639.0, 479.0, 2]])
    assert keypoint_box(kp, padding=0.1) == pytest.approx([-63.9, -47.9, 766.8, 574.8])
    assert keypoint_box(kp, padding=0.1, image_size=(640, 480)) == [0.0, 0.0, 640.0, 480.0]   # pixels 0..W-1


def test_converted_boxes_lie_inside_their_images(tmp_path):
    project = _dlc_project(tmp_path / "dlc", ["labeled-data/v1/img0.png,1,2,62,46"])
    (ann,) = convert_dlc(project).coco["annotations"]
    assert ann["bbox"] == [0.0, 0.0, 64.0, 48.0] and ann["area"] == 64.0 * 48.0
    ds = load_coco_keypoints(_written(tmp_path, convert_dlc(project)), project)
    assert ds.instances[0].bbox.tolist() == [0.0, 0.0, 63.0, 47.0]       # inclusive: the whole image


def test_real_ibug_face_near_the_border_gets_a_box_inside_its_photo(shared_data):
    result = convert_pts(os.path.join(shared_data, "raw_formats", "ibug_afw"))
    sizes = {img["id"]: (img["width"], img["height"]) for img in result.coco["images"]}
    for ann in result.coco["annotations"]:
        x, y, w, h = ann["bbox"]
        width, height = sizes[ann["image_id"]]
        assert x >= 0 and y >= 0 and x + w <= width and y + h <= height       # one face reached x = -25.5


def _written(tmp_path, result) -> str:
    path = str(tmp_path / "c.json")
    with open(path, "w") as f:
        json.dump(result.coco, f)
    return path


# ---------------------------------------------------------------------------------------------- 3. imageData
def test_labelme_image_data_is_decoded_beside_the_output_not_into_the_source(tmp_path, capsys):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    src = tmp_path / "labels"
    _labelme_file(src / "train", "a", {"snout": (10.5, 5.5), "tail": (30.5, 25.5)}, image=pixels,
                  image_data=True, write_image=False)
    _labelme_file(src / "train", "b", {"snout": (12.5, 5.5), "tail": (33.5, 20.5)})   # an image beside this one
    before = sorted(os.listdir(src / "train"))
    out = tmp_path / "out" / "set.json"
    result = convert_tool.main(["labelme", str(src), "--output", str(out), "--keypoints", "snout,tail"])
    assert sorted(os.listdir(src / "train")) == before                     # the source folder is only read
    assert result.image_root == str(tmp_path / "out" / "set_images")
    assert f"image root: {result.image_root}" in capsys.readouterr().out
    names = [img["file_name"] for img in result.coco["images"]]
    assert names == ["train/a.png", "train/b.png"] and len(result.coco["annotations"]) == 2
    np.testing.assert_array_equal(read_image_rgb(os.path.join(result.image_root, names[0])), pixels)
    assert os.path.islink(os.path.join(result.image_root, names[1]))       # the other image is linked
    ds = load_coco_keypoints(str(out), result.image_root)                  # the repository's reader resolves both
    assert len(ds.instances) == 2 and ds.images[1]["split"] == "train"


def test_labelme_without_image_or_image_data_says_what_to_do(tmp_path):
    _labelme_file(tmp_path / "lm", "a", {"snout": (10.5, 5.5), "tail": (30.5, 25.5)}, write_image=False)
    with pytest.raises(Exception, match=r"a.json: imagePath: 'a.png' not found .*Save With Image Data"):
        convert_labelme(str(tmp_path / "lm"))


# ---------------------------------------------------------------------------------------------- 4. one track
def _two_frames(track_ids):
    k = np.array([[[1, 2, 0.9], [3, 4, 0.8]]])
    res = frame_results(0, k, np.array([0.9]), np.array([[0, 0, 9, 9]]), np.array(track_ids[:1]))
    res += frame_results(1, k + 10, np.array([0.7]), np.array([[5, 5, 19, 19]]), np.array(track_ids[1:]))
    return res


def test_one_track_is_written_in_the_single_animal_layout(tmp_path):
    path = str(tmp_path / "one.csv")
    write_dlc_csv(path, _two_frames([4, 4]), ["nose", "tail"], "net", frames=[0, 1], tracked=True)
    header, frames, values = read_dlc_csv(path)
    assert [r[0] for r in header] == ["scorer", "bodyparts", "coords"]      # was: an 'individuals' row too
    np.testing.assert_allclose(values, [[1, 2, 0.9, 3, 4, 0.8], [11, 12, 10.9, 13, 14, 10.8]])
    write_dlc_csv(path, _two_frames([4, 5]), ["nose", "tail"], "net", frames=[0, 1], tracked=True)
    assert [r[0] for r in read_dlc_csv(path)[0]] == ["scorer", "individuals", "bodyparts", "coords"]


def test_single_animal_readers_read_the_one_track_csv(tmp_path):
    pd = pytest.importorskip("pandas")
    path = str(tmp_path / "one.csv")
    write_dlc_csv(path, _two_frames([4, 4]), ["nose", "tail"], "net", frames=[0, 1], tracked=True)
    # what SimBA / Keypoint-MoSeq / DLC2Kinematics' CSV path do with a single-animal file
    df = pd.read_csv(path, header=[0, 1, 2], index_col=0)
    assert list(df.columns.get_level_values(1).unique()) == ["nose", "tail"]
    assert df[("net", "tail", "x")].tolist() == [3.0, 13.0] and df.index.tolist() == [0, 1]


# ---------------------------------------------------------------------------------------------- 5. the .h5
def test_h5_beside_the_csv_is_deeplabcuts_table(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("tables")
    path = str(tmp_path / "v.csv")
    h5 = write_dlc_csv(path, _two_frames([4, 4]), ["nose", "tail"], "net", frames=[0, 1], tracked=True)
    assert h5 == str(tmp_path / "v.h5")
    df = pd.read_hdf(h5, "df_with_missing")          # how DLC2Kinematics' load_data reads it
    assert list(df.columns.names) == ["scorer", "bodyparts", "coords"]
    assert df.columns.get_level_values("scorer")[0] == "net" and df.index.tolist() == [0, 1]
    np.testing.assert_allclose(df.to_numpy(), read_dlc_csv(path)[2])
    h5 = write_dlc_csv(path, _two_frames([4, 5]), ["nose", "tail"], "net", frames=[0, 1], tracked=True)
    df = pd.read_hdf(h5, "df_with_missing")
    assert list(df.columns.names) == ["scorer", "individuals", "bodyparts", "coords"]
    assert list(df.columns.get_level_values("individuals").unique()) == ["ind4", "ind5"]
    assert np.isnan(df[("net", "ind5", "nose", "x")][0]) and df[("net", "ind4", "nose", "x")][0] == 1.0


def test_without_pandas_or_tables_the_log_says_once_how_to_get_the_h5(tmp_path, monkeypatch, caplog):
    import builtins

    real_import = builtins.__import__

    def no_tables(name, *args, **kwargs):
        if name in ("pandas", "tables"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tables)
    monkeypatch.setattr(outputs, "_h5_missing_logged", False)
    caplog.set_level(logging.INFO, logger="engine.video.outputs")
    for name in ("a", "b"):
        assert write_dlc_csv(str(tmp_path / f"{name}.csv"), _two_frames([1, 1]), ["nose", "tail"], "net",
                             frames=[0, 1], tracked=True) is None
    assert os.path.isfile(tmp_path / "a.csv") and not list(tmp_path.glob("*.h5"))
    lines = [r.getMessage() for r in caplog.records if ".h5 not written" in r.getMessage()]
    assert len(lines) == 1 and "pip install pandas tables" in lines[0] and "DLC2Kinematics" in lines[0]
