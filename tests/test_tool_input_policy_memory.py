"""tools/faq/input_policy_memory.py: what each classification input policy does to the images and costs in
activation memory."""

import csv

import numpy as np
import pytest

from datasets.input_policy import fit_to_input, plan_fit
from models.classifier import ImageClassifier
from tools.faq import choose_backbone as cb
from tools.faq import input_policy_memory as ipm


def test_policy_geometry_by_hand():
    # 40 x 30 (4:3) into 32 x 32
    g = ipm.policy_geometry(40, 30, (32, 32), "resize")
    assert g["kept"] == g["image_share"] == 1 and g["aspect"] == pytest.approx((32 / 30) / (32 / 40))
    # cover 32 x 32 (scale 32/30), no extra zoom: 43 x 32, the centre 32 x 32 of it is kept
    g = ipm.policy_geometry(40, 30, (32, 32), "center_crop", crop_scale=1.0)
    assert g["kept"] == pytest.approx(32 * 32 / (43 * 32)) and g["image_share"] == 1
    # fit into 32 x 32 (scale 0.8): 32 x 24 of image, the rest padding
    g = ipm.policy_geometry(40, 30, (32, 32), "letterbox")
    assert g["image_share"] == pytest.approx(32 * 24 / (32 * 32)) and g["kept"] == 1 and g["aspect"] == 1
    assert ipm.policy_geometry(40, 30, (32, 32), "native") == {"image_share": 1.0, "kept": 1.0, "aspect": 1.0}


@pytest.mark.parametrize("w,h", [(40, 30), (24, 64), (33, 17)])
def test_policy_geometry_letterbox_matches_fit_to_input(w, h):
    # a white image letterboxed with a black fill: the white pixels are the image share
    white = np.full((h, w, 3), 255, np.uint8)
    out, _ = fit_to_input(white, (32, 32), "letterbox", fill=(0, 0, 0))
    share = (out[..., 0] == 255).mean()
    assert ipm.policy_geometry(w, h, (32, 32), "letterbox")["image_share"] == pytest.approx(share)


def test_input_policies_shapes_and_memory(tmp_path):
    # batch 3 of sizes 40x30, 24x64, 40x30 (width x height) into a 32 x 32 input
    result = ipm.main(["--models", "resnet10t", "--input-size", "3", "32", "32", "--batch-size", "3",
                       "--image-sizes", "40x30", "24x64", "--output-dir", str(tmp_path)])
    rows = {r["policy"]: r for r in result}
    assert list(rows) == ["resize", "center_crop", "random_crop", "letterbox", "native"]
    for policy in ("resize", "center_crop", "random_crop", "letterbox"):
        assert rows[policy]["batch_shape"] == (3, 3, 32, 32)  # the input size, whatever the images
        assert rows[policy]["activation_bytes"] == rows["resize"]["activation_bytes"]
    # native: padded to the largest height (64) and the largest width (40) of the batch
    assert rows["native"]["batch_shape"] == (3, 3, 64, 40)
    assert rows["native"]["image_share"] == pytest.approx((2 * 40 * 30 + 24 * 64) / (3 * 64 * 40))
    # memory grows with the tensor's area (64 * 40 / 32^2 = 2.5; strided levels round up a little)
    ratio = rows["native"]["activation_bytes"] / rows["resize"]["activation_bytes"]
    assert 2.3 < ratio < 2.8
    # the resize batch is a plain forward: the same saved-tensor count as measure_model on that shape
    plain = cb.measure_model(ImageClassifier("resnet10t", 1000), (3, 32, 32), 3, warmup=1, repeats=0)
    assert rows["resize"]["activation_bytes"] == plain["activation_bytes"]
    assert rows["letterbox"]["kept"] == 1 and rows["letterbox"]["image_share"] < 1
    assert rows["center_crop"]["kept"] < 1 and rows["resize"]["aspect"] > 1
    with open(tmp_path / "input_policies_b3.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["policy"] for t in table] == list(rows) and table[-1]["batch_shape"] == "3x3x64x40"


def test_native_batch_of_input_sized_images_costs_what_resize_costs(tmp_path):
    rows = ipm.measure_input_policies("resnet10t", (3, 32, 32), [(32, 32)], ["resize", "native"], batch_size=2)
    assert rows[0]["batch_shape"] == rows[1]["batch_shape"] == (2, 3, 32, 32)
    assert rows[0]["activation_bytes"] == rows[1]["activation_bytes"]


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--models", "resnet10t", "--policies", "stretch"], "not one of"),
        (["--models", "resnet10t", "--image-sizes", "500by375"], "WIDTHxHEIGHT"),
        (["--models", "tv:alexnet"], "torchvision"),
        (["--models", "resnet18x"], "unknown model"),
    ],
)
def test_input_policies_errors(tmp_path, argv, match):
    with pytest.raises(ValueError, match=match):
        ipm.main(argv + ["--output-dir", str(tmp_path)])


@pytest.mark.parametrize("policy", ["resize", "center_crop", "random_crop", "letterbox"])
def test_plan_fit_is_what_fit_to_input_does(policy):
    # A ramp image: the output of fit_to_input equals resizing to plan.resized and cutting / pasting at its offset.
    import cv2

    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    image = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    out, _ = fit_to_input(image, (32, 32), policy, train=True, rng=rng_a, crop_scale=1.3)
    plan = plan_fit(40, 30, (32, 32), policy, train=True, rng=rng_b, crop_scale=1.3)
    interp = cv2.INTER_AREA if plan.resized[0] * plan.resized[1] < 40 * 30 else cv2.INTER_LINEAR
    resized = cv2.resize(image, plan.resized, interpolation=interp)
    x0, y0 = plan.offset
    if policy == "letterbox":
        assert np.array_equal(out[y0:y0 + plan.resized[1], x0:x0 + plan.resized[0]], resized)
    else:
        assert np.array_equal(out, resized[y0:y0 + 32, x0:x0 + 32])
