"""Keypoint definitions shared by the synthetic data, the configs' defaults and the tests."""

from __future__ import annotations

COCO_KEYPOINT_NAMES = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
]
# One-based pairs, as COCO's json stores them.
COCO_SKELETON = [
    [16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
    [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7],
]
# flip[i] is the keypoint that i becomes under a horizontal flip.
COCO_FLIP_INDEX = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
# Per-keypoint OKS sigmas of COCO (the values pycocotools uses by default).
COCO_SIGMAS = [0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062,
               0.107, 0.107, 0.087, 0.087, 0.089, 0.089]
COCO_UPPER_BODY_IDS = list(range(11))


def flip_index_from_names(names: list[str]) -> list[int]:
    """Guess a flip map from ``left``/``right`` in keypoint names (``left_eye`` <-> ``right_eye``).

    Names without a side map to themselves. A helper for writing configs; configs state the map explicitly.
    """
    index = {n: i for i, n in enumerate(names)}
    out = []
    for name in names:
        partner = name
        for a, b in (("left", "right"), ("right", "left"), ("Left", "Right"), ("Right", "Left")):
            if a in name:
                partner = name.replace(a, b)
                break
        out.append(index.get(partner, index[name]))
    return out
