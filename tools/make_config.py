"""Write a ready keypoint config from a COCO keypoint file (e.g. one written by tools.convert).

    python -m tools.make_config data/mouse.json --image-root PROJECT_FOLDER --output configs/my_mouse.yaml
    python -m tools.train --config configs/my_mouse.yaml

Every choice is made from the data and printed (never asked, so it runs unattended), and written as comments
at the top of the YAML: the flip map (the category's, else inferred from left/right names, else identity),
OKS sigmas (COCO's for COCO's 17 names; estimated when images were labelled twice: repeated file names or
``--relabelled``; else a uniform guess, marked as such), the input size (median box aspect, multiples of the
backbone's coarsest stride), batch and epochs (engine/config/starter.py says why), the evaluation interval
(less often on a hold-out too small to pick a best checkpoint on), and the validation split (the source's
own, written as two json files beside the config, else a seeded hold-out). It also writes a data report
picture (labelled counts per keypoint, box sizes and aspects, images per split) beside the config.

Before writing, it times a few training steps of the config on this machine and says how many minutes the
run will take (``--no-timing`` skips this); ``--minutes N`` sizes the epochs to fit N minutes instead:

    python -m tools.make_config data/mouse.json --image-root PROJECT_FOLDER --output configs/my_mouse.yaml --minutes 10
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import yaml
from omegaconf import OmegaConf

from datasets.formats.common import write_coco_json
from engine.config.starter import starter_config
from engine.distributed import resolve_device
from engine.evaluation.data_report import plot_data_report
from engine.tasks.registry import build_experiment, config_from_sources
from engine.train.estimate import TrainingSpeed, measure_training_speed
from models.backbone import Backbone
from models.errors import InputError
from tools._common import add_debug_flag, run_cli, setup_logging


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ann_file", help="COCO keypoint json (all splits; images may carry 'split')")
    p.add_argument("--image-root", required=True, help="the folder the json's file_names resolve against "
                                                       "(tools.convert prints it)")
    p.add_argument("--output", required=True, help="the config YAML to write")
    p.add_argument("--backbone", default="resnet18", help="timm model name (default resnet18)")
    p.add_argument("--input-pixels", type=int, default=128 * 128,
                   help="about how many input pixels a crop has (default 16384 = 128x128, as the shipped configs)")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("W", "H"), help="set the input size instead")
    p.add_argument("--epochs", type=int, help="set the epochs instead of choosing them")
    p.add_argument("--minutes", type=float, help="a time budget: as many epochs as fit in it on this machine "
                                                 "(from a few timed steps)")
    p.add_argument("--no-timing", action="store_true",
                   help="do not time a few training steps (no expected minutes; faster, e.g. without the images)")
    p.add_argument("--batch-size", type=int, help="set the batch size instead of choosing it")
    p.add_argument("--val-fraction", type=float, default=0.1, help="hold-out share when the source has no val")
    p.add_argument("--seed", type=int, default=0, help="seed of the hold-out")
    p.add_argument("--category-id", type=int, help="the keypoint category, when the file has several")
    p.add_argument("--relabelled", help="a second labelling of (some of) the same images, matched by file "
                                        "name: OKS sigmas are estimated from the two")
    p.add_argument("--name", help="the run name (default: the json's stem)")
    p.add_argument("--report", help="data report picture (default: <output stem>_data.png)")
    p.add_argument("--no-report", action="store_true", help="do not draw the data report")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="more dotted config values to write, e.g. train.num_workers=0 model.num_stacks=1")
    return p


def _load(path: str, flag: str) -> dict:
    if not os.path.isfile(path):
        raise InputError(f"COCO json not found: {path} ({flag})")
    with open(path) as f:
        return json.load(f)


def _max_stride(backbone: str) -> int:
    return max(Backbone(backbone, required_stride=None).strides)


class _FlowListDumper(yaml.SafeDumper):
    """Lists in flow style (``[0, 2, 1]``), so a 68-point flip map stays on a few lines; mappings in blocks."""


_FlowListDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True))


def render_yaml(cfg: dict, notes: list[str], source: str) -> str:
    """The config as YAML, with the choices as comments on top and the sigma guess marked on its line."""
    lines = yaml.dump(cfg, Dumper=_FlowListDumper, sort_keys=False, default_flow_style=False, width=118).splitlines()
    if any(n.startswith("oks_sigmas: a GUESS") for n in notes):
        at = next(i for i, line in enumerate(lines) if line.startswith("  oks_sigmas:"))
        lines.insert(at, "  # oks_sigmas below are a guess: measure them with tools.estimate_sigmas")
    text = "\n".join(lines) + "\n"
    header = [f"# Written by tools.make_config from {source}; each choice and why:"] + [f"#   {n}" for n in notes]
    return "\n".join(header) + "\n" + text


def main(argv: list[str] | None = None) -> dict:
    args = add_debug_flag(get_args_parser()).parse_args(argv)
    setup_logging()
    if args.minutes is not None and (args.minutes <= 0 or args.epochs):
        raise InputError(f"--minutes {args.minutes}: give a positive budget in minutes, and not with --epochs "
                         f"(the budget sets the epochs)")
    coco = _load(args.ann_file, "ANN_FILE")
    if not os.path.isdir(args.image_root):
        raise InputError(f"image folder not found: {args.image_root} (--image-root)")
    second = _load(args.relabelled, "--relabelled") if args.relabelled else None
    cfg, notes, files = _starter(args, coco, second, args.epochs)
    for path, data in files.items():           # the split files the config (and its timing) read
        write_coco_json(path, data)
    if not args.no_timing or args.minutes is not None:
        speed = _measure(cfg, args.output)
        if args.minutes is not None:
            epochs = _epochs_within(speed, args.minutes, lambda e: _starter(args, coco, second, e)[0])
            cfg, notes, files = _starter(args, coco, second, epochs)
            notes.append(f"epochs {epochs}: as many as fit --minutes {args.minutes:g} on this machine")
        t = cfg["train"]
        expected = speed.minutes(t["epochs"], t["eval_interval"])
        notes.append(f"expected time on this machine: about {_round_minutes(expected)} minutes "
                     f"({speed.seconds_per_step:.2f} s per step of {t['batch_size']} in {speed.precision}, "
                     f"{speed.steps_per_epoch} steps per epoch, {speed.seconds_per_validation:.1f} s per "
                     f"validation; measured on a few steps: the machine's load moves it)")
        cfg["_expected_minutes"] = round(expected, 1)
    _write_yaml(cfg, notes, args.output, args.ann_file)
    for note in notes:
        print(note)
    if not args.no_report:
        report = args.report or os.path.splitext(args.output)[0] + "_data.png"
        plot_data_report(coco, cfg["data"]["category_id"], report, title=os.path.basename(args.ann_file))
        print(f"data report: {report}")
    print(f"wrote {args.output}{' and ' + ', '.join(files) if files else ''}")
    print(f"next: python -m tools.train --config {args.output}")
    return cfg


def _starter(args, coco: dict, second: dict | None, epochs: int | None) -> tuple[dict, list[str], dict]:
    """The starter config from the flags (``epochs``: None chooses them), ``--set`` applied, checked the way
    tools.train will read it (before anything is written)."""
    cfg, notes, files = starter_config(
        coco, args.ann_file, args.image_root, args.output, backbone=args.backbone,
        max_stride=_max_stride(args.backbone), input_pixels=args.input_pixels, input_size=args.input_size,
        epochs=epochs, batch_size=args.batch_size, val_fraction=args.val_fraction, seed=args.seed,
        category_id=args.category_id, second=second, name=args.name)
    if args.set:
        bad = [s for s in args.set if "=" not in s]
        if bad:
            raise InputError(f"--set takes key.sub=value items; got {bad}")
        cfg = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(cfg), OmegaConf.from_dotlist(args.set)))
        notes.append("set on the command line: " + " ".join(args.set))
    config_from_sources("keypoints", [(args.output, OmegaConf.create(cfg))])
    return cfg, notes, files


def _measure(cfg: dict, output: str) -> TrainingSpeed:
    """A few timed training steps and validation batches of ``cfg`` on this machine."""
    typed = config_from_sources("keypoints", [(output, OmegaConf.create(cfg))])
    if typed.train.num_threads:
        torch.set_num_threads(typed.train.num_threads)
    print("timing a few training steps on this machine ...", flush=True)
    exp = build_experiment(typed, resolve_device(typed.train.device), progress=False)
    return measure_training_speed(exp, typed.train.precision, typed.train.channels_last)


def _epochs_within(speed: TrainingSpeed, minutes: float, config_for) -> int:
    """The most epochs (1-1000) whose expected time fits in ``minutes``, each with the evaluation interval its
    starter config gets (``config_for(epochs)``): a binary search, the time growing with the epochs."""
    def fits(epochs: int) -> bool:
        return speed.minutes(epochs, config_for(epochs)["train"]["eval_interval"]) <= minutes

    lo, hi = 1, 1000
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def _round_minutes(minutes: float) -> str:
    return f"{minutes:.0f}" if minutes >= 10 else f"{minutes:.1f}"


def _write_yaml(cfg: dict, notes: list[str], output: str, source: str) -> None:
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp = output + ".tmp"
    with open(tmp, "w") as f:
        f.write(render_yaml(cfg, notes, source))
    os.replace(tmp, output)


if __name__ == "__main__":
    run_cli(main)
