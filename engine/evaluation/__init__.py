"""Scoring: COCO metrics through pycocotools (``coco``), PCK/NME (``keypoint_metrics``), the face report
(``face_metrics``), the data report, and the evaluator contract every task's evaluator follows
(``evaluator``). Imports models, datasets and engine.distributed."""
