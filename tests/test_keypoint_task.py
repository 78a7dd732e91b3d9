"""The keypoint task end to end with an oracle: crop -> encode -> decode -> back to the image -> COCO AP.

An oracle that returns the codec's targets of the true crop keypoints must score AP = 1.0 and put every
labelled keypoint back at its image position: this pins the crop geometry, the codec and the inverse
mapping together, without any training.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from datasets.coco_keypoints import load_coco_keypoints
from datasets.skeletons import COCO_FLIP_INDEX, COCO_SIGMAS
from datasets.topdown import TopDownKeypointDataset, collate_skipping_none
from engine.evaluation.evaluator import evaluate_model
from engine.tasks.keypoints import KeypointMeta, KeypointTask, coco_subset
from models.heatmap_codec import HeatmapCodec


class OracleModel(nn.Module):
    """Returns, for each crop in the batch, the targets of the keypoints it was told about."""

    def __init__(self, codec: HeatmapCodec):
        super().__init__()
        self.codec = codec
        self.anchor = nn.Parameter(torch.zeros(1))     # gives the model a device
        self.keypoints = None

    def forward(self, images):
        kpts = self.keypoints
        if images.data_ptr() != self._last_ptr:        # the flipped crop: mirrored, left/right swapped
            kpts = self.codec.flip_keypoints(kpts, COCO_FLIP_INDEX, images.shape[-1])
        return [self.codec.encode(kpts)[0] + 0 * self.anchor]


@pytest.fixture()
def setup(tiny_synthetic):
    data = load_coco_keypoints(tiny_synthetic["val"], tiny_synthetic["images"])
    input_size = (64, 96)
    codec = HeatmapCodec(input_size, (16, 24), sigma=2.0, refine="dark")
    dataset = TopDownKeypointDataset(data.instances, input_size, COCO_FLIP_INDEX)
    meta = KeypointMeta(data.keypoint_names, data.skeleton, COCO_FLIP_INDEX, COCO_SIGMAS)
    gt = coco_subset(tiny_synthetic["val"], data.image_ids, 1)
    return data, dataset, codec, meta, gt


def _run_oracle(task, dataset, codec, flip_test):
    model = OracleModel(codec)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate_skipping_none)
    records = []
    for batch in loader:
        model.keypoints = batch["keypoints"]
        model._last_ptr = batch["image"].data_ptr()
        out = task.predict_batch(model, batch, flip_test=flip_test)
        for i in range(len(batch["index"])):
            records.append((int(batch["index"][i]), out["keypoints"][i].numpy(), out["scores"][i].numpy()))
    return records


@pytest.mark.parametrize("flip_test", [False, True])
def test_oracle_recovers_image_keypoints(setup, flip_test):
    data, dataset, codec, meta, _ = setup
    task = KeypointTask(codec, meta, flip_test=flip_test, progress=False)
    errors = []
    for index, kpts, scores in _run_oracle(task, dataset, codec, flip_test):
        truth = data.instances[index].keypoints
        # Only keypoints that are labelled and inside the crop get a target (and can be recovered).
        crop = dataset[index]["keypoints"].numpy()
        inside = (truth[:, 2] > 0) & (crop[:, 0] >= 8) & (crop[:, 0] <= 55) & (crop[:, 1] >= 8) & (crop[:, 1] <= 87)
        errors.append(np.linalg.norm(kpts[inside] - truth[inside, :2], axis=1))
        assert (scores[inside] > 0.9).all()
    errors = np.concatenate(errors)
    assert len(errors) > 50
    # In image pixels; a heatmap cell is about 4 / (crop scale) image pixels, DARK gets well below it.
    assert errors.max() < 0.5, errors.max()


def test_oracle_scores_ap_one(setup):
    data, dataset, codec, meta, gt = setup
    task = KeypointTask(codec, meta, flip_test=False, val_gt=gt, progress=False)
    model = OracleModel(codec)

    # Route predict() through the oracle: each batch tells the oracle its true crop keypoints.
    def predict_heatmaps(m, images, flip_test=None):
        return model.codec.encode(model.keypoints)[0]

    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate_skipping_none)

    class Feeding:
        dataset = loader.dataset

        def __iter__(self):
            for batch in loader:
                model.keypoints = batch["keypoints"]
                yield batch

    task.predict_heatmaps = predict_heatmaps
    metrics, evaluator = evaluate_model(task, model, Feeding())
    results = evaluator.results
    assert len(results) == len(dataset)
    assert metrics["AP"] > 0.97, metrics          # keypoints outside the crop are lost, nothing else
    assert metrics["PCK@0.05"] > 0.97


def test_training_step_returns_loss_terms(setup):
    _, dataset, codec, meta, _ = setup
    from models.pose import build_pose_model

    model = build_pose_model(17, "resnet18", (1, 2, 3), fpn_channels=16, num_stacks=2, depth=2, head_channels=16)
    task = KeypointTask(codec, meta, progress=False)
    batch = collate_skipping_none([dataset[i] for i in range(2)])
    out = task.training_step(model, batch)
    assert set(out) >= {"loss", "loss_stack0", "loss_stack1", "batch_size"}
    torch.testing.assert_close(out["loss"], out["loss_stack0"] + out["loss_stack1"])
    out["loss"].backward()
    assert all(p.grad is not None for p in model.head.heatmaps.parameters())


def test_rescoring_uses_confident_keypoints_only(setup):
    _, _, codec, meta, _ = setup
    task = KeypointTask(codec, meta, rescore_threshold=0.2, progress=False)
    scores = np.array([0.9, 0.1, 0.7] + [0.0] * 14)
    rec = {"image_id": 1, "keypoints": np.zeros((17, 2)), "scores": scores, "box_score": 0.5}
    res = task.to_coco_results([rec])[0]
    assert res["score"] == pytest.approx(0.5 * (0.9 + 0.7) / 2)
    assert len(res["keypoints"]) == 51 and res["keypoints"][2] == pytest.approx(0.9)
    # rescore is the one formula: per instance, and 0 when no keypoint is confident.
    batch = np.stack([scores, np.full(17, 0.1)])
    np.testing.assert_allclose(task.rescore(batch, np.array([0.5, 1.0])), [0.5 * 0.8, 0.0])
    assert task.rescore(batch, np.array([0.5, 1.0]))[0] == res["score"]
