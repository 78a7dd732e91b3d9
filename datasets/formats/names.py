"""What keypoint names tell: the horizontal-flip partner of each point, and whether a skeleton is COCO's 17.

People spell sides many ways: ``left_eye``, ``l_eye``, ``eye_left``, ``Eye-L``, ``leftear``, ``LEar``,
``rightEar``. Each name is cut into words (separators and camelCase), a side word (``left``/``l``,
``right``/``r``) is taken out, and names with the same remaining words and opposite sides are partners. Names
glued without a separator (``leftear``) are matched by a leading or trailing ``left``/``right``.
"""

from __future__ import annotations

import re

from datasets.skeletons import COCO_KEYPOINT_NAMES

_LEFT = {"left", "l", "lft"}
_RIGHT = {"right", "r", "rt", "rgt"}
_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def _side_and_base(name: str) -> tuple[str | None, str]:
    words = [w.lower() for part in re.split(r"[_\-\s./]+", name) for w in _WORDS.findall(part)]
    sides = [("L" if w in _LEFT else "R") for w in words if w in _LEFT or w in _RIGHT]
    if len(sides) == 1:
        return sides[0], "_".join(w for w in words if w not in _LEFT and w not in _RIGHT)
    glued = "".join(words)
    for word, side in (("left", "L"), ("right", "R")):
        if glued.startswith(word) and len(glued) > len(word):
            return side, glued[len(word):]
        if glued.endswith(word) and len(glued) > len(word):
            return side, glued[:-len(word)]
    return None, glued


def flip_index_from_names(names: list[str]) -> tuple[list[int], list[tuple[str, str]]]:
    """``(flip, pairs)``: ``flip[i]`` is the keypoint that i becomes under a horizontal flip (identity for names
    without a side or without a unique partner), ``pairs`` the (left, right) name pairs found."""
    parsed = [_side_and_base(n) for n in names]
    by_key: dict[tuple[str, str], list[int]] = {}
    for i, (side, base) in enumerate(parsed):
        if side is not None:
            by_key.setdefault((side, base), []).append(i)
    flip = list(range(len(names)))
    pairs = []
    for (side, base), left in by_key.items():
        right = by_key.get(("R", base))
        if side != "L" or right is None or len(left) != 1 or len(right) != 1:
            continue
        a, b = left[0], right[0]
        flip[a], flip[b] = b, a
        pairs.append((names[a], names[b]))
    return flip, pairs


def is_coco_body(names: list[str]) -> bool:
    """Whether the names are COCO's 17 body keypoints in COCO's order (case and ``-``/``_`` aside)."""
    norm = [re.sub(r"[\s\-]+", "_", n.strip().lower()) for n in names]
    return norm == COCO_KEYPOINT_NAMES
