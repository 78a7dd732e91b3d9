"""Whole-image detection samples: letterbox, flip/zoom/crop through box edges, drops, padding, seeding."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from datasets.coco_detection import DetectionImage, load_coco_detection
from datasets.detection_transforms import (
    DetectionAugment,
    DetectionTransformDataset,
    collate_detection,
    keep_box_in_view,
    transform_boxes,
    view_matrix,
)
from datasets.sampler import SeededSampler
from models.bbox import affine_boxes, box_width_height


@pytest.fixture()
def rect_image(tmp_path):
    """A 100 x 60 black image with two white rectangles, as one DetectionImage."""
    image = np.zeros((60, 100, 3), np.uint8)
    boxes = np.array([[10, 10, 29, 39], [60, 20, 89, 29]], float)
    for x1, y1, x2, y2 in boxes.astype(int):
        image[y1:y2 + 1, x1:x2 + 1] = 255
    path = str(tmp_path / "rect.png")
    cv2.imwrite(path, image)
    return DetectionImage(image_id=7, image_path=path, image_size=(100, 60), boxes=boxes,
                          labels=np.array([0, 1]), ann_ids=np.array([1, 2]))


def _pixel_box(channel: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(channel >= 128)
    return [xs.min(), ys.min(), xs.max(), ys.max()]


def test_letterbox_scales_widths_exactly_and_maps_back(rect_image):
    ds = DetectionTransformDataset([rect_image], (64, 64))
    s = ds[0]
    # Fit 100 x 60 into 64 x 64: scale 0.64, centred; widths scale exactly (20 -> 12.8, 30 -> 19.2).
    bw, bh = box_width_height(s["boxes"].numpy())
    np.testing.assert_allclose(bw, [12.8, 19.2], atol=1e-5)
    np.testing.assert_allclose(bh, [19.2, 6.4], atol=1e-5)
    back = affine_boxes(s["boxes"].numpy().astype(np.float64), s["input_to_image"].numpy().astype(np.float64))
    np.testing.assert_allclose(back, rect_image.boxes, atol=1e-3)
    assert s["labels"].tolist() == [0, 1] and s["dropped"] == 0 and s["image_size"].tolist() == [100, 60]


def test_flip_moves_boxes_with_the_pixels(rect_image):
    aug = DetectionAugment(flip_prob=1.0, scale_range=[1.0, 1.0], shift_fraction=0.0, photometric="none")
    ds = DetectionTransformDataset([rect_image], (100, 60), train=True, augment=aug)
    s = ds[(0, 123)]
    img = s["image"].numpy()[0]
    # Same size, mirrored: x -> 99 - x. The first box 10..29 becomes 70..89.
    np.testing.assert_allclose(s["boxes"][0].numpy(), [70, 10, 89, 39], atol=1e-4)
    mask = np.zeros_like(img)
    mask[10:40, 70:90] = 1
    assert (img[mask > 0] >= 250).all()
    assert _pixel_box(img * mask) == [70, 10, 89, 39]


def test_zoom_crop_clips_or_drops_boxes_consistently(rect_image):
    # Zoom 2x on the image centre: the view covers x 25..74, y 15..44 of the image. The left box (10..29 x
    # 10..39) keeps 5 of its 20 columns and 25 of its 30 rows (21%) and is dropped at min_visible 0.3; the
    # right one keeps 15 of 30 columns (50%), clipped at the input's right edge.
    m = view_matrix((100, 60), (100, 60), zoom=2.0)
    boxes, keep = transform_boxes(rect_image.boxes, m, (100, 60), min_visible_fraction=0.3)
    assert keep.tolist() == [False, True]
    np.testing.assert_allclose(boxes[0], [70, 10, 99, 29], atol=1e-6)
    boxes, keep = transform_boxes(rect_image.boxes, m, (100, 60), min_visible_fraction=0.0)
    assert keep.tolist() == [True, True]
    np.testing.assert_allclose(boxes[0], [0, 0, 9, 49], atol=1e-6)        # clipped: 5 x 25 pixels, zoomed 2x
    warped = cv2.warpAffine(cv2.imread(rect_image.image_path)[..., 0], m, (100, 60))
    assert _pixel_box(warped[:, :50]) == [0, 0, 9, 49]
    assert _pixel_box(warped[:, 50:])[0] + 50 == 70


def test_training_samples_are_seeded_and_boxes_stay_inside(rect_image):
    aug = DetectionAugment(scale_range=[0.5, 2.0], shift_fraction=0.3)
    ds = DetectionTransformDataset([rect_image] * 4, (64, 64), train=True, augment=aug)
    sampler = SeededSampler(4, seed=3)
    items = list(sampler)
    a, b = ds[items[0]], ds[items[0]]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["boxes"], b["boxes"])
    for item in items:
        s = ds[item]
        bx = s["boxes"].numpy()
        assert (bx[:, :2] >= 0).all() and (bx[:, 2] <= 63).all() and (bx[:, 3] <= 63).all()
        assert len(bx) + s["dropped"] == 2 and len(s["labels"]) == len(bx)


def test_keep_largest_box_never_cuts_the_large_object(rect_image):
    # The hand case: zoom 2x on the centre of the 100 x 60 image into a 100 x 60 input would cut the 20 x 30
    # box at x 10..29 (view x 25..74). It fits the view (50 x 30 image pixels) at zoom 2, so the zoom stays and
    # the view moves left until the box's left edge (9.5) is the view's left edge: centre x 34.5, shift -0.3.
    # Its 30 rows (edges 9.5..39.5) fill the view's 30 rows exactly: centre y 24.5, shift (24.5 - 29.5) / 30.
    zoom, shift = keep_box_in_view((100, 60), (100, 60), 2.0, np.zeros(2), rect_image.boxes[0])
    assert zoom == 2.0
    np.testing.assert_allclose(shift, [(34.5 - 49.5) / 50, (24.5 - 29.5) / 30], atol=1e-9)
    m = view_matrix((100, 60), (100, 60), zoom, shift)
    boxes, keep = transform_boxes(rect_image.boxes[:1], m, (100, 60))
    np.testing.assert_allclose(boxes[0], [0, 0, 39, 59], atol=1e-6)          # whole: 20 x 30 pixels, zoomed 2x
    # A zoom at which the box cannot fit (3x: view 33.3 x 20 pixels < 30 rows) is capped to 2x.
    assert keep_box_in_view((100, 60), (100, 60), 3.0, np.zeros(2), rect_image.boxes[0])[0] == pytest.approx(2.0)
    # Through the dataset: with strong zooms and shifts, the larger box (the 20 x 30 one) is always whole.
    aug = DetectionAugment(scale_range=[1.0, 4.0], shift_fraction=0.5, min_visible_fraction=0.3,
                           photometric="none", keep_largest_box=True)
    cut = DetectionTransformDataset([rect_image], (64, 64), train=True, augment=DetectionAugment(
        scale_range=[1.0, 4.0], shift_fraction=0.5, min_visible_fraction=0.3, photometric="none"))
    kept = DetectionTransformDataset([rect_image], (64, 64), train=True, augment=aug)
    lost = 0
    for seed in range(40):
        s = kept[(0, seed)]
        assert 0 in s["labels"].tolist()
        back = affine_boxes(s["boxes"].numpy().astype(np.float64), s["input_to_image"].numpy().astype(np.float64))
        np.testing.assert_allclose(back[s["labels"].numpy() == 0][0], rect_image.boxes[0], atol=1e-3)
        lost += 0 not in cut[(0, seed)]["labels"].tolist()
    assert lost > 10                                          # without the option, it is often dropped


def test_collate_pads_to_one_n_with_a_mask():
    def sample(n, i):
        return {"image": torch.zeros(3, 8, 8, dtype=torch.uint8), "boxes": torch.arange(4 * n).float().reshape(n, 4),
                "labels": torch.arange(n), "input_to_image": torch.eye(2, 3), "image_size": torch.tensor([8, 8]),
                "image_id": i, "index": i, "dropped": 0}
    batch = collate_detection([sample(3, 1), None, sample(0, 2)])
    assert batch["boxes"].shape == (2, 3, 4) and batch["mask"].tolist() == [[True] * 3, [False] * 3]
    assert batch["image_id"].tolist() == [1, 2]
    empty = collate_detection([sample(0, 1), sample(0, 2)])
    assert empty["boxes"].shape == (2, 1, 4) and not empty["mask"].any()
    capped = collate_detection([sample(5, 1)], max_objects=2)
    assert capped["boxes"].shape == (1, 2, 4) and capped["truncated"] == 3
    assert collate_detection([None]) is None


def test_synthetic_detection_set_is_deterministic_and_tight(tiny_synthetic_detection, tmp_path):
    from datasets.synthetic_detection import ensure_synthetic_detection_dataset

    spec = tiny_synthetic_detection["spec"]
    again = ensure_synthetic_detection_dataset(str(tmp_path / "again"), spec)
    first = open(tiny_synthetic_detection["val"]).read()
    assert open(again["val"]).read() == first
    data = load_coco_detection(tiny_synthetic_detection["val"], tiny_synthetic_detection["images"])
    assert data.num_classes == 4 and data.num_objects > 10
    sizes = np.concatenate([box_width_height(im.boxes)[0] for im in data.images])
    assert sizes.min() < 16 and sizes.max() > 24                          # small and larger objects
