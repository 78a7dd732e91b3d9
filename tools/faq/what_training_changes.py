"""What is a trained model, and what does "learning" change? Shown on this repository's own model.

    python -m tools.faq.what_training_changes --config configs/X.yaml [--checkpoint runs/X/best.pt]

A model is its architecture (code) plus a state dict of tensors. Some tensors are *parameters*: the
optimiser changes them from gradients. Others are *buffers*: not learned by gradients, but updated by the
forward pass itself in train mode (BatchNorm's running mean and variance and its step counter), or constants
(our input normalisation). This tool runs, on one batch of real training crops:

1. a forward pass in eval mode: nothing in the state dict changes (prediction reads, never writes);
2. a forward pass in train mode, without backward: only BatchNorm buffers change;
3. a backward pass and one optimiser step: the parameters change, buffers do not (beyond step 2);
4. the same input in train and in eval mode gives different outputs: BatchNorm normalises with the batch's
   statistics in train mode and with the running ones in eval mode, which is why ``model.eval()`` matters.

With ``--checkpoint`` it also lists which tensors of a trained checkpoint differ from a fresh initialisation.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch

from engine.checkpoint import load_checkpoint
from engine.tasks import keypoints as kp
from engine.tasks.registry import load_config
from tools._common import add_debug_flag, run_cli, setup_logging


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", help="a trained checkpoint to compare with a fresh initialisation")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--batch-size", type=int, default=4)
    return p


def _kinds(model: torch.nn.Module) -> dict[str, str]:
    kinds = {name: "parameter" for name, _ in model.named_parameters()}
    for name, _ in model.named_buffers():
        kinds[name] = "buffer"
    return kinds


def changed(before: dict, after: dict) -> list[str]:
    return [k for k in before if not torch.equal(before[k], after[k])]


def _summary(names: list[str], kinds: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for n in names:
        suffix = n.rsplit(".", 1)[-1]
        counts[f"{kinds[n]}s ({suffix})"] += 1
    return dict(sorted(counts.items()))


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def main(argv: list[str] | None = None) -> dict:
    args = add_debug_flag(get_args_parser()).parse_args(argv)
    setup_logging()
    cfg = load_config(args.config, args.overrides)
    data, meta = kp.load_split_and_meta(cfg, cfg.data.train)
    dataset = kp.make_topdown_dataset(cfg, data, meta, train=True)
    batch = torch.utils.data.default_collate([dataset[(i, i)] for i in range(args.batch_size)])
    torch.manual_seed(0)
    model = kp.build_model(cfg, len(meta.keypoint_names), pretrained=False)
    task = kp.build_task(cfg, meta, progress=False)
    kinds = _kinds(model)
    report: dict = {"state_dict_tensors": len(kinds),
                    "parameters": sum(k == "parameter" for k in kinds.values()),
                    "buffers": sum(k == "buffer" for k in kinds.values())}

    s0 = snapshot(model)
    model.eval()
    with torch.no_grad():
        out_eval = model(batch["image"])[-1]
    report["eval_forward_changes"] = changed(s0, snapshot(model))

    model.train()
    with torch.no_grad():
        out_train = model(batch["image"])[-1]
    s1 = snapshot(model)
    report["train_forward_changes"] = _summary(changed(s0, s1), kinds)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    optimizer.zero_grad()
    task.training_step(model, batch)["loss"].backward()
    s_before_step = snapshot(model)          # the forward inside training_step updated BN buffers again
    optimizer.step()
    report["optimizer_step_changes"] = _summary(changed(s_before_step, snapshot(model)), kinds)
    report["train_vs_eval_output_max_abs_diff"] = float((out_train - out_eval).abs().max())

    print(f"The model's state dict holds {report['state_dict_tensors']} tensors: {report['parameters']} "
          f"parameters and {report['buffers']} buffers.")
    print(f"1. forward in eval mode changed {len(report['eval_forward_changes'])} tensors.")
    print(f"2. forward in train mode (no backward) changed: {report['train_forward_changes']}")
    print(f"3. one optimiser step changed: {report['optimizer_step_changes']}")
    print(f"4. same input, train vs eval mode: outputs differ by up to "
          f"{report['train_vs_eval_output_max_abs_diff']:.3g} (BatchNorm: batch vs running statistics)")

    if args.checkpoint:
        trained = load_checkpoint(args.checkpoint)["model"]
        diff = changed({k: v for k, v in s0.items() if k in trained}, trained)
        same = [k for k in s0 if k in trained and k not in diff]
        report["checkpoint_changed"] = _summary(diff, kinds)
        report["checkpoint_unchanged"] = same
        print(f"5. {args.checkpoint} vs a fresh initialisation: changed {report['checkpoint_changed']}; "
              f"unchanged: {same}")
    return report


if __name__ == "__main__":
    run_cli(main)
