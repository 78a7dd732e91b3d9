"""The training curves of a run folder (loss per step and per epoch, the main metric) as one picture."""

from __future__ import annotations

import csv
import os


def plot_training_curves(epoch_csv: str, step_csv: str, path: str, main_metric: str | None = None) -> None:
    """Loss (per step and per epoch), the validation metrics and the learning rate, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, epochs = _read_csv(step_csv), _read_csv(epoch_csv)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    if steps:
        x = [float(r["step"]) for r in steps]
        axes[0].plot(x, [float(r["loss"]) for r in steps], lw=0.8, alpha=0.6, label="train loss (step)")
        axes[2].plot(x, [float(r["lr"]) for r in steps], color="tab:purple")
    if epochs:
        with_loss = [r for r in epochs if r.get("train_loss")]
        axes[0].plot([float(r["step"]) for r in with_loss], [float(r["train_loss"]) for r in with_loss], "o-",
                     label="train loss (epoch, sample-weighted)")
        metric_keys = [k for k in epochs[0] if k.startswith("val_")]
        for key in metric_keys:
            pts = [(int(r["epoch"]), float(r[key])) for r in epochs if r.get(key) not in (None, "")]
            # pycocotools reports -1 for an area range with no instances (e.g. APl on small figures): not a value
            if pts and any(v != -1.0 for _, v in pts):
                lw = 2.5 if main_metric and key == f"val_{main_metric}" else 1.0
                axes[1].plot(*zip(*pts), "o-", lw=lw, label=key[4:])
    axes[0].set(xlabel="step", ylabel="loss", yscale="log", title="training loss")
    axes[0].legend(fontsize=8)
    axes[1].set(xlabel="epoch", title="validation")
    if axes[1].lines:
        axes[1].legend(fontsize=7, ncol=2)
    axes[2].set(xlabel="step", ylabel="learning rate", title="schedule")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)



def _read_csv(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
