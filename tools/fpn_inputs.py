"""The feature levels a keypoint or detection config's backbone hands to its FPN.

    python -m tools.fpn_inputs --config configs/hg-fpn_resnet18_synthetic-kpt_64x96.yaml [key=value ...]
    python -m tools.fpn_inputs --config configs/hg-fpn_resnet18_synthetic-kpt_64x96.yaml model.backbone=resnet50

Prints, per level, the trunk module, its stride, channels and feature size at the config's input size, what
the FPN makes of them and which levels the trunk offers for ``model.out_indices``. The trunk is built as the
model builds it (``models.backbone.Backbone``: timm ``features_only`` with the config's ``model.out_indices``,
``pretrained=False``; ``model.pretrained_path`` is not read, the shapes do not depend on it) and one zero
image of ``data.input_size`` goes through it.
"""

from __future__ import annotations

import argparse

import timm
import torch

from engine.tasks.registry import load_config
from models.backbone import Backbone
from models.detector import DETECTION_STRIDE
from models.errors import ConfigError
from models.pose import HEATMAP_STRIDE
from tools._common import add_debug_flag, run_cli

# The stride the finest FPN level must have for each task's head (the builders pass the same to Backbone).
HEAD_STRIDE = {"keypoints": HEATMAP_STRIDE, "detection": DETECTION_STRIDE}


def fpn_inputs(cfg) -> dict:
    """The feature levels a keypoint or detection config's backbone hands to its FPN.

    Returns {"task", "backbone", "out_indices", "input_size" (width, height), "params" (of the trunk),
    "levels": [{"level", "out_index", "module", "stride", "channels", "height", "width"}, ...] finest first,
    "fpn_channels", "available": every level of the trunk [{"out_index", "module", "stride", "channels"}]}.
    """
    task = getattr(cfg, "task", None)
    if task not in HEAD_STRIDE:
        raise ConfigError(f"--config: a {task!r} config has no FPN; give a keypoint or detection config "
                          f"(compare classifiers with python -m tools.faq.choose_backbone --models NAME)")
    m = cfg.model
    try:
        required = getattr(m, "heatmap_stride", None) or HEAD_STRIDE[task]    # keypoints may ask for stride 2
        bb = Backbone(m.backbone, out_indices=m.out_indices, required_stride=required).eval()
    except ValueError as err:  # name the levels to choose from (an unknown model name has none)
        if not timm.is_model(m.backbone) or "feature levels are" in str(err):
            raise
        full = timm.create_model(m.backbone, pretrained=False, features_only=True)
        levels = "; ".join(f"{i}: {d['module']}, stride {d['reduction']}, {d['num_chs']} ch"
                           for i, d in enumerate(full.feature_info.info))
        raise ConfigError(f"{err}. The trunk's levels (model.out_indices): {levels}") from err
    width, height = (int(v) for v in cfg.data.input_size)
    with torch.no_grad():
        feats = bb(torch.zeros(1, 3, height, width))
    info = bb.body.feature_info.info  # every level of the trunk, not only the returned ones
    levels = [{"level": i, "out_index": int(oi), "module": info[oi]["module"], "stride": int(s), "channels": int(c),
               "height": int(f.shape[-2]), "width": int(f.shape[-1])}
              for i, (oi, s, c, f) in enumerate(zip(m.out_indices, bb.strides, bb.channels, feats))]
    for lv in levels:  # what timm declares must be what comes out
        assert lv["channels"] == feats[lv["level"]].shape[1], (lv, feats[lv["level"]].shape)
    return {"task": task, "backbone": m.backbone, "out_indices": [int(i) for i in m.out_indices],
            "input_size": (width, height), "params": sum(p.numel() for p in bb.parameters()), "levels": levels,
            "fpn_channels": int(m.fpn_channels),
            "available": [{"out_index": i, "module": d["module"], "stride": int(d["reduction"]),
                           "channels": int(d["num_chs"])} for i, d in enumerate(info)]}


def format_fpn_table(r: dict, source: str = "") -> str:
    w, h = r["input_size"]
    lines = [f"FPN inputs{' of ' + source if source else ''}: {r['task']} model, backbone {r['backbone']} "
             f"(features_only trunk, random weights, {r['params'] / 1e6:.2f} M parameters), "
             f"out_indices {r['out_indices']}, input {w}x{h} (width x height)"]
    head = f"{'level':>5} {'out_index':>9} {'module':<10} {'stride':>6} {'channels':>8} {'feature size (HxW)':>18}"
    lines += [head, "-" * len(head)]
    for lv in r["levels"]:
        lines.append(f"{lv['level']:>5} {lv['out_index']:>9} {lv['module']:<10} {lv['stride']:>6} "
                     f"{lv['channels']:>8} {str(lv['height']) + 'x' + str(lv['width']):>18}")
    fine = r["levels"][0]
    lines.append(f"FPN: each level -> 1x1 lateral conv to {r['fpn_channels']} channels (model.fpn_channels), "
                 f"nearest-neighbour 2x top-down sum, 3x3 output conv; the head reads level 0: "
                 f"{r['fpn_channels']} x {fine['height']}x{fine['width']} at stride {fine['stride']}")
    coarse = r["levels"][-1]["stride"]
    if w % coarse or h % coarse:
        lines.append(f"note: the input {w}x{h} is not a multiple of the coarsest stride {coarse}: the levels are "
                     f"rounded up and no longer align exactly with the input (docs/conventions.md)")
    lines.append("trunk levels (model.out_indices): " + "; ".join(
        f"{a['out_index']}: {a['module']}, stride {a['stride']}, {a['channels']} ch" for a in r["available"]))
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a keypoint or detection config")
    p.add_argument("overrides", nargs="*", help="dotted overrides of --config, e.g. model.backbone=resnet50")
    return p


def main(argv: list[str] | None = None) -> dict:
    """Returns the :func:`fpn_inputs` dict of ``--config``."""
    args = add_debug_flag(get_args_parser()).parse_intermixed_args(argv)
    result = fpn_inputs(load_config(args.config, args.overrides))
    print(format_fpn_table(result, args.config), flush=True)
    return result


if __name__ == "__main__":
    run_cli(main)
