"""Image files as cameras and phones write them, each written here by Pillow or OpenCV: EXIF orientation 1-8,
16 bits, alpha, CMYK, ICC profiles, several frames. One reader serves training, inference and drawing; the
converters follow what each labelling tool showed; a label file that fits neither grid of its image stops."""

from __future__ import annotations

import json
import logging
import os

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from datasets.affine import apply_affine, invert_affine
from datasets.coco_keypoints import load_coco_keypoints
from datasets.formats.cvat import convert_cvat
from datasets.formats.yolo import coco_to_yolo, convert_yolo
from datasets.image_io import (
    apply_orientation,
    image_problem,
    orientation_matrix,
    read_header,
    read_image,
    read_image_rgb,
    read_record_image,
)
from engine.inference.box_sources import DetectionFileBoxes, WholeImageBoxes
from engine.inference.images import run_on_images
from models.errors import DataError
from tests.inference_utils import tiny_keypoint_checkpoint
from tools import convert as convert_tool
from tools import infer


def _save(path, pixels: np.ndarray, orientation: int = 1, **options) -> str:
    """Write ``pixels`` (the stored grid) with an EXIF orientation tag, as a phone does."""
    im = Image.fromarray(pixels)
    exif = im.getexif()
    if orientation != 1:
        exif[0x0112] = orientation
    im.save(str(path), exif=exif, **options)
    return str(path)


def _photo(h=48, w=64, seed=0) -> np.ndarray:
    """A smooth picture (JPEG-friendly) with one white marker pixel block at rows 8..11, cols 40..43."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 60)], -1).astype(np.uint8)
    img[8:12, 40:44] = 255
    return img


# ---------------------------------------------------------------------------------------------- orientation
@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("ext", ["png", "jpg", "tif", "webp"])
def test_every_orientation_maps_pixels_and_points_with_one_matrix(tmp_path, orientation, ext):
    pixels = np.random.default_rng(orientation).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    options = {"quality": 100, "subsampling": 0} if ext == "jpg" else ({"lossless": True} if ext == "webp" else {})
    path = _save(tmp_path / f"o.{ext}", pixels, orientation, **options)
    stored, header = read_image(path)
    upright, _ = read_image(path, upright=True)
    assert header.orientation == orientation and header.size == (7, 5) and stored.shape == (5, 7, 3)
    if ext != "jpg":
        np.testing.assert_array_equal(stored, pixels)               # training: the stored grid as it is
        if ext != "tif":   # Pillow turns TIFFs itself while loading; for the rest it is the reference viewer
            reference = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
            np.testing.assert_array_equal(upright, reference)
    m = orientation_matrix(orientation, 7, 5)
    xy = np.stack(np.meshgrid(np.arange(7), np.arange(5)), -1).reshape(-1, 2).astype(float)
    uv = apply_affine(xy, m)
    assert np.array_equal(uv, np.round(uv)) and np.allclose(apply_affine(uv, invert_affine(m)), xy)
    u, v = uv.astype(int).T
    x, y = xy.astype(int).T
    np.testing.assert_array_equal(upright[v, u], stored[y, x])      # a point and its pixel move together


def test_a_phone_photo_turned_by_orientation_6_is_shown_and_drawn_upright(tmp_path):
    picture = _photo()                                             # what the person saw: 64 wide, 48 tall
    stored = apply_orientation(picture, 8)                         # the sensor's grid, 48 wide, 64 tall
    a, b = tmp_path / "plain", tmp_path / "phone"
    a.mkdir()
    b.mkdir()
    _save(a / "7.png", picture)
    _save(b / "7.png", stored, orientation=6)
    ckpt = tiny_keypoint_checkpoint(str(tmp_path / "tiny.pt"))
    runs = {}
    for name, folder in (("plain", a), ("phone", b)):
        runs[name] = infer.main(["--checkpoint", ckpt, "--input", str(folder), "--output-dir",
                                 str(tmp_path / f"out_{name}"), "--no-progress", "--device", "cpu"])
    # the drawing shows the picture as the person saw it, the points where they see the subject
    drawn = {k: cv2.imread(os.path.join(r["vis_dir"], "7.jpg")) for k, r in runs.items()}
    assert drawn["phone"].shape == (48, 64, 3)
    np.testing.assert_array_equal(drawn["phone"], drawn["plain"])
    # the json refers to the stored grid, like COCO's: the same poses, moved by the orientation's inverse
    plain, phone = (json.load(open(r["results"])) for r in (runs["plain"], runs["phone"]))
    to_stored = invert_affine(orientation_matrix(6, 48, 64))
    for p, q in zip(plain, phone):
        kp, kq = np.array(p["keypoints"]).reshape(-1, 3), np.array(q["keypoints"]).reshape(-1, 3)
        np.testing.assert_allclose(kq[:, :2], apply_affine(kp[:, :2], to_stored), atol=2e-3)
        np.testing.assert_allclose(kq[:, 2], kp[:, 2])
        assert p["score"] == q["score"] and p["image_id"] == q["image_id"] == 7


def test_a_detection_file_in_the_stored_grid_is_turned_with_the_picture(tmp_path):
    stored = apply_orientation(_photo(), 8)                          # 48 wide, 64 tall; the marker at x 8..11
    path = _save(tmp_path / "3.png", stored, orientation=6)
    assert (stored[20:24, 8:12] == 255).all()
    # a detection file's box around the marker on the stored grid, reaching past its bottom edge (64 rows)
    dets = [{"image_id": 3, "category_id": 1, "bbox": [8, 20, 4, 4], "score": 0.9},
            {"image_id": 3, "category_id": 1, "bbox": [0, 50, 10, 30], "score": 0.8}]
    (tmp_path / "d.json").write_text(json.dumps(dets))
    seen = []
    run = run_on_images([(path, 3)], DetectionFileBoxes(str(tmp_path / "d.json")), progress=False,
                        on_image=lambda image, result: seen.append((image, result)))
    (image, result), = seen
    assert image.shape == (48, 64, 3) and result.orientation == 6 and run.turned == {path: 6}
    x1, y1, x2, y2 = result.boxes[0].astype(int)
    assert (x2 - x1, y2 - y1) == (3, 3) and (image[y1:y2 + 1, x1:x2 + 1] == 255).all()   # still on the marker
    # clipped on the grid it refers to (rows 50..63 of the stored grid), then turned: columns 0..13 upright
    np.testing.assert_allclose(result.boxes[1], [0, 0, 13, 9])


def test_a_coco_json_sized_like_the_upright_picture_stops_instead_of_training_misplaced_points(tmp_path):
    _save(tmp_path / "a.jpg", apply_orientation(_photo(), 8), orientation=6, quality=95)    # stored 48 x 64
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [30, 2, 20, 20],
                             "area": 400, "num_keypoints": 2, "keypoints": [41.5, 9.5, 2, 45, 15, 2]}],
            "categories": [{"id": 1, "name": "x", "keypoints": ["a", "b"], "skeleton": []}]}
    path = tmp_path / "a.json"
    path.write_text(json.dumps(coco))
    with pytest.raises(DataError, match=r"1 images have the width/height of their file turned upright .*EXIF "
                                        r"orientation 6.*stored pixel grid.*exif_transpose"):
        load_coco_keypoints(str(path), str(tmp_path))
    coco["images"][0].update(width=48, height=64)     # the stored size: labels on the stored grid, as COCO's
    coco["annotations"][0].update(keypoints=[9.5, 22.5, 2, 15, 22, 2], bbox=[2, 15, 20, 20])
    path.write_text(json.dumps(coco))
    ds = load_coco_keypoints(str(path), str(tmp_path))
    image = read_record_image(ds.instances[0].image_path, 1, ds.instances[0].image_size, "error", set(), "kp")
    assert image.shape == (64, 48, 3) and (image[21:24, 8:11] > 200).all()


# ---------------------------------------------------------------------------------------------- converters
def _labelme(folder, image_name, size, points) -> None:
    doc = {"version": "5.4.1", "flags": {}, "imagePath": image_name, "imageData": None, "imageWidth": size[0],
           "imageHeight": size[1], "shapes": [{"label": k, "points": [p], "group_id": None, "shape_type": "point",
                                               "flags": {}} for k, p in points.items()]}
    (folder / (os.path.splitext(image_name)[0] + ".json")).write_text(json.dumps(doc))


def test_labelme_labels_on_the_upright_picture_get_an_upright_copy(tmp_path):
    src = tmp_path / "lm"
    src.mkdir()
    _save(src / "phone.jpg", apply_orientation(_photo(), 8), orientation=6, quality=95)
    # LabelMe showed the upright picture (64 x 48) and the user clicked the marker's centre there
    _labelme(src, "phone.jpg", (64, 48), {"marker": [42.0, 10.0], "corner": [2.0, 2.0]})
    result = convert_tool.main(["labelme", str(src), "--output", str(tmp_path / "o.json")])
    (img,) = result.coco["images"]
    assert (img["width"], img["height"]) == (64, 48) and img["file_name"] == "phone.jpg"
    copy = os.path.join(result.image_root, img["file_name"])
    assert not os.path.islink(copy) and read_header(copy).orientation == 1     # no tag left to turn it again
    pixels = read_image_rgb(copy)
    x, y = np.array(result.coco["annotations"][0]["keypoints"][:2]).round().astype(int)
    assert (x, y) == (42, 10) and (pixels[y, x] > 200).all()                     # the point is on the marker
    labelme_view = np.asarray(ImageOps.exif_transpose(Image.open(src / "phone.jpg")))   # what LabelMe showed
    assert np.abs(pixels.astype(int) - labelme_view).mean() < 2
    assert sorted(os.listdir(src)) == ["phone.jpg", "phone.json"]


def test_labelme_sizes_of_the_stored_grid_keep_the_original(tmp_path):
    src = tmp_path / "lm"
    src.mkdir()
    _save(src / "old.png", apply_orientation(_photo(), 8), orientation=6)
    _labelme(src, "old.png", (48, 64), {"marker": [9.5, 22.5], "corner": [1.0, 1.0]})   # a LabelMe that did not turn
    result = convert_tool.main(["labelme", str(src), "--output", str(tmp_path / "o.json")])
    assert result.image_root == str(src) and result.coco["images"][0]["width"] == 48


def test_labelme_size_that_fits_neither_grid_stops_with_one_line(tmp_path):
    src = tmp_path / "lm"
    src.mkdir()
    _save(src / "x.png", _photo(), orientation=6)
    _labelme(src, "x.png", (640, 480), {"marker": [42.0, 10.0], "corner": [2.0, 2.0]})
    with pytest.raises(DataError) as err:
        convert_tool.main(["labelme", str(src), "--output", str(tmp_path / "o.json")])
    msg = str(err.value)
    assert "x.json: imageWidth/imageHeight: says 640x480, but" in msg and "stored 64x48" in msg
    assert "upright 48x64" in msg and "misplaced" in msg and "\n" not in msg
    assert not (tmp_path / "o.json").exists() and not (tmp_path / "o_images").exists()


def test_cvat_follows_the_size_it_exported(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    _save(images / "p.png", apply_orientation(_photo(), 8), orientation=6)
    xml = ('<annotations><version>1.1</version><meta><task><labels><label><name>marker</name><type>points</type>'
           '</label><label><name>corner</name><type>points</type></label></labels></task></meta>'
           '<image id="0" name="p.png" width="{w}" height="{h}"><points label="marker" occluded="0" points="{m}"/>'
           '<points label="corner" occluded="0" points="2.00,2.00"/></image></annotations>')
    (tmp_path / "new.xml").write_text(xml.format(w=64, h=48, m="42.00,10.00"))       # CVAT 2.1+: upright
    result = convert_cvat(str(tmp_path / "new.xml"))
    assert [(w.file_name, w.orientation) for w in result.images_to_write] == [("p.png", 6)]
    (tmp_path / "old.xml").write_text(xml.format(w=48, h=64, m="10.00,23.00"))       # older CVAT: stored
    assert convert_cvat(str(tmp_path / "old.xml")).images_to_write == []
    (tmp_path / "bad.xml").write_text(xml.format(w=50, h=50, m="10.00,23.00"))
    with pytest.raises(DataError, match=r"name='p.png'> width/height: says 50x50, but .* misplaced"):
        convert_cvat(str(tmp_path / "bad.xml"))


def test_yolo_normalised_values_refer_to_the_upright_picture(tmp_path):
    root = tmp_path / "y"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    _save(root / "images" / "train" / "p.jpg", apply_orientation(_photo(), 8), orientation=6, quality=95)
    # Ultralytics shows 64 x 48; the marker's centre (42, 10) is (42.5 / 64, 10.5 / 48) from the corner
    (root / "labels" / "train" / "p.txt").write_text(f"0 0.5 0.5 0.9 0.9 {42.5 / 64} {10.5 / 48} 2\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nkpt_shape: [1, 3]\nnames: {0: m}\n")
    result = convert_tool.main(["yolo", str(root / "data.yaml"), "--output", str(tmp_path / "o.json")])
    (img,) = result.coco["images"]
    assert (img["width"], img["height"]) == (64, 48)
    pixels = read_image_rgb(os.path.join(result.image_root, img["file_name"]))
    x, y = np.array(result.coco["annotations"][0]["keypoints"][:2]).round().astype(int)
    assert (pixels[y, x] > 200).all()
    # and back: coco-to-yolo writes files whose stored grid is the labels' grid (no tag for Ultralytics to apply)
    coco = {**result.coco, "images": [{**img, "file_name": "s.jpg", "width": 48, "height": 64}]}
    _save(tmp_path / "s.jpg", apply_orientation(_photo(), 8), orientation=6, quality=95)
    yaml_path = coco_to_yolo(coco, str(tmp_path), str(tmp_path / "back"))
    written = str(tmp_path / "back" / "images" / "train" / "s.jpg")
    assert read_header(written).orientation == 1 and read_image_rgb(written).shape == (64, 48, 3)
    assert convert_yolo(yaml_path).images_to_write == []


def test_dlc_frames_with_an_orientation_keep_the_stored_grid_and_are_counted(tmp_path):
    root = tmp_path / "p"
    (root / "labeled-data" / "v1").mkdir(parents=True)
    (root / "config.yaml").write_text("Task: m\nmultianimalproject: false\nbodyparts: [a, b]\n")
    _save(root / "labeled-data" / "v1" / "img0.png", apply_orientation(_photo(), 8), orientation=6)
    (root / "labeled-data" / "v1" / "CollectedData_me.csv").write_text(
        "scorer,me,me,me,me\nbodyparts,a,a,b,b\ncoords,x,y,x,y\nlabeled-data/v1/img0.png,9.5,22.5,40,60\n")
    result = convert_tool.main(["dlc", str(root), "--output", str(tmp_path / "o.json")])
    assert result.counts["frames_with_exif_orientation"] == 1 and result.image_root == str(root)
    assert (result.coco["images"][0]["width"], result.coco["images"][0]["height"]) == (48, 64)


# ---------------------------------------------------------------------------------------------- other properties
def _reads_everywhere(path: str) -> np.ndarray:
    """The image as the training reader, inference (what it hands to drawing) and read_image_rgb see it; all
    three must agree."""
    training = read_record_image(path, 1, Image.open(path).size, "error", set(), "keypoints")
    seen = []
    run_on_images([(path, 1)], WholeImageBoxes(), on_image=lambda image, _: seen.append(image), progress=False)
    np.testing.assert_array_equal(training, seen[0])
    np.testing.assert_array_equal(training, read_image_rgb(path))
    assert training.dtype == np.uint8 and training.shape[2] == 3
    return training


def test_sixteen_bit_png_and_tiff_are_scaled_to_eight_bits(tmp_path):
    values = np.array([[0, 257, 32896, 65280, 65535, 383]], np.uint16)
    Image.fromarray(values).save(tmp_path / "g.png")                     # 16-bit greyscale (Pillow)
    cv2.imwrite(str(tmp_path / "c.tif"), np.dstack([values] * 3))        # 16-bit colour (OpenCV)
    cv2.imwrite(str(tmp_path / "c.png"), np.dstack([values, values // 2, values // 4]))
    expected = [0, 1, 128, 254, 255, 1]                                  # round(v * 255 / 65535)
    for name in ("g.png", "c.tif"):
        assert _reads_everywhere(str(tmp_path / name))[0, :, 0].tolist() == expected
    colour = _reads_everywhere(str(tmp_path / "c.png"))
    assert colour[0, 4].tolist() == [64, 127, 255]       # RGB order: OpenCV wrote B, G, R (65535, 32767, 16383)


def test_alpha_is_composited_on_black(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = [[255, 128], [0, 64]]
    Image.fromarray(rgba).save(tmp_path / "a.png")
    got = _reads_everywhere(str(tmp_path / "a.png"))
    assert got[0, 0].tolist() == [200, 100, 50] and got[1, 0].tolist() == [0, 0, 0]
    assert got[0, 1].tolist() == [100, 50, 25]


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:] = (200, 50, 20)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    got = _reads_everywhere(str(tmp_path / "c.jpg"))
    reference = np.asarray(Image.open(tmp_path / "c.jpg").convert("RGB"))    # Pillow's conversion
    assert np.abs(got.astype(int) - reference).max() <= 2 and np.abs(got[0, 0].astype(int) - (200, 50, 20)).max() <= 2


def test_an_icc_profile_is_not_applied(tmp_path):
    rgb = _photo()
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()   # far from sRGB on purpose
    Image.fromarray(rgb).save(tmp_path / "p.png", icc_profile=profile)
    assert Image.open(tmp_path / "p.png").info.get("icc_profile")
    np.testing.assert_array_equal(_reads_everywhere(str(tmp_path / "p.png")), rgb)


@pytest.mark.parametrize("ext", ["tif", "gif", "webp", "png"])
def test_multi_frame_files_give_their_first_frame_with_one_warning(tmp_path, ext, caplog):
    first = np.zeros((8, 8, 3), np.uint8)
    first[:] = (200, 40, 40)
    options = {"lossless": True} if ext == "webp" else {}
    Image.fromarray(first).save(tmp_path / f"m.{ext}", save_all=True, append_images=[Image.fromarray(255 - first)],
                                **options)
    path = str(tmp_path / f"m.{ext}")
    caplog.set_level(logging.WARNING, logger="datasets.image_io")
    got = _reads_everywhere(path)
    np.testing.assert_array_equal(got, first)
    assert [r.getMessage() for r in caplog.records].count(
        f"{path} holds 2 frames (a multi-page TIFF or an animated image); only the first is read. Save the frame "
        f"you mean as its own file to silence this") == 1


def test_float_samples_are_refused_with_the_fix(tmp_path):
    Image.fromarray(np.ones((3, 3), np.float32)).save(tmp_path / "f.tif")
    assert read_image_rgb(str(tmp_path / "f.tif")) is None
    assert "float32 samples" in image_problem(str(tmp_path / "f.tif")) and "8- or 16-bit" in image_problem(
        str(tmp_path / "f.tif"))
