"""Readers of the formats people label in, each a pure function of files -> a COCO keypoint dict.

One module per format (``dlc``, ``yolo``, ``labelme``, ``cvat``, ``pts``); ``common`` holds what they share
(the COCO builder, the problem list, the keypoint box, the atomic writer). No training code here:
``tools/convert.py`` parses the arguments and writes the result; docs/formats.md has the command per format.

Every reader returns a :class:`~datasets.formats.common.Conversion`: the COCO dict (all splits in one file,
each image carrying its ``"split"`` when the source names one; the skeleton and flip map in the category
when the format has them), the folder the ``file_name``s resolve against, and counts of what was skipped.
"""

from datasets.formats.common import Conversion, Problems, write_coco_json

__all__ = ["Conversion", "Problems", "write_coco_json"]
