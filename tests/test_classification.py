"""Classification parts: input-size policies, masked pooling, the data sets, the task's metrics."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from datasets.image_folder import ImageFolderDataset, scan_image_folder
from datasets.input_policy import collate_padded, fit_to_input
from datasets.sampler import SeededSampler
from datasets.synthetic_classification import (
    SHAPES,
    SyntheticClassificationDataset,
    SyntheticClassificationSpec,
    render_image,
    write_image_folder,
)
from engine.tasks.classification import ClassificationTask
from models.classifier import ImageClassifier, letterbox_fill, masked_average_pool

SPEC = SyntheticClassificationSpec(num_train_images=16, num_val_images=8, min_image_size=40, max_image_size=72)


# ---------------------------------------------------------------------------------------------- input policies
def test_policies_give_the_input_size_and_keep_what_they_promise():
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, :40] = 255                                   # left half white: the aspect ratio is visible
    rng = np.random.default_rng(0)
    out, valid = fit_to_input(image, (32, 32), "resize")
    assert out.shape == (32, 32, 3) and valid == (32, 32) and out[:, :14].min() == 255
    out, _ = fit_to_input(image, (32, 32), "center_crop", crop_scale=1.0)
    assert out.shape == (32, 32, 3) and out[:, :15].min() == 255 and out[:, 17:].max() == 0   # the middle 40 px
    out, _ = fit_to_input(image, (32, 32), "letterbox", fill=(7, 7, 7))
    assert out.shape == (32, 32, 3) and (out[:7] == 7).all() and (out[-7:] == 7).all()      # 32 x 16 + bands
    out, valid = fit_to_input(image, (32, 32), "native")
    assert out.shape == (40, 80, 3) and valid == (40, 80)
    windows = {fit_to_input(image, (32, 32), "random_crop", train=True, rng=rng, crop_scale=1.5)[0].mean()
               for _ in range(8)}
    assert len(windows) > 1, "random crops move"
    a = fit_to_input(image, (32, 32), "random_crop", train=False, crop_scale=1.5)[0]
    b = fit_to_input(image, (32, 32), "center_crop", crop_scale=1.5)[0]
    assert np.array_equal(a, b), "random_crop evaluates on the centre"
    with pytest.raises(ValueError, match="input_policy='stretch'"):
        fit_to_input(image, (32, 32), "stretch")


def test_letterbox_fill_normalises_to_zero():
    model = ImageClassifier("resnet18", 3)
    fill = torch.tensor(letterbox_fill(model.mean), dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert model.normalizer(fill).abs().max() < 0.01


def test_padded_collate_and_masked_pooling():
    feats = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    pooled = masked_average_pool(feats, torch.tensor([[32, 32], [16, 8]]), (32, 32))
    assert pooled[0, 0] == feats[0, 0].mean() and pooled[1, 0] == feats[1, 0, :2, :1].mean()
    samples = [{"image": torch.ones(3, 10, 12, dtype=torch.uint8), "label": 0, "valid_hw": torch.tensor([10, 12])},
               {"image": torch.ones(3, 6, 20, dtype=torch.uint8), "label": 1, "valid_hw": torch.tensor([6, 20])}]
    batch = collate_padded(samples)
    assert batch["image"].shape == (2, 3, 10, 20) and batch["image"][1, :, 6:].sum() == 0
    assert batch["valid_hw"].tolist() == [[10, 12], [6, 20]]


def test_native_size_model_equals_plain_forward_without_padding():
    torch.manual_seed(0)
    model = ImageClassifier("resnet18", 4).eval()
    x = torch.randint(0, 255, (2, 3, 48, 64), dtype=torch.uint8)
    torch.testing.assert_close(model(x, torch.tensor([[48, 64], [48, 64]])), model(x))
    # An image padded into a larger batch pools over its own region only: closer to its own result than
    # plain pooling over the padded canvas.
    alone = model(x[:1])
    padded = torch.zeros(1, 3, 96, 128, dtype=torch.uint8)
    padded[:, :, :48, :64] = x[:1]
    masked = model(padded, torch.tensor([[48, 64]]))
    assert (masked - alone).abs().max() < (model(padded) - alone).abs().max()


def test_normalisation_comes_from_timm_or_is_unit():
    m = ImageClassifier("resnet18", 3)
    assert m.mean == (0.485, 0.456, 0.406)
    white = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    torch.testing.assert_close(m.normalizer(white)[0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.229,
                                                                              (1 - 0.456) / 0.224,
                                                                              (1 - 0.406) / 0.225]))
    unit = ImageClassifier("resnet18", 3, normalization="unit")
    torch.testing.assert_close(unit.normalizer(white), torch.ones(1, 3, 2, 2))
    with pytest.raises(ValueError, match="normalization='imagenet'"):
        ImageClassifier("resnet18", 3, normalization="imagenet")


def test_fixed_size_models_are_built_for_the_input_size():
    vit = ImageClassifier("test_vit", 3, img_size=(32, 48))
    assert vit.fixed_input_size and vit(torch.zeros(1, 3, 32, 48, dtype=torch.uint8)).shape == (1, 3)
    with pytest.raises(ValueError, match="native-size inputs"):
        vit(torch.zeros(1, 3, 32, 48, dtype=torch.uint8), torch.tensor([[32, 40]]))


def test_weights_file_with_another_head_loads_the_rest(tmp_path):
    src = ImageClassifier("resnet18", 10)
    torch.save(src.net.state_dict(), tmp_path / "w.pt")
    dst = ImageClassifier("resnet18", 3, pretrained_path=str(tmp_path / "w.pt"))
    torch.testing.assert_close(dst.net.conv1.weight, src.net.conv1.weight)
    report = dst.load_weights(str(tmp_path / "w.pt"))
    assert report["shape_mismatch"] == ["fc.weight", "fc.bias"]


# ---------------------------------------------------------------------------------------------- data
def test_synthetic_set_is_deterministic_balanced_and_sized():
    a, la = render_image(SPEC, "train", 3)
    b, lb = render_image(SPEC, "train", 3)
    assert np.array_equal(a, b) and la == lb == 3
    assert not np.array_equal(render_image(SPEC, "val", 3)[0][:8, :8], a[:8, :8])
    sizes = {render_image(SPEC, "train", i)[0].shape[:2] for i in range(8)}
    assert len(sizes) > 1 and all(40 <= s <= 72 for hw in sizes for s in hw)
    data = SyntheticClassificationDataset(SPEC, "train", input_size=(32, 32), train=True)
    assert data.labels == [i % 8 for i in range(16)] and data.class_names == list(SHAPES)


def test_augmentation_is_a_function_of_the_sample_seed():
    data = SyntheticClassificationDataset(SPEC, "train", input_size=(32, 32), policy="random_crop", train=True)
    a, b = data[(5, 123)], data[(5, 123)]
    assert torch.equal(a["image"], b["image"])
    assert not torch.equal(a["image"], data[(5, 124)]["image"])
    order = list(SeededSampler(16, seed=1))
    assert [s for _, s in order] == [s for _, s in SeededSampler(16, seed=1)]


def test_image_folder_round_trip(tmp_path):
    folder = write_image_folder(str(tmp_path), SPEC, "val")
    names, samples = scan_image_folder(folder)
    assert names == sorted(SHAPES) and len(samples) == 8
    data = ImageFolderDataset(folder, input_size=(32, 32))
    item = data[0]
    assert item["image"].shape == (3, 32, 32) and data.class_names[item["label"]] == item["id"].split(os.sep)[0]
    first = render_image(SPEC, "val", int(os.path.basename(item["id"])[:6]))[0]
    native = ImageFolderDataset(folder, policy="native")[0]["image"].permute(1, 2, 0).numpy()
    assert np.array_equal(native, first), "PNG is lossless"
    assert len(data.listing_sha256()) == 64
    os.makedirs(tmp_path / "extra" / "hexagon")
    with pytest.raises(ValueError, match="no images"):
        scan_image_folder(str(tmp_path / "extra"))
    with pytest.raises(FileNotFoundError):
        scan_image_folder(str(tmp_path / "missing"))


# ---------------------------------------------------------------------------------------------- the task
class FixedLogits(nn.Module):
    """Returns the logits stored for each sample index."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.as_tensor(logits, dtype=torch.float32))

    def forward(self, images):
        return self.logits[images[:, 0, 0, 0].long()]


def test_task_metrics_and_confusion_matrix(tmp_path):
    # 6 samples, 6 classes; predictions: sample i's top-1 is (i if i < 4 else 0); its 2nd choice is the truth.
    labels = [0, 1, 2, 3, 4, 5]
    logits = torch.zeros(6, 6)
    for i in range(6):
        logits[i, i if i < 4 else 0] = 5.0
        logits[i, i] += 4.0
    batches = [{"image": torch.arange(k, k + 3, dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 3, 1, 1),
                "label": torch.tensor(labels[k:k + 3]), "id": [f"s{j}" for j in range(k, k + 3)]} for k in (0, 3)]
    task = ClassificationTask([f"c{i}" for i in range(6)], topk=(1, 5))
    metrics = task.validate(FixedLogits(logits), batches)
    assert metrics["top1"] == pytest.approx(400 / 6) and metrics["top5"] == 100.0
    assert metrics["mean_class_recall"] == pytest.approx(400 / 6)
    conf = task.last_confusion
    assert conf[4, 0] == 1 and conf[5, 0] == 1 and conf.trace() == 4
    paths = task.save_artifacts(str(tmp_path), "ema")
    assert [os.path.basename(p) for p in paths] == ["confusion_matrix_ema.csv", "confusion_matrix_ema.png"]
    assert os.path.getsize(paths[1]) > 1000
    out = task.training_step(FixedLogits(logits), batches[0])
    assert out["batch_size"] == 3 and out["loss"].ndim == 0
    assert ClassificationTask(["a", "b", "c"]).topk == (1,), "top-5 of 3 classes is dropped"
