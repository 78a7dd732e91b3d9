"""bench/box_fit.py: per-edge errors and the neighbouring-frames check, on hand-made boxes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.box_fit import edge_errors, frame_number, label_boxes, main, neighbour_results


def _coco(frames: dict[int, list[float]]) -> dict:
    """One image per frame number, ``Frame_<n>.jpg``, with one box (COCO xywh) of category 1."""
    images = [{"id": i + 1, "file_name": f"Frame_{n}.jpg", "width": 640, "height": 360} for i, n in enumerate(frames)]
    annotations = [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": box, "area": box[2] * box[3],
                    "iscrowd": 0} for i, box in enumerate(frames.values())]
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "tiger"}]}


def test_frame_number_is_the_last_number_of_the_name():
    assert frame_number("video3/Frame_101.jpg") == 101 and frame_number("img_2_0007.png") == 7
    assert frame_number("tiger.jpg") is None


def test_edge_errors_are_signed_per_edge_and_take_the_best_overlapping_detection():
    truth = label_boxes(_coco({0: [100, 50, 200, 100]}))              # inclusive [100, 50, 299, 149]
    results = [{"image_id": 1, "category_id": 1, "score": 0.9, "bbox": [96, 48, 210, 104]},   # 4 px wider left...
               {"image_id": 1, "category_id": 1, "score": 0.95, "bbox": [400, 50, 50, 50]},   # no overlap
               {"image_id": 1, "category_id": 2, "score": 0.99, "bbox": [100, 50, 200, 100]}]  # another class
    errors, ious = edge_errors(truth, results)
    # [96, 48, 305, 151] - [100, 50, 299, 149]: the box is too large on every side.
    assert errors.tolist() == [[-4, -2, 6, 2]]
    assert ious[0] == pytest.approx(200 * 100 / (210 * 104))


def test_neighbour_frames_average_the_boxes_of_frames_before_and_after(tmp_path):
    val = _coco({5: [100, 50, 200, 100], 9: [0, 0, 10, 10]})
    train = _coco({4: [98, 50, 200, 100], 6: [102, 52, 200, 100], 20: [0, 0, 5, 5]})
    results = neighbour_results(val, train)
    assert len(results) == 1, "frame 9 has no labelled neighbour"
    assert results[0]["image_id"] == 1 and results[0]["bbox"] == [100.0, 51.0, 200.0, 100.0]
    (tmp_path / "val.json").write_text(json.dumps(val))
    (tmp_path / "train.json").write_text(json.dumps(train))
    out = main(["--ann", str(tmp_path / "val.json"), "--neighbour-frames", str(tmp_path / "train.json")])
    assert np.allclose(out["neighbour-frames"]["errors"], [[0, 1, 0, 1]])
    assert out["neighbour-frames"]["AR100"] == pytest.approx(1.0)      # IoU 0.99 >= every threshold


def test_bad_files_stop_with_one_line(tmp_path):
    (tmp_path / "val.json").write_text(json.dumps(_coco({5: [100, 50, 200, 100]})))
    (tmp_path / "kpts.json").write_text(json.dumps([{"image_id": 1, "keypoints": [1, 2, 2], "score": 1}]))
    with pytest.raises(SystemExit, match=r"cannot read .*missing\.json"):
        main(["--ann", str(tmp_path / "missing.json")])
    with pytest.raises(SystemExit, match=r"kpts\.json is not a COCO detection-results list"):
        main(["--ann", str(tmp_path / "val.json"), "--results", str(tmp_path / "kpts.json")])
    with pytest.raises(SystemExit, match=r"kpts\.json has no 'annotations'"):
        main(["--ann", str(tmp_path / "kpts.json")])
