"""Export a keypoint model or a detector to ONNX, with what inference needs in the file's metadata.

    python -m tools.export --checkpoint runs/X/best.pt --output model.onnx           # heatmaps out
    python -m tools.export --checkpoint runs/X/best.pt --output model.onnx --decode  # keypoints out
    python -m tools.export --checkpoint runs/X/best.pt --output flip.onnx --decode eval.flip_test=true
    python -m tools.export --checkpoint runs/X/best.pt --output one.onnx --decode --batch 1   # one face per call
    python -m tools.infer --backend onnxruntime --model model.onnx --input images/ --output-dir out/

The graph takes uint8 RGB crops ``[B, 3, H, W]`` (B dynamic, or fixed with ``--batch``) and normalises them
itself. By default a keypoint model outputs heatmaps and the runner does the flip test, decoding and mapping
back as PyTorch does; ``--decode`` puts the flip test (when the config has it), argmax and refinement in
the graph, so the model returns keypoints and scores in crop pixels. The export is checked against PyTorch
with onnxruntime on a random batch (the largest difference is printed). Dotted ``eval.*`` overrides change the
test-time settings the file carries (the flip test and its shift, the re-crops), not the trained model.
"""

from __future__ import annotations

import argparse
import json
import logging

from engine.checkpoint import WEIGHT_CHOICES
from engine.export.exporter import export_onnx
from tools._common import add_debug_flag, run_cli, setup_logging

log = logging.getLogger("tools.export")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a keypoint or detection checkpoint written by tools.train")
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument("--decode", action="store_true",
                   help="keypoint models: flip test, argmax and refinement inside the graph (keypoints out)")
    p.add_argument("--weights", choices=WEIGHT_CHOICES, default="model",
                   help="the checkpoint's trained weights (default) or their EMA, kept when train.ema_decay was set")
    p.add_argument("--batch", type=int, default=None, metavar="N",
                   help="fix the batch dimension at N (default: dynamic). A static graph runs a little faster on "
                        "onnxruntime (one face per video frame: --batch 1); larger batches are split into calls of N")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime-vs-PyTorch check")
    p.add_argument("overrides", nargs="*",
                   help="eval.* settings over the checkpoint's, e.g. eval.flip_test=true eval.recrop_passes=0")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = add_debug_flag(get_args_parser()).parse_args(argv)
    setup_logging()
    summary = export_onnx(args.checkpoint, args.output, decode=args.decode, opset=args.opset,
                          verify=not args.no_verify, weights=args.weights, eval_overrides=args.overrides,
                          batch=args.batch)
    log.info("%s", json.dumps(summary))
    return summary


if __name__ == "__main__":
    run_cli(main)
