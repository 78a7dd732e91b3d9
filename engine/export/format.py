"""What an exported ONNX model carries besides its graph, read and written in one place.

Metadata (``metadata_props``): :data:`METADATA_KEY` holds one JSON document (format version, ``kind`` (the
task), ``outputs``, the input size, mean and std, the resolved config and the checkpoint's meta, plus the
task's own keys from its :class:`engine.tasks.base.OnnxOutputs`); the keys ``input_size``, ``mean``, ``std``
and the task's keys (``keypoint_names``, ``flip_index``, ``codec``, ``class_names``, ``strides``) repeat what a
reader without this repository wants.
"""

from __future__ import annotations

import json

from models.errors import CheckpointError

FORMAT_VERSION = 1
METADATA_KEY = "repo.inference"
# Keys repeated as their own metadata entries, for readers that do not parse METADATA_KEY's document.
PLAIN_KEYS = ("input_size", "mean", "std", "keypoint_names", "flip_index", "codec", "class_names", "strides")


def metadata_props(doc: dict) -> dict[str, str]:
    """The ``metadata_props`` entries of the document ``doc``: the document itself and its plain keys."""
    props = {METADATA_KEY: json.dumps(doc)}
    props.update({key: json.dumps(doc[key]) for key in PLAIN_KEYS if key in doc})
    return props


def metadata_of(path: str, session) -> dict:
    """The inference document of an onnxruntime ``session`` of the file at ``path``; CheckpointError when it
    has none or was written by a newer exporter."""
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise CheckpointError(f"{path} has no '{METADATA_KEY}' metadata, so its input size, keypoints and codec are "
                              f"unknown; export it with python -m tools.export --checkpoint best.pt")
    doc = json.loads(props[METADATA_KEY])
    if doc.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer tools.export (format {doc['format_version']}, this "
                              f"reads {FORMAT_VERSION}); update this repository or export again")
    return doc


def check_input(path: str, session, doc: dict) -> None:
    """CheckpointError when the graph's input is not the ``[B, 3, H, W]`` its metadata declares."""
    inp = session.get_inputs()[0]
    w, h = doc["input_size"]
    if len(inp.shape) != 4 or list(inp.shape[2:]) != [h, w]:
        raise CheckpointError(f"{path}: its graph takes {inp.shape} but its metadata says input_size [W, H] = "
                              f"{[w, h]}; the file was edited or mixed up, export it again")


def fixed_batch(session) -> int | None:
    """The batch size the graph's input is fixed at (``tools.export --batch``, or a graph made static by
    onnxruntime's tools), None when its batch dimension is dynamic."""
    dim = session.get_inputs()[0].shape[0]
    return dim if isinstance(dim, int) and dim > 0 else None
