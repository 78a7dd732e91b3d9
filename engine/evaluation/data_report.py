"""A one-page picture of a COCO keypoint set: what is labelled, how big and how shaped the boxes are, and
how the images fall into splits. Look at it before training: a keypoint labelled in a handful of instances,
boxes of a few pixels, or an empty split show here first."""

from __future__ import annotations

from collections import Counter

import numpy as np


def data_report_stats(coco: dict, category_id: int) -> dict:
    """Counts behind the picture: ``labelled`` [K] (instances with keypoint k labelled), ``widths``,
    ``heights`` (box sizes in pixels), ``splits`` (images per split; ``(none)`` when unnamed)."""
    cat = next(c for c in coco["categories"] if int(c["id"]) == int(category_id))
    k = len(cat["keypoints"])
    labelled = np.zeros(k, int)
    widths, heights = [], []
    for a in coco["annotations"]:
        if int(a.get("category_id", category_id)) != int(category_id) or a.get("iscrowd"):
            continue
        kp = np.asarray(a["keypoints"], float).reshape(k, 3)
        labelled += kp[:, 2] > 0
        widths.append(float(a["bbox"][2]))
        heights.append(float(a["bbox"][3]))
    splits = Counter(str(img.get("split") or "(none)") for img in coco["images"])
    return {"names": list(cat["keypoints"]), "labelled": labelled, "widths": np.asarray(widths),
            "heights": np.asarray(heights), "splits": dict(splits), "instances": len(widths)}


def plot_data_report(coco: dict, category_id: int, path: str, title: str = "") -> dict:
    """Write the picture to ``path`` (PNG); returns the stats it shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = data_report_stats(coco, category_id)
    k = len(s["names"])
    fig, axes = plt.subplots(2, 2, figsize=(11, max(6.0, 0.18 * k + 3)))
    ax = axes[0, 0]
    ax.barh(range(k), s["labelled"], color="tab:blue")
    ax.set_yticks(range(k), s["names"], fontsize=7 if k > 20 else 9)
    ax.invert_yaxis()
    ax.axvline(s["instances"], color="gray", ls="--", lw=1, label=f"all {s['instances']} instances")
    ax.set_xlabel("instances with the keypoint labelled")
    ax.legend(loc="lower right", fontsize=8)
    ax = axes[0, 1]
    ax.scatter(s["widths"], s["heights"], s=8, alpha=0.6)
    ax.set_xlabel("box width (px)")
    ax.set_ylabel("box height (px)")
    ax.set_title("box sizes")
    ax = axes[1, 0]
    aspects = s["widths"] / np.maximum(s["heights"], 1e-9)
    if len(aspects):
        ax.hist(np.log2(np.maximum(aspects, 1e-3)), bins=30, color="tab:green")
        ax.axvline(np.log2(max(np.median(aspects), 1e-3)), color="k", lw=1,
                   label=f"median w/h {np.median(aspects):.2f}")
        ax.legend(fontsize=8)
    ax.set_xlabel("log2 box aspect (width / height)")
    ax.set_title("box aspects")
    ax = axes[1, 1]
    names = sorted(s["splits"])
    ax.bar(names, [s["splits"][n] for n in names], color="tab:orange")
    ax.set_ylabel("images")
    ax.set_title("images per split")
    fig.suptitle(title or f"{len(coco['images'])} images, {s['instances']} instances, {k} keypoints")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return s
