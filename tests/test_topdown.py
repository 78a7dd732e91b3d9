"""Top-down samples: the crop matrix round trip, reproducible augmentation, flips that mirror and swap,
keypoints leaving the crop get no weight, bad images, the seeded sampler and the photometric presets."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from datasets.affine import apply_affine
from datasets.coco_keypoints import load_coco_keypoints
from datasets.sampler import SeededSampler, sample_seed
from datasets.skeletons import COCO_FLIP_INDEX, COCO_KEYPOINT_NAMES, COCO_UPPER_BODY_IDS
from datasets.topdown import TopDownKeypointDataset, check_flip_index, collate_skipping_none
from datasets.topdown_augment import TopDownAugment, photometric_transform
from models.bbox import box_width_height
from models.errors import ConfigError, DataError
from models.heatmap_codec import HeatmapCodec

INPUT = (48, 64)        # (w, h): not square, so a w/h mix-up shows
HEATMAP = (12, 16)


def _no_aug(**changes) -> TopDownAugment:
    """Training geometry with everything off; switch on only what a test is about."""
    base = dict(flip_prob=0.0, scale_range=[1.0, 1.0], rotation_prob=0.0, shift_prob=0.0, half_body_prob=0.0,
                photometric="none")
    return TopDownAugment(**{**base, **changes})


@pytest.fixture(scope="module")
def instances(tiny_synthetic):
    ds = load_coco_keypoints(tiny_synthetic["train"], tiny_synthetic["images"])
    assert len(ds.instances) >= 8
    return ds.instances[:8]


def _dataset(instances, **kwargs) -> TopDownKeypointDataset:
    return TopDownKeypointDataset(instances, INPUT, COCO_FLIP_INDEX, **kwargs)


def test_eval_sample_shapes_and_crop_to_image_round_trip(instances):
    ds = _dataset(instances)
    assert len(ds) == len(instances)
    for i, inst in enumerate(instances):
        s = ds[i]
        assert s["image"].dtype == torch.uint8 and s["image"].shape == (3, INPUT[1], INPUT[0])
        assert s["keypoints"].dtype == torch.float32 and s["keypoints"].shape == (17, 3)
        assert s["crop_to_image"].dtype == torch.float32 and s["crop_to_image"].shape == (2, 3)
        assert s["image_id"] == inst.image_id and s["ann_id"] == inst.ann_id and s["index"] == i
        torch.testing.assert_close(s["bbox"], torch.from_numpy(inst.bbox).float())
        labelled = inst.keypoints[:, 2] > 0
        np.testing.assert_array_equal(s["keypoints"][:, 2].numpy(), inst.keypoints[:, 2])
        back = apply_affine(s["keypoints"][:, :2].double(), s["crop_to_image"].double()).numpy()
        np.testing.assert_allclose(back[labelled], inst.keypoints[labelled, :2], atol=1e-3)
        # The output centre comes from the box centre; the box (padded) lies inside the crop.
        centre = apply_affine(np.array([[(INPUT[0] - 1) / 2, (INPUT[1] - 1) / 2]]), s["crop_to_image"].double().numpy())
        np.testing.assert_allclose(centre[0], [(inst.bbox[0] + inst.bbox[2]) / 2, (inst.bbox[1] + inst.bbox[3]) / 2],
                                   atol=1e-3)
        kp = s["keypoints"][labelled]
        assert (kp[:, 0] >= -0.5).all() and (kp[:, 0] <= INPUT[0] - 0.5).all()
        assert (kp[:, 1] >= -0.5).all() and (kp[:, 1] <= INPUT[1] - 0.5).all()
    # The crop image is not blank (the warp read the right file).
    assert ds[0]["image"].float().std() > 5


def test_train_with_everything_off_equals_eval(instances):
    plain, train = _dataset(instances), _dataset(instances, train=True, augment=_no_aug())
    for i in range(3):
        a, b = plain[i], train[(i, 1234)]
        torch.testing.assert_close(a["image"], b["image"])
        torch.testing.assert_close(a["keypoints"], b["keypoints"])
        torch.testing.assert_close(a["crop_to_image"], b["crop_to_image"])


def test_training_samples_reproducible_per_seed(instances):
    ds = _dataset(instances, train=True, augment=TopDownAugment(photometric="strong"))
    for i in (0, 3):
        a, b = ds[(i, 77)], ds[(i, 77)]
        for key in ("image", "keypoints", "crop_to_image"):
            torch.testing.assert_close(a[key], b[key])
        others = [ds[(i, s)] for s in (78, 79)]
        for o in others:
            assert not torch.equal(o["crop_to_image"], a["crop_to_image"])
            assert not torch.equal(o["image"], a["image"])
    # A fresh dataset object (another worker) gives the same sample for the same (index, seed).
    again = _dataset(instances, train=True, augment=TopDownAugment(photometric="strong"))[(3, 77)]
    torch.testing.assert_close(again["image"], ds[(3, 77)]["image"])


def test_flip_mirrors_and_swaps_left_right(instances):
    plain = _dataset(instances)
    flipped = _dataset(instances, train=True, augment=_no_aug(flip_prob=1.0))
    flip = np.asarray(COCO_FLIP_INDEX)
    for i, inst in enumerate(instances[:4]):
        a, b = plain[i], flipped[(i, 5)]
        ka, kb = a["keypoints"].numpy(), b["keypoints"].numpy()
        # Keypoint k of the flipped crop is the mirrored partner of the unflipped crop.
        np.testing.assert_allclose(kb[:, 0], INPUT[0] - 1 - ka[flip, 0], atol=1e-4)
        np.testing.assert_allclose(kb[:, 1], ka[flip, 1], atol=1e-4)
        np.testing.assert_array_equal(kb[:, 2], ka[flip, 2])
        # Pixels are mirrored the same way (bilinear rounding aside).
        diff = (b["image"].float() - a["image"].flip(-1).float()).abs()
        assert diff.mean() < 0.5 and diff.max() <= 3
        # Mapping back gives the image position of the partner: "left_shoulder" is found where the right was.
        back = apply_affine(b["keypoints"][:, :2].double(), b["crop_to_image"].double()).numpy()
        labelled = kb[:, 2] > 0
        np.testing.assert_allclose(back[labelled], inst.keypoints[flip][labelled, :2], atol=1e-3)


def test_check_flip_index():
    assert check_flip_index(COCO_FLIP_INDEX, 17) == COCO_FLIP_INDEX
    assert check_flip_index([0, 1, 2], 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="has 16 entries but the data has 17"):
        check_flip_index(COCO_FLIP_INDEX[:-1], 17)
    with pytest.raises(ValueError, match="not a permutation"):
        check_flip_index([0, 0, 2], 3)
    with pytest.raises(ValueError, match=r"not its own inverse: 0 -> 1 but 1 -> 2 \(a -> b -> c\)"):
        check_flip_index([1, 2, 0], 3, names=["a", "b", "c"])
    bad = list(COCO_FLIP_INDEX)
    bad[5], bad[6], bad[7], bad[8] = 7, 5, 6, 8      # a 3-cycle: still a permutation
    with pytest.raises(ValueError, match="left_shoulder -> left_elbow -> right_shoulder"):
        check_flip_index(bad, 17, names=COCO_KEYPOINT_NAMES)
    with pytest.raises(ValueError, match="not a permutation"):
        TopDownKeypointDataset([], INPUT, [0, 0, 1])


def test_bad_image_error_or_skip(instances, tmp_path):
    garbage = tmp_path / "corrupt.jpg"
    garbage.write_bytes(b"\x00\x01garbage, not an image" * 10)
    bad = dataclasses.replace(instances[1], image_path=str(garbage))
    mixed = [instances[0], bad, instances[2]]
    with pytest.raises(DataError, match=r"corrupt\.jpg \(not a decodable image; image_id"):
        _dataset(mixed)[1]
    with pytest.raises(ValueError, match="on_bad_image"):
        _dataset(mixed, on_bad_image="ignore")
    ds = _dataset(mixed, on_bad_image="skip")
    with pytest.warns(UserWarning, match=r"corrupt\.jpg"):
        assert ds[1] is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = collate_skipping_none([ds[i] for i in range(3)])
    assert batch["image"].shape == (2, 3, INPUT[1], INPUT[0])
    assert batch["ann_id"].tolist() == [instances[0].ann_id, instances[2].ann_id]
    assert collate_skipping_none([None, None]) is None


def _inside(kpts: torch.Tensor) -> torch.Tensor:
    x, y = kpts[..., 0], kpts[..., 1]
    return (x >= -0.5) & (x <= INPUT[0] - 0.5) & (y >= -0.5) & (y <= INPUT[1] - 0.5)


def test_keypoint_outside_box_gets_no_weight(instances):
    inst = instances[0]
    kpts = inst.keypoints.copy()
    box_w = inst.bbox[2] - inst.bbox[0] + 1
    kpts[0] = [inst.bbox[2] + 2 * box_w, (inst.bbox[1] + inst.bbox[3]) / 2, 2]    # far right of the box
    moved = dataclasses.replace(inst, keypoints=kpts)
    s = _dataset([moved])[0]
    assert s["keypoints"][0, 0] > INPUT[0] - 0.5
    codec = HeatmapCodec(INPUT, HEATMAP)
    heat, weights = codec.encode(s["keypoints"][None])
    labelled = torch.from_numpy(kpts[:, 2] > 0)
    assert weights[0, 0] == 0 and heat[0, 0].abs().max() == 0
    torch.testing.assert_close(weights[0], (labelled & _inside(s["keypoints"])).float())
    assert weights[0, 1:].sum() == labelled[1:].sum()


def test_keypoints_shifted_out_by_augmentation_get_no_weight(instances):
    ds = _dataset(instances[:4], train=True, augment=_no_aug(shift_prob=1.0, shift_fraction=0.6))
    codec = HeatmapCodec(INPUT, HEATMAP)
    batch = collate_skipping_none([ds[(i, seed)] for i in range(4) for seed in range(6)])
    kpts = batch["keypoints"]
    heat, weights = codec.encode(kpts)
    labelled = kpts[..., 2] > 0
    out = labelled & ~_inside(kpts)
    assert out.any(), "the shift should push some labelled keypoints out of some crops"
    assert (labelled & _inside(kpts)).any()
    torch.testing.assert_close(weights, (labelled & _inside(kpts)).float())
    assert heat[out].abs().max() == 0


def _crop_centre_and_width(sample) -> tuple[np.ndarray, float]:
    m = sample["crop_to_image"].double().numpy()
    centre = apply_affine(np.array([[(INPUT[0] - 1) / 2, (INPUT[1] - 1) / 2]]), m)[0]
    return centre, m[0, 0] * INPUT[0]      # no rotation: crop width = scale * w_out


def test_half_body_only_with_upper_body_ids(instances):
    aug = _no_aug(half_body_prob=1.0, half_body_min_keypoints=3)
    plain = _dataset(instances)
    without = _dataset(instances, train=True, augment=aug)
    for i in range(len(instances)):
        torch.testing.assert_close(without[(i, 3)]["crop_to_image"], plain[i]["crop_to_image"])

    with_ids = _dataset(instances, train=True, augment=aug, upper_body_ids=COCO_UPPER_BODY_IDS)
    upper, lower = np.array(COCO_UPPER_BODY_IDS), np.arange(11, 17)
    halves = 0
    for i, inst in enumerate(instances):
        for seed in (3, 4):
            s = with_ids[(i, seed)]
            centre, width = _crop_centre_and_width(s)
            labelled = inst.keypoints[:, 2] > 0
            candidates = []     # (keypoint ids, centre of their labelled extent)
            for part in (upper, lower):
                pts = inst.keypoints[part][labelled[part], :2]
                if len(pts) >= 2:
                    candidates.append((part, (pts.min(0) + pts.max(0)) / 2))
            match = [part for part, c in candidates if np.allclose(centre, c, atol=1e-3)]
            if match:
                halves += 1
                # A half-body crop differs from the full one and holds the keypoints it was built around.
                assert not np.isclose(width, _crop_centre_and_width(plain[i])[1])
                part = torch.from_numpy(match[0])
                chosen = s["keypoints"][part][s["keypoints"][part, 2] > 0]
                assert len(chosen) >= 2 and _inside(chosen).all()
            else:
                torch.testing.assert_close(s["crop_to_image"], plain[i]["crop_to_image"])
    assert halves >= len(instances)


# ------------------------------------------------------------------------------------------- sampler
def test_sampler_seeded_order_and_epochs():
    s = SeededSampler(10, seed=7)
    first = list(s)
    assert sorted(i for i, _ in first) == list(range(10))
    assert list(SeededSampler(10, seed=7)) == first
    assert [seed for _, seed in first] == [sample_seed(7, 0, i) for i, _ in first]
    s.set_epoch(1)
    second = list(s)
    assert [i for i, _ in second] != [i for i, _ in first]
    assert {i: sd for i, sd in second} != {i: sd for i, sd in first}     # new augmentation too
    other = SeededSampler(10, seed=7)
    other.set_epoch(1)
    assert list(other) == second
    assert [i for i, _ in SeededSampler(10, seed=8)] != [i for i, _ in first]
    assert [i for i, _ in SeededSampler(5, shuffle=False)] == [0, 1, 2, 3, 4]


def test_sampler_seed_depends_only_on_seed_epoch_index():
    assert sample_seed(1, 2, 3) == sample_seed(1, 2, 3)
    assert len({sample_seed(1, 2, 3), sample_seed(1, 2, 4), sample_seed(1, 3, 3), sample_seed(2, 2, 3)}) == 4
    assert 0 <= sample_seed(123, 4, 5) < 2**31


@pytest.mark.parametrize("n", [10, 7])
def test_sampler_two_replicas_split_the_permutation(n):
    full = [i for i, _ in SeededSampler(n, seed=3)]
    ranks = [SeededSampler(n, seed=3, rank=r, num_replicas=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(0)
    a, b = [[i for i, _ in r] for r in ranks]
    assert len(a) == len(b) == len(ranks[0]) == -(-n // 2)
    assert set(a) | set(b) == set(range(n))
    padded = full + full[: 2 * len(a) - n]
    assert a == padded[0::2] and b == padded[1::2]
    if n % 2 == 0:
        assert set(a).isdisjoint(b)
    else:   # the one wrapped-around item is the first of the permutation, seen twice
        assert set(a) & set(b) == {full[0]}


def test_sampler_rejects_empty_and_bad_rank():
    with pytest.raises(ValueError, match="empty"):
        SeededSampler(0)
    with pytest.raises(ValueError, match="rank 2"):
        SeededSampler(5, rank=2, num_replicas=2)


# ---------------------------------------------------------------------------------------- photometric
def test_photometric_presets():
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(photometric_transform("none")(image=img.copy())["image"], img)
    with pytest.raises(ValueError, match="'sepia'"):
        photometric_transform("sepia")
    t = photometric_transform("strong")
    outs = []
    for seed in (11, 11, 12, 13, 14):
        t.set_random_seed(seed)
        outs.append(t(image=img.copy())["image"])
    np.testing.assert_array_equal(outs[0], outs[1])
    assert any(not np.array_equal(outs[0], o) for o in outs[2:])
    assert outs[0].shape == img.shape and outs[0].dtype == np.uint8


def test_photometric_does_not_move_keypoints(instances):
    plain = _dataset(instances)
    strong = _dataset(instances, train=True, augment=_no_aug(photometric="strong"))
    changed = 0
    for seed in range(4):
        s = strong[(0, seed)]
        torch.testing.assert_close(s["keypoints"], plain[0]["keypoints"])
        changed += not torch.equal(s["image"], plain[0]["image"])
    assert changed >= 1


def test_jitter_box_moves_edges_within_the_range():
    from datasets.topdown_augment import jitter_box

    box = np.array([10.0, 20.0, 49.0, 99.0])                 # inclusive: 40 x 80 pixels
    rng = np.random.default_rng(0)
    moves = np.array([jitter_box(box, 0.1, rng) - box for _ in range(500)])
    limit = 0.1 * np.array([40, 80, 40, 80])
    assert (np.abs(moves) <= limit + 1e-9).all()
    assert (np.abs(moves).max(0) > 0.9 * limit).all()        # the whole range is used, on every edge
    assert np.abs(moves.mean(0)).max() < 0.1 * limit.max()   # and symmetrically
    np.testing.assert_array_equal(jitter_box(box, 0.0, rng), box)
    wide = np.array([jitter_box(box, 0.45, rng) for _ in range(500)])
    assert (wide[:, 2] - wide[:, 0] + 1 >= 40 / 4 - 1e-9).all() and (wide[:, 3] - wide[:, 1] + 1 >= 80 / 4 - 1e-9).all()
    with pytest.raises(ValueError, match="box_jitter"):
        jitter_box(box, 0.6, rng)


def test_box_jitter_changes_the_crop_only_when_on(instances):
    plain = _dataset(instances)
    off = _dataset(instances, train=True, augment=_no_aug())
    on = _dataset(instances, train=True, augment=_no_aug(box_jitter=0.15))
    moved = 0
    for i, inst in enumerate(instances):
        torch.testing.assert_close(off[(i, 5)]["crop_to_image"], plain[i]["crop_to_image"])
        s = on[(i, 5)]
        centre, width = _crop_centre_and_width(s)
        c0, w0 = _crop_centre_and_width(plain[i])
        # The crop follows the jittered box: its centre moves by at most the jitter of the box (edges move
        # up to 15 % of the box size each, so the centre up to 15 %), its width changes by up to 30 %.
        bw, bh = box_width_height(inst.bbox)
        assert abs(centre[0] - c0[0]) <= 0.15 * bw + 1e-3 and abs(centre[1] - c0[1]) <= 0.15 * bh + 1e-3
        assert 0.69 * w0 <= width <= 1.31 * w0
        moved += not np.allclose(centre, c0, atol=1e-3)
        # The keypoints move with the pixels: crop coordinates mapped back land on the annotation.
        labelled = s["keypoints"][:, 2] > 0
        back = apply_affine(s["keypoints"][:, :2].double().numpy(), s["crop_to_image"].double().numpy())
        np.testing.assert_allclose(back[labelled.numpy()], inst.keypoints[labelled.numpy(), :2], atol=1e-3)
    assert moved == len(instances)


def test_occlusion_and_blur_change_pixels_not_keypoints(instances):
    plain = _dataset(instances)
    occluded = _dataset(instances, train=True, augment=_no_aug(photometric="none", occlusion_prob=1.0, blur_prob=1.0))
    for seed in range(3):
        s = occluded[(0, seed)]
        torch.testing.assert_close(s["keypoints"], plain[0]["keypoints"])
        assert not torch.equal(s["image"], plain[0]["image"])
    # Reproducible per seed, like every other augmentation.
    assert torch.equal(occluded[(0, 5)]["image"], occluded[(0, 5)]["image"])
    with pytest.raises(ConfigError, match="occlusion_prob=1.5"):
        _dataset(instances, train=True, augment=_no_aug(occlusion_prob=1.5))
