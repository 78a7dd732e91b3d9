# ruff: noqa: E501  (the CVAT sample keeps its lines as CVAT writes them)
"""Format converters: the real samples reproduce the COCO sets built from the same frames, hand-written LabelMe
and CVAT files give hand-computed keypoints, the YOLO round trip is exact, and bad input is named and counted."""

from __future__ import annotations

import json
import os
import shutil

import cv2
import numpy as np
import pytest

from datasets.coco_keypoints import load_coco_keypoints
from datasets.formats.cvat import convert_cvat
from datasets.formats.dlc import convert_dlc
from datasets.formats.labelme import convert_labelme
from datasets.formats.names import flip_index_from_names, is_coco_body
from datasets.formats.pts import FLIP_68, convert_pts
from datasets.formats.yolo import coco_to_yolo, convert_yolo
from datasets.skeletons import COCO_KEYPOINT_NAMES
from models.errors import DataError
from tools import convert as convert_tool


def _by_stem(coco: dict) -> dict[str, dict]:
    """stem of file_name -> {'kp': [K, 3], 'bbox': [4], 'split'} (one instance per image in these sets)."""
    anns = {a["image_id"]: a for a in coco["annotations"]}
    out = {}
    for img in coco["images"]:
        a = anns[img["id"]]
        out[os.path.splitext(os.path.basename(img["file_name"]))[0]] = {
            "kp": np.array(a["keypoints"]).reshape(-1, 3), "bbox": np.array(a["bbox"]), "split": img.get("split")}
    return out


def _merged(*paths) -> dict[str, dict]:
    out = {}
    for p in paths:
        with open(p) as f:
            out.update(_by_stem(json.load(f)))
    return out


def test_dlc_sample_equals_the_openfield_set(shared_data):
    result = convert_dlc(os.path.join(shared_data, "raw_formats", "dlc_openfield"))
    ours = _by_stem(result.coco)
    ref = _merged(*(os.path.join(shared_data, "openfield", f"{s}.json") for s in ("train", "val")))
    assert len(ours) == 20 and set(ours) <= set(ref)
    for stem, got in ours.items():
        # DeepLabCut's coordinates are pixel-index coordinates already: taken as they are.
        np.testing.assert_allclose(got["kp"], ref[stem]["kp"], atol=1e-3)
        np.testing.assert_allclose(got["bbox"], ref[stem]["bbox"], atol=1e-3)
    assert result.coco["categories"][0]["keypoints"] == ["snout", "leftear", "rightear", "tailbase"]
    # file_names resolve against the printed image root (the project folder)
    first = result.coco["images"][0]["file_name"]
    assert first.startswith("labeled-data/m4s1/") and os.path.isfile(os.path.join(result.image_root, first))


def test_yolo_sample_equals_the_tiger_set_shifted_half_a_pixel(shared_data):
    result = convert_yolo(os.path.join(shared_data, "raw_formats", "yolo_tiger", "data.yaml"))
    ours = _by_stem(result.coco)
    ref = _merged(*(os.path.join(shared_data, "tiger_pose", f"{s}.json") for s in ("train", "val")))
    assert len(ours) == 18 and set(ours) <= set(ref)
    assert sorted(v["split"] for v in ours.values()).count("val") == 6
    for stem, got in ours.items():
        # The COCO set took x = nx * W; ours is the pixel-index x = nx * W - 0.5 (Ultralytics measures from the
        # image's corner), so the two differ by exactly half a pixel; boxes are corner-based in both.
        expected = ref[stem]["kp"].copy()
        expected[:, :2] -= 0.5
        np.testing.assert_allclose(got["kp"], expected, atol=1e-3)
        np.testing.assert_allclose(got["bbox"], ref[stem]["bbox"], atol=1e-3)
    assert result.coco["categories"][0]["flip_index"] == list(range(12))


def test_yolo_round_trip_is_exact(shared_data, tmp_path):
    src = os.path.join(shared_data, "raw_formats", "yolo_tiger")
    first = convert_yolo(os.path.join(src, "data.yaml"))
    yaml_path = coco_to_yolo(first.coco, first.image_root, str(tmp_path / "yolo"))
    second = convert_yolo(yaml_path)
    a, b = _by_stem(first.coco), _by_stem(second.coco)
    assert a.keys() == b.keys()
    for stem in a:
        np.testing.assert_allclose(b[stem]["kp"], a[stem]["kp"], rtol=0, atol=1e-9)
        np.testing.assert_allclose(b[stem]["bbox"], a[stem]["bbox"], rtol=0, atol=1e-9)
        assert b[stem]["split"] == a[stem]["split"]
    # and the label numbers themselves come back (the original has 2 values per point, ours 3)
    orig = np.loadtxt(os.path.join(src, "labels", "train", "Frame_0.txt"))
    back = np.loadtxt(str(tmp_path / "yolo" / "labels" / "train" / "Frame_0.txt"))
    np.testing.assert_allclose(back[:5], orig[:5], atol=1e-12)
    np.testing.assert_allclose(back[5:].reshape(-1, 3)[:, :2], orig[5:].reshape(-1, 2), atol=1e-12)
    assert second.coco["categories"][0]["keypoints"] == first.coco["categories"][0]["keypoints"]


def test_pts_sample_gives_twelve_faces_of_68_points(shared_data, tmp_path):
    folder = os.path.join(shared_data, "raw_formats", "ibug_afw")
    result = convert_pts(folder)
    assert len(result.coco["annotations"]) == 12 and len(result.coco["images"]) == 12
    cat = result.coco["categories"][0]
    assert len(cat["keypoints"]) == 68 and cat["flip_index"] == FLIP_68
    raw = np.loadtxt(os.path.join(folder, "3989161_1.pts"))
    got = next(np.array(a["keypoints"]).reshape(-1, 3) for a in result.coco["annotations"]
               if result.coco["images"][a["image_id"] - 1]["file_name"] == "3989161_1.jpg")
    np.testing.assert_allclose(got[:, :2], raw - 1.0)    # iBUG is 1-based
    assert (got[:, 2] == 2).all()
    # the iBUG originals' header form reads the same
    with open(tmp_path / "3989161_1.pts", "w") as f:
        f.write("version: 1\nn_points:  68\n{\n" + "".join(f"{x} {y}\n" for x, y in raw) + "}\n")
    shutil.copy(os.path.join(folder, "3989161_1.jpg"), tmp_path / "3989161_1.jpg")
    again = convert_pts(str(tmp_path))
    np.testing.assert_allclose(np.array(again.coco["annotations"][0]["keypoints"]).reshape(-1, 3)[:, :2], raw - 1)


def test_flip_68_matches_the_published_partners():
    assert FLIP_68[0] == 16 and FLIP_68[17] == 26 and FLIP_68[27] == 27 and FLIP_68[31] == 35
    assert FLIP_68[36:42] == [45, 44, 43, 42, 47, 46] and FLIP_68[48] == 54 and FLIP_68[60] == 64
    assert FLIP_68[65] == 67 and all(FLIP_68[FLIP_68[i]] == i for i in range(68))


def _image(path, w=40, h=30):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(str(path), np.zeros((h, w, 3), np.uint8))


def test_labelme_points_rectangles_and_groups(tmp_path):
    _image(tmp_path / "train" / "a.png")
    doc = {"version": "5.4.1", "flags": {}, "imagePath": "a.png", "imageData": None, "imageHeight": 30,
           "imageWidth": 40, "shapes": [
               {"label": "nose", "points": [[10.5, 5.5]], "group_id": 1, "shape_type": "point", "flags": {}},
               {"label": "tail", "points": [[20.0, 8.0]], "group_id": 1, "shape_type": "point",
                "flags": {"occluded": True}},
               {"label": "mouse", "points": [[25.0, 12.0], [5.0, 2.0]], "group_id": 1, "shape_type": "rectangle",
                "flags": {}},
               {"label": "nose", "points": [[30.5, 20.5]], "group_id": 2, "shape_type": "point", "flags": {}},
               {"label": "tail", "points": [[35.5, 25.5]], "group_id": 2, "shape_type": "point", "flags": {}},
               {"label": "mouse", "points": [[1, 1], [2, 2], [3, 1]], "group_id": None, "shape_type": "polygon",
                "flags": {}}]}
    with open(tmp_path / "train" / "a.json", "w") as f:
        json.dump(doc, f)
    result = convert_labelme(str(tmp_path), keypoint_names=["nose", "tail"])
    coco = result.coco
    assert coco["images"][0]["file_name"] == "train/a.png" and coco["images"][0]["split"] == "train"
    assert coco["categories"][0]["name"] == "mouse" and result.counts["ignored_shapes"] == 1
    first, second = coco["annotations"]
    # corner-origin values minus half a pixel; the rectangle's corners are the COCO box as it is
    assert first["keypoints"] == [10.0, 5.0, 2.0, 19.5, 7.5, 1.0]
    assert first["bbox"] == [5.0, 2.0, 20.0, 10.0]
    assert second["keypoints"] == [30.0, 20.0, 2.0, 35.0, 25.0, 2.0]
    # padded keypoint box: 5 px apart, padded to 6 px, raised to MIN_BOX_SIZE (16 px) about the points' centre
    # (32.5, 22.5), then cut at the 40x30 image's right and bottom edges (x + w <= 40, y + h <= 30)
    np.testing.assert_allclose(second["bbox"], [24.5, 14.5, 15.5, 15.5])
    with pytest.raises(DataError, match=r"2 unknown bodypart.*shape 1 \('tail'\)"):
        convert_labelme(str(tmp_path), keypoint_names=["nose"])


CVAT_XML = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <task>
      <id>1</id><name>mice</name><size>2</size><mode>annotation</mode>
      <labels>
        <label>
          <name>mouse</name><color>#fa3253</color><type>skeleton</type><attributes></attributes>
          <svg>&lt;line x1="30" y1="40" x2="60" y2="50" data-type="edge" data-node-from="1" data-node-to="2"&gt;&lt;/line&gt;
&lt;line x1="60" y1="50" x2="70" y2="80" data-type="edge" data-node-from="2" data-node-to="3"&gt;&lt;/line&gt;
&lt;circle r="1.5" cx="30" cy="40" data-type="element node" data-element-id="1" data-node-id="1" data-label-name="snout"&gt;&lt;/circle&gt;
&lt;circle r="1.5" cx="60" cy="50" data-type="element node" data-element-id="2" data-node-id="2" data-label-name="neck"&gt;&lt;/circle&gt;
&lt;circle r="1.5" cx="70" cy="80" data-type="element node" data-element-id="3" data-node-id="3" data-label-name="tail"&gt;&lt;/circle&gt;</svg>
        </label>
        <label><name>snout</name><color>#d12345</color><type>points</type><attributes></attributes><parent>mouse</parent></label>
        <label><name>neck</name><color>#350dea</color><type>points</type><attributes></attributes><parent>mouse</parent></label>
        <label><name>tail</name><color>#479ffe</color><type>points</type><attributes></attributes><parent>mouse</parent></label>
      </labels>
    </task>
  </meta>
  <image id="0" name="f0.png" subset="Train" width="40" height="30">
    <skeleton label="mouse" source="manual" z_order="0" group_id="4">
      <points label="snout" source="manual" outside="0" occluded="0" points="10.50,5.50"></points>
      <points label="neck" source="manual" outside="0" occluded="1" points="20.00,10.00"></points>
      <points label="tail" source="manual" outside="1" occluded="0" points="0.00,0.00"></points>
    </skeleton>
    <box label="mouse" source="manual" occluded="0" xtl="5.00" ytl="2.00" xbr="25.00" ybr="12.00" z_order="0" group_id="4"></box>
  </image>
  <image id="1" name="f1.png" subset="Validation" width="40" height="30">
    <skeleton label="mouse" source="manual" z_order="0">
      <points label="snout" source="manual" outside="0" occluded="0" points="30.50,20.50"></points>
      <points label="neck" source="manual" outside="0" occluded="0" points="35.50,25.50"></points>
      <points label="tail" source="manual" outside="0" occluded="0" points="38.50,28.50"></points>
    </skeleton>
  </image>
</annotations>
"""


def test_cvat_skeletons_with_outside_occluded_and_subsets(tmp_path):
    for name in ("f0.png", "f1.png"):
        _image(tmp_path / "images" / name)
    (tmp_path / "annotations.xml").write_text(CVAT_XML)
    result = convert_cvat(str(tmp_path / "annotations.xml"))
    coco = result.coco
    assert result.image_root == str(tmp_path / "images")
    cat = coco["categories"][0]
    assert cat["name"] == "mouse" and cat["keypoints"] == ["snout", "neck", "tail"]
    assert cat["skeleton"] == [[1, 2], [2, 3]]
    assert [img["split"] for img in coco["images"]] == ["train", "validation"]
    first, second = coco["annotations"]
    assert first["keypoints"] == [10.0, 5.0, 2.0, 19.5, 9.5, 1.0, 0.0, 0.0, 0.0]
    assert first["bbox"] == [5.0, 2.0, 20.0, 10.0]
    assert second["keypoints"] == [30.0, 20.0, 2.0, 35.0, 25.0, 2.0, 38.0, 28.0, 2.0]


def test_cvat_plain_points_grouped_and_unknown_label(tmp_path):
    _image(tmp_path / "f0.png")
    xml = """<annotations><version>1.1</version><meta><task><labels>
      <label><name>nose</name><type>points</type></label><label><name>tail</name><type>points</type></label>
      <label><name>cat</name><type>rectangle</type></label></labels></task></meta>
      <image id="0" name="f0.png" width="40" height="30">
        <points label="nose" occluded="0" points="1.50,2.50" group_id="1" z_order="0"></points>
        <points label="tail" occluded="0" points="9.50,8.50" group_id="1" z_order="0"></points>
        <points label="nose" occluded="0" points="20.50,20.50" group_id="2" z_order="0"></points>
        <points label="tail" occluded="0" points="30.50,25.50" group_id="2" z_order="0"></points>
      </image></annotations>"""
    (tmp_path / "a.xml").write_text(xml)
    coco = convert_cvat(str(tmp_path / "a.xml")).coco
    assert [a["keypoints"] for a in coco["annotations"]] == [[1.0, 2.0, 2.0, 9.0, 8.0, 2.0],
                                                            [20.0, 20.0, 2.0, 30.0, 25.0, 2.0]]
    (tmp_path / "b.xml").write_text(xml.replace('label="tail" occluded="0" points="9.50', 'label="paw" '
                                                'occluded="0" points="9.50'))
    with pytest.raises(DataError, match="unknown bodypart"):
        convert_cvat(str(tmp_path / "b.xml"))


def _small_dlc_project(root, header, rows, multi=False):
    lines = ["Task: mice", f"multianimalproject: {'true' if multi else 'false'}"]
    if multi:
        lines += ["individuals: [m1, m2]", "multianimalbodyparts: [snout, tail]", "uniquebodyparts: [light]",
                  "bodyparts: MULTI!"]
    else:
        lines += ["bodyparts: [snout, tail]"]
    lines += ["skeleton: [[snout, tail]]"]
    os.makedirs(root / "labeled-data" / "v1")
    (root / "config.yaml").write_text("\n".join(lines) + "\n")
    for i in range(2):
        _image(root / "labeled-data" / "v1" / f"img{i}.png")
    (root / "labeled-data" / "v1" / "CollectedData_me.csv").write_text("\n".join(header + rows) + "\n")


def test_dlc_multi_animal_three_index_columns_and_nan(tmp_path):
    header = ["scorer,,,me,me,me,me,me,me,me,me,me,me",
              "individuals,,,m1,m1,m1,m1,m2,m2,m2,m2,single,single",
              "bodyparts,,,snout,snout,tail,tail,snout,snout,tail,tail,light,light",
              "coords,,,x,y,x,y,x,y,x,y,x,y"]
    rows = ["labeled-data,v1,img0.png,1,2,11,12,21,22,,,5,5",
            "labeled-data,v1,img1.png,3,4,13,14,NaN,NaN,NaN,NaN,5,5"]
    _small_dlc_project(tmp_path, header, rows, multi=True)
    result = convert_dlc(str(tmp_path))
    coco = result.coco
    assert [i["file_name"] for i in coco["images"]] == ["labeled-data/v1/img0.png", "labeled-data/v1/img1.png"]
    kps = [a["keypoints"] for a in coco["annotations"]]
    # m2 in img0 has one labelled point (no box: skipped, counted); m2 in img1 has none
    assert kps == [[1.0, 2.0, 2.0, 11.0, 12.0, 2.0], [3.0, 4.0, 2.0, 13.0, 14.0, 2.0]]
    assert result.counts["unlabelled_instances"] == 1 and result.counts["instances_with_one_point"] == 1
    assert result.counts["unique_bodypart_columns"] == 1
    assert coco["categories"][0]["skeleton"] == [[1, 2]]


def test_dlc_bad_input_is_named_counted_and_nothing_written(tmp_path):
    header = ["scorer,me,me,me,me,me,me", "bodyparts,snout,snout,tail,tail,paw,paw", "coords,x,y,x,y,x,y"]
    rows = ["labeled-data/v1/img0.png,1,2,3,4,5,6",
            "labeled-data/v1/img1.png,1,2,3",              # wrong number of columns
            "labeled-data/v1/img9.png,1,2,3,4,5,6",        # missing image
            "labeled-data/v1/img0.png,1,2,300,4,5,6"]      # point outside the 40x30 image
    _small_dlc_project(tmp_path / "p", header, rows)
    out = tmp_path / "out.json"
    with pytest.raises(DataError) as err:
        convert_tool.main(["dlc", str(tmp_path / "p"), "--output", str(out)])
    msg = str(err.value)
    for part in ("4 problems", "1 unknown bodypart", "'paw'", "1 wrong number of columns", "line 5",
                 "1 missing image", "img9.png", "1 point outside the image", "line 7", "--skip-bad"):
        assert part in msg, part
    assert not out.exists() and not list(tmp_path.glob("out.json*"))
    result = convert_tool.main(["dlc", str(tmp_path / "p"), "--output", str(out), "--skip-bad"])
    # the frame whose tail was outside keeps a lone snout: no box, so no instance (counted)
    assert result.counts["skipped: missing image"] == 1 and result.counts["instances_with_one_point"] == 1
    assert len(result.coco["annotations"]) == 1
    assert load_coco_keypoints(str(out), result.image_root).num_keypoints == 2   # the repository's reader


def test_yolo_bad_input(tmp_path, shared_data):
    src = os.path.join(shared_data, "raw_formats", "yolo_tiger")
    dst = tmp_path / "y"
    shutil.copytree(src, dst)
    (dst / "labels" / "train" / "Frame_999.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with open(dst / "labels" / "val" / "Frame_101.txt", "a") as f:
        f.write("0 0.5 0.5\n")
    with pytest.raises(DataError, match=r"2 problems \(1 label file without its image, 1 wrong number of "
                                        r"columns\).*Frame_999.txt.*Frame_101.txt: line 2"):
        convert_yolo(str(dst / "data.yaml"))


def test_convert_tool_prints_the_image_root(shared_data, tmp_path, capsys):
    out = tmp_path / "faces.json"
    convert_tool.main(["pts", os.path.join(shared_data, "raw_formats", "ibug_afw"), "--output", str(out)])
    text = capsys.readouterr().out
    root = os.path.join(shared_data, "raw_formats", "ibug_afw")
    assert f"image root: {os.path.abspath(root)}" in text and "12 instances, 68 keypoints" in text
    ds = load_coco_keypoints(str(out), root)
    assert len(ds.instances) == 12


@pytest.mark.parametrize("names, pairs", [
    (["nose", "left_eye", "right_eye", "l_ear", "r_ear"], [(1, 2), (3, 4)]),
    (["leftear", "rightear", "tail"], [(0, 1)]),
    (["LEar", "REar", "Neck"], [(0, 1)]),
    (["ear_left", "ear_right", "paw-L", "paw-R", "rightEye", "leftEye"], [(0, 1), (2, 3), (5, 4)]),
    (["kp0", "kp1", "tail"], []),
])
def test_flip_from_names(names, pairs):
    flip, found = flip_index_from_names(names)
    expected = list(range(len(names)))
    for a, b in pairs:
        expected[a], expected[b] = b, a
    assert flip == expected and len(found) == len(pairs)


def test_coco_names_are_recognised():
    assert is_coco_body(COCO_KEYPOINT_NAMES) and is_coco_body([n.replace("_", "-") for n in COCO_KEYPOINT_NAMES])
    assert not is_coco_body(COCO_KEYPOINT_NAMES[::-1])


def test_dlc_h5_without_pandas_says_what_to_do(tmp_path, monkeypatch):
    import sys

    _small_dlc_project(tmp_path, ["scorer,me,me", "bodyparts,snout,snout", "coords,x,y"], [])
    os.remove(tmp_path / "labeled-data" / "v1" / "CollectedData_me.csv")
    (tmp_path / "labeled-data" / "v1" / "CollectedData_me.h5").write_bytes(b"\x89HDF\r\n")
    monkeypatch.setitem(sys.modules, "pandas", None)     # as on a machine without pandas
    from models.errors import InputError

    with pytest.raises(InputError, match=r"needs pandas and PyTables \(pip install pandas tables\).*CSV"):
        convert_dlc(str(tmp_path))


def test_tools_fail_through_the_one_error_path(tmp_path, capsys):
    from tools import make_config
    from tools._common import run_cli

    with pytest.raises(SystemExit) as exit_info:
        run_cli(convert_tool.main, ["yolo", str(tmp_path / "missing.yaml"), "--output", str(tmp_path / "o.json")])
    assert exit_info.value.code == 2
    assert "error: YOLO data.yaml not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        run_cli(make_config.main, [str(tmp_path / "none.json"), "--image-root", ".", "--output", "x.yaml"])
    assert exit_info.value.code == 2 and "(ANN_FILE)" in capsys.readouterr().err


def test_pts_missing_image_and_outside_points(tmp_path):
    _image(tmp_path / "a.png", w=10, h=10)
    (tmp_path / "a.pts").write_text("1 1\n11 5\n")          # 11 - 1 = 10 > W - 0.5
    (tmp_path / "b.pts").write_text("1 1\n2 2\n")           # no image
    with pytest.raises(DataError, match=r"2 problems \(1 point outside the image, 1 missing image\).*point 1 \(zero-based\) at \(11, 5\)"):
        convert_pts(str(tmp_path))
    assert convert_pts(str(tmp_path), skip_bad=True).coco["annotations"] == []


def test_coco_to_yolo_command_copies_images(shared_data, tmp_path):
    out = tmp_path / "faces.json"
    folder = os.path.join(shared_data, "raw_formats", "ibug_afw")
    convert_tool.main(["pts", folder, "--output", str(out)])
    convert_tool.main(["coco-to-yolo", str(out), "--image-root", folder, "--output", str(tmp_path / "y"),
                       "--copy-images"])
    back = convert_yolo(str(tmp_path / "y" / "data.yaml"))
    assert back.coco["categories"][0]["flip_index"] == FLIP_68
    assert not os.path.islink(tmp_path / "y" / "images" / "train" / "3989161_1.jpg")
    with open(out) as f:
        a = _by_stem(json.load(f))
    b = _by_stem(back.coco)
    for stem in a:
        np.testing.assert_allclose(b[stem]["kp"], a[stem]["kp"], atol=1e-9)


def test_coco_to_yolo_writes_detection_labels_for_a_box_file(tmp_path):
    """A COCO detection file (no keypoints) becomes a YOLO detection set: one ``class cx cy w h`` line per box,
    normalised by the image; the +1 box [x, y, w, h] spans pixel edges x - 0.5 .. x + w - 0.5, i.e. x / W to
    (x + w) / W in YOLO's normalised edge coordinates."""
    import yaml

    image = tmp_path / "src" / "a.png"
    image.parent.mkdir()
    cv2.imwrite(str(image), np.zeros((200, 100, 3), np.uint8))
    coco = {"images": [{"id": 7, "file_name": "a.png", "width": 100, "height": 200, "split": "val"}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 5, "bbox": [10, 20, 30, 40], "area": 1200},
                            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [0, 0, 100, 200], "area": 2e4},
                            {"id": 3, "image_id": 7, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 1}],
            "categories": [{"id": 5, "name": "fig"}, {"id": 3, "name": "date"}]}
    data_yaml = coco_to_yolo(coco, str(tmp_path / "src"), str(tmp_path / "yolo"))
    data = yaml.safe_load(open(data_yaml))
    assert data["names"] == {0: "date", 1: "fig"} and "kpt_shape" not in data and data["val"] == "images/val"
    lines = [[float(v) for v in line.split()] for line in open(tmp_path / "yolo" / "labels" / "val" / "a.txt")]
    # fig (class 1): centre (10 + 15, 20 + 20) / (100, 200), size (30 / 100, 40 / 200); the whole image: 0.5s, 1s.
    assert lines == [[1, 0.25, 0.2, 0.3, 0.2], [0, 0.5, 0.5, 1.0, 1.0]]
