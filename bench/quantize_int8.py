"""int8 weights and activations for an exported keypoint graph: onnxruntime's static QDQ quantisation of its
convolutions, calibrated on training crops, for the fast path's accuracy-against-time comparison.

    python bench/quantize_int8.py --model fast.onnx --output fast_int8.onnx
    python bench/face_fast_path.py --dlib-python <dlib-venv>/bin/python \\
        --model fp32=first.onnx+fast.onnx --model int8=first.onnx+fast_int8.onnx

Only the ``Conv`` nodes are quantised (per output channel, symmetric int8 weights, uint8 activations): they
hold the multiply-adds, while the decoding after the last conv (argmax, DARK's blur, log and Newton step)
needs float precision and stays fp32. The calibration crops are the faces config's training split (never the
held-out faces the bench scores), cropped from their annotation boxes as in training, at the graph's own
input size. The quantised file keeps the original's metadata, so every runner of the repository loads it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a script: bench/ is on sys.path
from datasets.affine import crop_box  # noqa: E402
from datasets.coco_common import resolve_image_path, split_image_ids  # noqa: E402
from datasets.image_io import read_image_rgb  # noqa: E402
from engine.export.runtime import read_metadata  # noqa: E402
from tools._common import run_cli  # noqa: E402

FACES = "../shared/data/faces300w_train"


def training_crops(ann_file: str, image_root: str, size, padding: float, count: int, seed: int = 0) -> np.ndarray:
    """``count`` faces of the training split (the 90 % the faces configs train on; holdout 10 %, seed 0),
    chosen with ``seed``, each cropped from its annotation box: uint8 [count, 3, H, W]."""
    data = json.load(open(ann_file))
    keep = split_image_ids(sorted(int(im["id"]) for im in data["images"]), "rest", 0.1, 0)
    images = {int(im["id"]): im for im in data["images"]}
    anns = [a for a in data["annotations"] if int(a["image_id"]) in keep]
    rng = np.random.default_rng(seed)
    crops = []
    for k in rng.choice(len(anns), size=min(count, len(anns)), replace=False):
        ann = anns[k]
        x, y, w, h = ann["bbox"]
        image = read_image_rgb(resolve_image_path(image_root, images[int(ann["image_id"])]["file_name"], ann_file))
        crop, _ = crop_box(image, [x, y, x + w - 1, y + h - 1], size, padding)
        crops.append(crop.transpose(2, 0, 1))
    return np.stack(crops)


def quantize(model: str, output: str, crops: np.ndarray) -> None:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Crops(CalibrationDataReader):
        def __init__(self, batch: int):
            self.batches = iter([crops[i:i + batch] for i in range(0, len(crops) - batch + 1, batch)])

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    dim = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).get_inputs()[0].shape[0]
    prepared = output + ".pre.onnx"
    quant_pre_process(model, prepared, skip_symbolic_shape=True)
    try:
        quantize_static(prepared, output, Crops(dim if isinstance(dim, int) else 8), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["Conv"], per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
    finally:
        os.remove(prepared)
    # The quantiser writes a new model: give it the original's metadata (input size, keypoints, config).
    source, quantized = onnx.load(model), onnx.load(output)
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(source.metadata_props)
    onnx.save(quantized, output)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a keypoint graph from tools.export (--decode or not)")
    p.add_argument("--output", required=True)
    p.add_argument("--ann-file", default=f"{FACES}/annotations.json")
    p.add_argument("--image-root", default=f"{FACES}/images")
    p.add_argument("--calibration-faces", type=int, default=128)
    args = p.parse_args(argv)
    if args.calibration_faces < 1:
        p.error(f"--calibration-faces must be 1 or more (got {args.calibration_faces})")
    doc = read_metadata(args.model)
    crops = training_crops(args.ann_file, args.image_root, doc["input_size"],
                           float(doc["config"]["data"]["bbox_padding"]), args.calibration_faces)
    quantize(args.model, args.output, crops)
    print(f"wrote {args.output}: Conv nodes int8 (QDQ, per channel), calibrated on {len(crops)} training crops")


if __name__ == "__main__":
    run_cli(main)
