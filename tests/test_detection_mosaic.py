"""Mosaic, mixup and close_mosaic (datasets/detection_transforms.py): hand-placed tiles and boxes through
their pixel edges, clipping and drops, keep_largest_box, the blend, the closing epoch, seeding, and the
plain sample unchanged when both are off."""

from __future__ import annotations

import glob
import os

import cv2
import numpy as np
import pytest
import torch

from datasets.affine import invert_affine
from datasets.coco_detection import DetectionImage
from datasets.detection_transforms import (
    DetectionAugment,
    DetectionTransformDataset,
    DetectionView,
    EpochSeededSampler,
    MixPlan,
    closed_epochs,
    keep_boxes_on_canvas,
    letterbox_scale,
    mixup,
    mosaic_layout,
    transform_boxes,
    view_matrix,
)
from datasets.sampler import SeededSampler
from datasets.topdown_augment import photometric_transform
from models.bbox import affine_boxes, box_width_height
from models.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The hand-made mosaic: input 40 x 40 (canvas 80 x 80), tiles meeting at (29.5, 49.5).
INPUT = (40, 40)
CENTRE = (29.5, 49.5)


def _image(tmp_path, name, size, grey, box, label) -> DetectionImage:
    """A ``size`` (w, h) image of one grey level with its one box painted white."""
    image = np.full((size[1], size[0], 3), grey, np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2 + 1, x1:x2 + 1] = 255
    path = str(tmp_path / f"{name}.png")
    cv2.imwrite(path, image)
    return DetectionImage(image_id=label + 1, image_path=path, image_size=size, boxes=np.array([box], float),
                          labels=np.array([label]), ann_ids=np.array([label + 1]))


@pytest.fixture()
def four_images(tmp_path):
    """Four images with one box each (label = position), sized so that the tiles scale by 1, 0.5, 1, 1."""
    return [_image(tmp_path, "a", (40, 40), 50, (4, 10, 23, 29), 0),      # top-left, 20 x 20
            _image(tmp_path, "b", (80, 40), 100, (10, 4, 29, 23), 1),     # top-right, scale 0.5
            _image(tmp_path, "c", (20, 40), 150, (0, 20, 19, 39), 2),     # bottom-left, reaches below the canvas
            _image(tmp_path, "d", (40, 40), 200, (30, 35, 39, 39), 3)]    # bottom-right, entirely below it


def _mosaic_set(images, **augment) -> DetectionTransformDataset:
    return DetectionTransformDataset(images, INPUT, train=True, augment=DetectionAugment(photometric="none", **augment))


def _white_box(channel: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(channel == 255)
    return [xs.min(), ys.min(), xs.max(), ys.max()]


def test_mosaic_layout_puts_each_tile_at_the_centre_through_its_edges():
    m = mosaic_layout([(40, 40), (80, 40), (20, 40), (40, 40)], INPUT, CENTRE)
    # x -> left edge + (x + 0.5) * f: the first tile ends at the centre (its left edge 29.5 - 40 = -10.5, cut
    # by the canvas at -0.5), the second (80 x 40 at scale 0.5: 40 x 20) starts there, 20 rows above cy.
    np.testing.assert_allclose(m[0], [[1, 0, -10.0], [0, 1, 10.0]])
    np.testing.assert_allclose(m[1], [[0.5, 0, 29.75], [0, 0.5, 29.75]])
    np.testing.assert_allclose(m[2], [[1, 0, 10.0], [0, 1, 50.0]])
    np.testing.assert_allclose(m[3], [[1, 0, 30.0], [0, 1, 50.0]])
    # A box's pixel edges land where the hand says: the second image's [10, 4, 29, 23] has edges 9.5..29.5
    # and 3.5..23.5, i.e. 29.5 + 10 * 0.5 = 34.5 .. 29.5 + 30 * 0.5 = 44.5 and 31.5 .. 41.5 on the canvas.
    np.testing.assert_allclose(affine_boxes(np.array([10.0, 4, 29, 23]), m[1]), [35, 32, 44, 41])


def test_hand_made_mosaic_boxes_and_pixels(four_images):
    # zoom 0.5 shows the whole 80 x 80 canvas at half size: an edge e goes to (e + 0.5) / 2 - 0.5.
    ds = _mosaic_set(four_images, min_visible_fraction=0.3)
    view = ds.mosaic_view([0, 1, 2, 3], CENTRE, 0.5, (0, 0), False)
    # A: canvas edges x -6.5..13.5 (cut at the canvas edge -0.5: 14 of 20 columns, 70 %), y 19.5..39.5.
    # B: canvas edges 34.5..44.5 x 31.5..41.5, halved: 17..22 x 15.5..20.5 (5 x 5 = 20 x 20 pixels x 0.5 x 0.5).
    # C: canvas edges 9.5..29.5 x 69.5..89.5, cut at 79.5 (half of it left). D: entirely below the canvas.
    a, b, c = [0, 10, 6, 19], [17.5, 16, 21.5, 20], [5, 35, 14, 39]
    np.testing.assert_allclose(view.boxes, [a, b, c], atol=1e-9)
    assert view.labels.tolist() == [0, 1, 2] and view.dropped == 1
    # The pixels moved with the boxes: the white boxes of the first and third images are where A and C are.
    img = view.image[..., 0]
    assert _white_box(img[:25, :15]) == a and _white_box(img[25:, :15]) == [5, 35 - 25, 14, 39 - 25]
    # Each tile fills its quadrant only where the image is; the rest (beyond the tile or the canvas) is black.
    assert img[6, 10] == 50 and img[2, 2] == 0            # tile 0; above it (its top edge is at canvas 9.5)
    assert img[6, 14] == 50 and img[6, 15] == 0           # the quadrant boundary: canvas 29.5 = input 14.5
    assert img[5, 30] == 0 and img[20, 30] == 100         # above the 20-row tile 1; in it
    assert img[30, 2] == 0 and img[30, 8] == 150 and img[30, 30] == 200
    # The input -> image matrix is the sample's own (tile 0): A's visible part is the image box's right 14 columns.
    back = affine_boxes(np.array(a, float), invert_affine(view.matrix))
    np.testing.assert_allclose(back, [10, 10, 23, 29], atol=1e-9)
    # The view moved left by a quarter (20 canvas pixels): the canvas's left edge -0.5 is at input 9.5. The first
    # image reaches beyond it (to canvas -10.5) but is cut there, box (A: canvas edges -0.5..13.5, input
    # 9.5..16.5) and pixels alike: black, not white, left of input column 10.
    wide = ds.mosaic_view([0, 1, 2, 3], CENTRE, 0.5, (-0.25, 0), False)
    np.testing.assert_allclose(wide.boxes[0], [10, 10, 16, 19], atol=1e-9)
    assert _white_box(wide.image[:25, :25, 0]) == [10, 10, 16, 19] and wide.image[12, :10].max() == 0
    # A stricter min_visible_fraction drops C (50 % visible) too, and counts it.
    strict = _mosaic_set(four_images, min_visible_fraction=0.6).mosaic_view([0, 1, 2, 3], CENTRE, 0.5, (0, 0), False)
    np.testing.assert_allclose(strict.boxes, [a, b], atol=1e-9)
    assert strict.labels.tolist() == [0, 1] and strict.dropped == 2


def test_mosaic_crop_clips_and_drops_a_mostly_cut_box(four_images):
    # Native size (zoom 1), view centre moved by (-0.25, 0.25) of its 40 pixels onto the mosaic centre: the view
    # shows canvas edges 9.5..49.5 x 29.5..69.5, so input = canvas - (10, 30).
    # A: canvas cut at -0.5 and view cut at 9.5 leave columns 9.5..13.5, rows 29.5..39.5: 4 x 10 of its 20 x 20
    # pixels (10 %). B (34.5..44.5 x 31.5..41.5) is whole. C is below the view, D below the canvas.
    ds = _mosaic_set(four_images, min_visible_fraction=0.3)
    view = ds.mosaic_view([0, 1, 2, 3], CENTRE, 1.0, (-0.25, 0.25), False)
    np.testing.assert_allclose(view.boxes, [[25, 2, 34, 11]], atol=1e-9)
    assert view.labels.tolist() == [1] and view.dropped == 3
    assert _white_box(view.image[:, 20:, 0]) == [25 - 20, 2, 34 - 20, 11]      # B's white pixels, right of 19.5
    loose = _mosaic_set(four_images, min_visible_fraction=0.05)
    view = loose.mosaic_view([0, 1, 2, 3], CENTRE, 1.0, (-0.25, 0.25), False)
    np.testing.assert_allclose(view.boxes, [[0, 0, 3, 9], [25, 2, 34, 11]], atol=1e-9)
    assert view.labels.tolist() == [0, 1] and view.dropped == 2
    assert _white_box(view.image[:, :20, 0]) == [0, 0, 3, 9]
    # Mirrored: u -> 39 - u, boxes and pixels alike.
    flipped = loose.mosaic_view([0, 1, 2, 3], CENTRE, 1.0, (-0.25, 0.25), True)
    np.testing.assert_allclose(flipped.boxes, [[36, 0, 39, 9], [5, 2, 14, 11]], atol=1e-9)
    assert _white_box(flipped.image[:, :20, 0]) == [5, 2, 14, 11]
    assert np.array_equal(flipped.image, view.image[:, ::-1])


def test_keep_boxes_on_canvas_hand_case():
    # A top-left tile's box at its image's top-left corner ends on the canvas edge only when the tile's left
    # edge is -0.5: cx - 40 = -0.5. A bottom-right tile's box at its image's far corner: cx + 40 <= 79.5.
    boxes = [np.array([0.0, 0, 9, 9]), None, None, np.array([30.0, 30, 39, 39])]
    sizes = [(40, 40)] * 4
    np.testing.assert_allclose(keep_boxes_on_canvas(sizes, INPUT, CENTRE, boxes), [39.5, 39.5])
    np.testing.assert_allclose(keep_boxes_on_canvas(sizes, INPUT, CENTRE, [boxes[0], None, None, None]), [39.5, 49.5])
    np.testing.assert_allclose(keep_boxes_on_canvas(sizes, INPUT, CENTRE, [None] * 4), CENTRE)


@pytest.fixture()
def large_boxes(tmp_path):
    """Four images of different shapes, each with a large box (label = its index) near a border and a small one."""
    specs = [((100, 60), (2, 5, 61, 54)), ((60, 100), (10, 40, 57, 97)), ((80, 80), (30, 0, 79, 45)),
             ((120, 40), (0, 2, 69, 37))]
    images = []
    for k, (size, box) in enumerate(specs):
        image = np.full((size[1], size[0], 3), 60 + 40 * k, np.uint8)
        path = str(tmp_path / f"large{k}.png")
        cv2.imwrite(path, image)
        images.append(DetectionImage(image_id=k, image_path=path, image_size=size,
                                     boxes=np.array([box, [box[0], box[1], box[0] + 3, box[1] + 3]], float),
                                     labels=np.array([k, 9]), ann_ids=np.array([2 * k, 2 * k + 1])))
    return images


def _largest_boxes_whole(ds: DetectionTransformDataset, images, index: int, seed: int) -> bool:
    """Whether every tile's large box is in the sample at its full size: w * (tile scale) * (view scale)."""
    plan = ds.mix_plan(index, seed)
    s = ds[(index, seed)]
    view_scale = 1 / (abs(float(s["input_to_image"][0, 0])) * letterbox_scale(images[index].image_size, INPUT))
    labels, (bw, bh) = s["labels"].numpy(), box_width_height(s["boxes"].numpy().astype(np.float64))
    for j in set(plan.mosaic):
        rec = images[j]
        f = letterbox_scale(rec.image_size, INPUT) * view_scale
        w, h = box_width_height(rec.boxes[0])
        found = labels == j
        if found.sum() != plan.mosaic.count(j) or not (np.allclose(bw[found], w * f, atol=1e-3)
                                                       and np.allclose(bh[found], h * f, atol=1e-3)):
            return False
    return True


def test_keep_largest_box_holds_in_every_mosaic(large_boxes):
    options = dict(mosaic_prob=1.0, scale_range=[1.0, 3.0], shift_fraction=0.5, min_visible_fraction=0.3)
    kept = _mosaic_set(large_boxes, keep_largest_box=True, **options)
    cut = _mosaic_set(large_boxes, **options)
    lost = 0
    for seed in range(40):
        assert kept.mix_plan(seed % 4, seed).mosaic
        assert _largest_boxes_whole(kept, large_boxes, seed % 4, seed), seed
        lost += not _largest_boxes_whole(cut, large_boxes, seed % 4, seed)
    assert lost > 10                                          # without the option, they are often cut


def test_mixup_blends_the_images_and_joins_the_boxes():
    a_image = np.arange(48, dtype=np.uint8).reshape(4, 4, 3) * 5
    a = DetectionView(a_image, np.array([[0.0, 0, 1, 1]]), np.array([0]), np.eye(2, 3), (4, 4), 1)
    b = DetectionView(np.full((4, 4, 3), 201, np.uint8), np.array([[2.0, 2, 3, 3], [0, 1, 2, 3]]), np.array([5, 6]),
                      2 * np.eye(2, 3), (8, 8), 2)
    out = mixup(a, b, 0.3)
    # 0.3 * a + 0.7 * 201 rounded: a = 0 -> 140.7 -> 141, a = 5 -> 142.2 -> 142, a = 235 -> 211.2 -> 211.
    assert out.image.dtype == np.uint8
    assert out.image[0, 0, 0] == 141 and out.image[0, 0, 1] == 142 and out.image[3, 3, 2] == 211
    np.testing.assert_array_equal(out.image, np.rint(0.3 * a_image + 0.7 * 201).astype(np.uint8))
    np.testing.assert_array_equal(out.boxes, [[0, 0, 1, 1], [2, 2, 3, 3], [0, 1, 2, 3]])
    assert out.labels.tolist() == [0, 5, 6] and out.dropped == 3
    assert out.image_size == (4, 4) and np.array_equal(out.matrix, a.matrix)


def test_mixup_sample_is_the_blend_of_the_two_plain_samples(large_boxes):
    ds = _mosaic_set(large_boxes, mixup_prob=1.0)
    plain = _mosaic_set(large_boxes)
    weights = []
    for seed in range(6):
        plan = ds.mix_plan(seed % 4, seed)
        assert not plan.mosaic and plan.mixup is not None
        s, a, b = ds[(seed % 4, seed)], plain[(seed % 4, seed)], plain[plan.mixup]
        w = plan.weight
        expected = np.rint(w * a["image"].numpy().astype(np.float64) + (1 - w) * b["image"].numpy())
        assert torch.equal(s["image"], torch.from_numpy(expected.astype(np.uint8)))
        assert torch.equal(s["boxes"], torch.cat([a["boxes"], b["boxes"]]))
        assert torch.equal(s["labels"], torch.cat([a["labels"], b["labels"]]))
        assert s["dropped"] == a["dropped"] + b["dropped"]
        assert torch.equal(s["input_to_image"], a["input_to_image"]) and s["image_id"] == a["image_id"]
        weights.append(w)
    # Beta(32, 32): about 0.5 +- 0.06.
    many = [ds.mix_plan(0, seed).weight for seed in range(300)]
    assert 0.45 < np.mean(many) < 0.55 and 0.03 < np.std(many) < 0.09 and min(many) > 0.25 and max(many) < 0.75


def test_close_mosaic_switches_off_at_the_right_epoch(large_boxes):
    assert [closed_epochs(0.1, 100), closed_epochs(0.1, 15), closed_epochs(0.2, 10), closed_epochs(0.0, 50),
            closed_epochs(1.0, 7)] == [10, 2, 2, 0, 7]
    options = dict(mosaic_prob=1.0, mixup_prob=1.0, close_mosaic=0.2)
    ds = DetectionTransformDataset(large_boxes, INPUT, train=True, augment=DetectionAugment(**options), epochs=10)
    plain = DetectionTransformDataset(large_boxes, INPUT, train=True, augment=DetectionAugment())
    for epoch in range(10):
        plan = ds.mix_plan(1, 17, epoch)
        assert (plan.mosaic != () and plan.mixup is not None) == (epoch < 8), epoch
    s7, s8, s9 = ds[(1, 17, 7)], ds[(1, 17, 8)], ds[(1, 17, 9)]
    assert len(s7["boxes"]) > 2                                   # mosaic and mixup: more than one image's boxes
    for s in (s8, s9):
        assert all(torch.equal(s[k], plain[(1, 17)][k]) for k in ("image", "boxes", "labels"))
    # Through the detection loader: its sampler hands each sample the epoch the loop set.
    from engine.tasks.detection.build import make_loader

    loader = make_loader(ds, batch_size=4, shuffle=True, seed=3, num_workers=0)
    assert isinstance(loader.sampler, EpochSeededSampler)
    for epoch, mixing in ((7, True), (8, False)):
        loader.sampler.set_epoch(epoch)
        items = list(loader.sampler)
        assert len(items) == 4 and all(item[2] == epoch for item in items)
        batch = next(iter(loader))
        assert (int(batch["mask"].sum()) > 8) == mixing           # 4 images x 2 boxes without mosaic and mixup
    # close_mosaic is a fraction of the epochs: the dataset must be told how many.
    with pytest.raises(ConfigError, match="epochs"):
        DetectionTransformDataset(large_boxes, INPUT, train=True, augment=DetectionAugment(**options))


def test_epoch_sampler_is_the_seeded_sampler_plus_the_epoch():
    a, b = EpochSeededSampler(10, seed=4, rank=1, num_replicas=3), SeededSampler(10, seed=4, rank=1, num_replicas=3)
    for epoch in (0, 5):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        assert list(a) == [(i, s, epoch) for i, s in b]


def test_same_seed_and_epoch_give_the_same_sample(large_boxes):
    options = DetectionAugment(mosaic_prob=0.7, mixup_prob=0.5, photometric="light", close_mosaic=0.1)
    first = DetectionTransformDataset(large_boxes, INPUT, train=True, augment=options, epochs=20)
    again = DetectionTransformDataset(large_boxes, INPUT, train=True, augment=options, epochs=20)   # a resumed run
    sampler = EpochSeededSampler(4, seed=11)
    mosaics = 0
    for epoch in (0, 1, 18):
        sampler.set_epoch(epoch)
        for item in sampler:
            x, y = first[item], again[item]
            assert all(torch.equal(x[k], y[k]) for k in ("image", "boxes", "labels", "input_to_image"))
            assert x["dropped"] == y["dropped"] and first.mix_plan(*item) == again.mix_plan(*item)
            mosaics += bool(first.mix_plan(*item).mosaic)
    assert mosaics > 0
    # The loader workers give the same batches as the main process.
    from engine.tasks.detection.build import make_loader

    batches = [list(make_loader(first, batch_size=2, shuffle=True, seed=11, num_workers=w)) for w in (0, 2)]
    for p, q in zip(*batches):
        assert torch.equal(p["image"], q["image"]) and torch.equal(p["boxes"], q["boxes"])


def _todays_sample(rec: DetectionImage, aug: DetectionAugment, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The training sample as it was made before mosaic and mixup, written out from its documented draws:
    zoom (log-uniform), shift, flip, then the photometric seed, all from ``default_rng(seed)``."""
    from datasets.detection_transforms import keep_box_in_view
    from models.bbox import box_area

    image = cv2.cvtColor(cv2.imread(rec.image_path), cv2.COLOR_BGR2RGB)
    size = (image.shape[1], image.shape[0])
    rng = np.random.default_rng(seed)
    zoom = float(np.exp(rng.uniform(np.log(aug.scale_range[0]), np.log(aug.scale_range[1]))))
    shift = rng.uniform(-aug.shift_fraction, aug.shift_fraction, size=2)
    flip = bool(rng.random() < aug.flip_prob)
    if aug.keep_largest_box:
        zoom, shift = keep_box_in_view(size, INPUT, zoom, shift, rec.boxes[int(np.argmax(box_area(rec.boxes)))])
    m = view_matrix(size, INPUT, zoom, shift, flip)
    warped = cv2.warpAffine(image, m, INPUT, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=(0, 0, 0))
    boxes, keep = transform_boxes(rec.boxes, m, INPUT, aug.min_visible_fraction)
    photometric = photometric_transform(aug.photometric)
    photometric.set_random_seed(int(rng.integers(2**31)))
    return photometric(image=warped)["image"], boxes, int((~keep).sum())


@pytest.mark.parametrize("keep_largest_box", [False, True])
def test_without_mosaic_and_mixup_the_sample_is_todays(large_boxes, keep_largest_box):
    off = DetectionAugment(keep_largest_box=keep_largest_box, scale_range=[0.5, 2.5], shift_fraction=0.4)
    on = DetectionAugment(keep_largest_box=keep_largest_box, scale_range=[0.5, 2.5], shift_fraction=0.4,
                          mosaic_prob=0.3, mixup_prob=0.3)
    ds_off = DetectionTransformDataset(large_boxes, INPUT, train=True, augment=off)
    ds_on = DetectionTransformDataset(large_boxes, INPUT, train=True, augment=on, epochs=5)
    undrawn = 0
    for seed in range(24):
        index = seed % 4
        image, boxes, dropped = _todays_sample(large_boxes[index], off, seed)
        for s in (ds_off[(index, seed)], ds_off[(index, seed, 2)]):
            assert np.array_equal(s["image"].numpy().transpose(1, 2, 0), image)
            assert torch.equal(s["boxes"], torch.from_numpy(boxes.astype(np.float32)))
            assert s["dropped"] == dropped
        # With the options on, a sample that draws neither is still today's (their draws have their own stream).
        if ds_on.mix_plan(index, seed, 2) == MixPlan():
            undrawn += 1
            s = ds_on[(index, seed, 2)]
            assert np.array_equal(s["image"].numpy().transpose(1, 2, 0), image) and s["dropped"] == dropped
    assert undrawn >= 5


def test_shipped_configs_keep_mosaic_and_mixup_off_and_bad_values_are_refused():
    from engine.tasks.registry import load_config

    configs = sorted(glob.glob(os.path.join(REPO, "configs", "centernet-*.yaml")))
    assert configs
    for path in configs:
        aug = load_config(path).data.augment
        assert (aug.mosaic_prob, aug.mixup_prob, aug.close_mosaic) == (0, 0, 0), path
    for key, value in (("mosaic_prob", 1.5), ("mixup_prob", -0.1), ("close_mosaic", 2)):
        with pytest.raises(ConfigError, match=f"data.augment.{key}"):
            load_config(configs[0], [f"data.augment.{key}={value}"])
