"""Heatmap distillation (engine/tasks/keypoints/distill.py): the teacher's heatmaps land on the student's grid
where the keypoints are, the loss mixes the two targets as documented, and a wrong teacher is refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from datasets.skeletons import COCO_FLIP_INDEX, COCO_KEYPOINT_NAMES, COCO_SIGMAS
from engine.tasks.keypoints import build_model
from engine.tasks.keypoints.distill import HeatmapTeacher, load_heatmap_teacher
from engine.tasks.keypoints.task import KeypointMeta, KeypointTask
from models.errors import CheckpointError
from models.heatmap_codec import HeatmapCodec
from models.losses import stacked_heatmap_loss
from tests.inference_utils import tiny_keypoint_checkpoint

META = KeypointMeta(COCO_KEYPOINT_NAMES, [], COCO_FLIP_INDEX, COCO_SIGMAS, category_id=1)


class GaussianTeacher(nn.Module):
    """A 'teacher' that answers every crop with the codec's Gaussians at fixed input-pixel points, on its own
    grid, and remembers the size of the crops it was given."""

    def __init__(self, codec: HeatmapCodec, keypoints: torch.Tensor, stacks: int = 2):
        super().__init__()
        self.codec, self.keypoints, self.stacks, self.seen = codec, keypoints, stacks, []

    def forward(self, images):
        self.seen.append(tuple(images.shape[-2:]))
        heatmaps, _ = self.codec.encode(self.keypoints.expand(images.shape[0], -1, -1))
        return [heatmaps * 0.5] * (self.stacks - 1) + [heatmaps]


def test_teacher_heatmaps_keep_the_keypoints_on_the_students_grid():
    # Teacher at 192 x 192 (48 x 48 cells), student at 128 x 128 (32 x 32 cells). Points given in the teacher's
    # input pixels; on the student's crop they sit at (p + 0.5) * 128 / 192 - 0.5.
    points = torch.tensor([[[40.3, 100.7, 2.0], [151.2, 20.6, 2.0], [96.0, 96.0, 2.0]]])
    teacher_codec = HeatmapCodec((192, 192), (48, 48), sigma=1.5, refine="dark")
    student_codec = HeatmapCodec((128, 128), (32, 32), sigma=1.5, refine="dark")
    fake = GaussianTeacher(teacher_codec, points)
    teacher = HeatmapTeacher(fake, (192, 192))
    crops = torch.randint(0, 256, (2, 3, 128, 128), dtype=torch.uint8)
    heatmaps = teacher(crops, (32, 32))
    assert fake.seen == [(192, 192)]                    # the crop went up to the teacher's input size
    assert heatmaps.shape == (2, 3, 32, 32) and heatmaps.dtype == torch.float32
    assert float(heatmaps.min()) >= 0 and float(heatmaps.max()) <= 1
    decoded, _ = student_codec.decode(heatmaps)
    expected = (points[0, :, :2] + 0.5) * 128 / 192 - 0.5
    assert torch.allclose(decoded[0], expected, atol=0.35), (decoded[0], expected)
    assert torch.allclose(decoded[1], expected, atol=0.35)


def test_teacher_on_the_same_grid_passes_its_heatmaps_through_and_stays_frozen():
    codec = HeatmapCodec((64, 64), (16, 16), sigma=2.0)
    points = torch.tensor([[[10.0, 30.0, 2.0]]])
    fake = GaussianTeacher(codec, points)
    teacher = HeatmapTeacher(fake, (64, 64))
    teacher.train()                                     # what the trainer does to every module it is given
    assert not teacher.training and not fake.training
    out = teacher(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), (16, 16))
    assert torch.equal(out, codec.encode(points)[0])
    assert fake.seen == [(64, 64)]


class FixedStudent(nn.Module):
    """Two stacks of fixed heatmaps with one parameter, so the loss has a gradient."""

    def __init__(self, heatmaps: torch.Tensor):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.heatmaps = heatmaps

    def forward(self, images):
        return [self.heatmaps * self.scale, self.heatmaps * self.scale * 0.9]


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_training_step_mixes_the_labels_and_the_teachers_loss(weight):
    codec = HeatmapCodec((64, 64), (16, 16), sigma=2.0)
    torch.manual_seed(0)
    keypoints = torch.cat([torch.rand(2, 17, 2) * 60, torch.full((2, 17, 1), 2.0)], -1)
    keypoints[0, 3, 2] = 0                               # unlabelled: neither target teaches it
    teacher_points = keypoints[:1].clone()
    teacher_points[..., :2] += 3.0                       # a teacher that is a few pixels off
    teacher = HeatmapTeacher(GaussianTeacher(codec, teacher_points), (64, 64))
    student = FixedStudent(torch.rand(2, 17, 16, 16))
    batch = {"image": torch.zeros(2, 3, 64, 64, dtype=torch.uint8), "keypoints": keypoints}
    task = KeypointTask(codec, META, loss="mse", teacher=teacher, distill_weight=weight)
    out = task.training_step(student, batch)

    targets, target_weights = codec.encode(keypoints)
    taught = codec.encode(teacher_points.expand(2, -1, -1))[0]
    preds = [p.detach() for p in student(None)]
    labels, _ = stacked_heatmap_loss(preds, targets, target_weights)
    distill, _ = stacked_heatmap_loss(preds, taught, target_weights)
    assert float(labels) != pytest.approx(float(distill))  # the two targets differ, so the mix is seen
    loss = float(out["loss"].detach())
    assert loss == pytest.approx((1 - weight) * float(labels) + weight * float(distill), rel=1e-6)
    assert float(out["loss_labels"]) == pytest.approx(float(labels), rel=1e-6)
    assert float(out["loss_teacher"]) == pytest.approx(float(distill), rel=1e-6)
    assert float((out["loss_stack0"] + out["loss_stack1"]).detach()) == pytest.approx(loss, rel=1e-6)
    out["loss"].backward()
    assert student.scale.grad is not None


def test_without_a_teacher_the_step_is_the_labels_loss_alone():
    codec = HeatmapCodec((64, 64), (16, 16), sigma=2.0)
    keypoints = torch.cat([torch.rand(1, 17, 2) * 60, torch.full((1, 17, 1), 2.0)], -1)
    student = FixedStudent(torch.rand(1, 17, 16, 16))
    with torch.no_grad():
        out = KeypointTask(codec, META, loss="mse").training_step(student, {"image": torch.zeros(1, 3, 64, 64),
                                                                            "keypoints": keypoints})
        targets, target_weights = codec.encode(keypoints)
        expected = stacked_heatmap_loss(student(None), targets, target_weights)[0]
    assert float(out["loss"]) == pytest.approx(float(expected), rel=1e-6)
    assert "loss_teacher" not in out


def test_load_teacher_reads_a_checkpoint_and_refuses_other_keypoints(tmp_path):
    path = tiny_keypoint_checkpoint(str(tmp_path / "teacher.pt"), input_size=(32, 48))
    teacher = load_heatmap_teacher(path, META, build_model)
    assert teacher.input_size == (32, 48)
    out = teacher(torch.zeros(2, 3, 64, 64, dtype=torch.uint8), (16, 16))
    assert out.shape == (2, 17, 16, 16)
    other = KeypointMeta([f"p{i}" for i in range(17)], [], COCO_FLIP_INDEX, COCO_SIGMAS, category_id=1)
    with pytest.raises(CheckpointError, match=r"loss\.distill_teacher=.*other keypoints"):
        load_heatmap_teacher(path, other, build_model)
    with pytest.raises(CheckpointError, match="carries no EMA"):
        load_heatmap_teacher(path, META, build_model, weights="ema")
    with pytest.raises(CheckpointError, match="not found"):
        load_heatmap_teacher(str(tmp_path / "nope.pt"), META, build_model)
