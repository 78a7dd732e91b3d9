"""Why subtract the mean from the input? All-positive inputs give a unit's weight gradients one sign (FAQ).

    python -m tools.faq.mean_subtraction [--image docs/images/demo_predictions.jpg] [--patch 3] [--samples 4000]

A unit ``y = w . x + b`` of the first layer gets ``dL/dw_i = dL/dy * x_i`` from one sample. When every
input ``x_i`` is positive (pixels in [0, 255], or in [0, 1] after ``ToTensor``), all components of that
gradient share the sign of ``dL/dy``: one step can only raise all of the unit's weights or lower all of
them, and reaching weights of mixed signs takes a zig-zag. Centring (``x - mean``) gives the inputs both
signs, so the gradient's components do too. The same mean makes the loss surface badly conditioned: the
Hessian of a linear unit is ``E[x x^T] = Cov(x) + m m^T``, whose largest eigenvalue grows with ``|m|^2``;
gradient descent needs a step below ``2 / lambda_max`` and then crawls along the other directions, in about
``kappa`` steps. Centring removes ``m m^T``; dividing by the std also equalises the channels.

The tool takes ``--patch`` x ``--patch`` x 3 patches of an image (a conv unit's input), and for the raw
pixels, the (0, 1) scaling, the ImageNet normalisation and the data's own centring reports: the share of per-sample
gradients whose components all share one sign, the share of mini-batch gradients (16 samples, random
``dL/dy``) with one sign, the condition number of ``E[x x^T]`` (with the bias input 1), and the steps gradient
descent at its largest stable rate needs to close 99.9 % of the gap to the optimum of a least-squares fit.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from datasets.image_io import read_image_rgb
from models.errors import InputError
from tools._common import add_debug_flag, run_cli

IMAGENET_MEAN = (0.485, 0.456, 0.406)   # what torchvision's and most timm ImageNet weights expect, in [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs",
                             "images", "demo_predictions.jpg")
PREPROCESSINGS = ("raw [0, 255]", "scaled to [0, 1]", "ImageNet-centred", "ImageNet-standardised",
                  "data-centred")


def sample_patches(image: np.ndarray, patch: int = 3, samples: int = 4000, seed: int = 0) -> np.ndarray:
    """``samples`` random ``patch x patch x 3`` patches of an RGB uint8 image, flattened: [samples, 3 patch^2]
    float64 in [0, 255] (channel fastest, so channel c of pixel j is column ``3 j + c``)."""
    h, w = image.shape[:2]
    if h < patch or w < patch:
        raise InputError(f"the image ({w}x{h}) is smaller than --patch {patch}")
    rng = np.random.default_rng(seed)
    ys, xs = rng.integers(0, h - patch + 1, samples), rng.integers(0, w - patch + 1, samples)
    return np.stack([image[y:y + patch, x:x + patch].reshape(-1) for y, x in zip(ys, xs)]).astype(np.float64)


def preprocess(x: np.ndarray, how: str, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """The input conventions of :data:`PREPROCESSINGS` for [N, 3 k] pixel rows in [0, 255]: as they are, divided
    by 255 (``ToTensor``), minus the ImageNet mean (in [0, 1]), also divided by the ImageNet std
    (``Normalize``: what torchvision's and most timm weights expect), and minus the rows' own per-column
    mean (what a data set's own mean, or a batch-norm layer, does)."""
    channels = x.shape[1] // 3
    m, s = np.tile(mean, channels), np.tile(std, channels)
    if how == PREPROCESSINGS[0]:
        return x
    if how == PREPROCESSINGS[1]:
        return x / 255.0
    if how == PREPROCESSINGS[2]:
        return x / 255.0 - m
    if how == PREPROCESSINGS[3]:
        return (x / 255.0 - m) / s
    if how == PREPROCESSINGS[4]:
        return x / 255.0 - (x / 255.0).mean(0)
    raise ValueError(f"unknown preprocessing {how!r}; one of {PREPROCESSINGS}")


def one_sign(g: np.ndarray) -> np.ndarray:
    """True for each row of ``g`` [N, D] whose non-zero components all share one sign."""
    return ~((g > 0).any(1) & (g < 0).any(1))


def weight_gradients(x: np.ndarray, upstream: np.ndarray) -> np.ndarray:
    """Per-sample weight gradients of a linear unit: ``dL/dw = dL/dy * x``. x: [N, D], upstream: [N] -> [N, D]."""
    return upstream[:, None] * x


def condition_number(x: np.ndarray, bias: bool = True) -> float:
    """kappa of ``E[x x^T]`` (the Hessian of a linear unit's mean squared error), with the bias input 1."""
    if bias:
        x = np.concatenate([x, np.ones((len(x), 1))], 1)
    eig = np.linalg.eigvalsh(x.T @ x / len(x))
    return float(eig[-1] / max(eig[0], 1e-300))


def gd_steps(x: np.ndarray, tol: float = 1e-3, max_steps: int = 100_000, seed: int = 0) -> int:
    """Steps of full-batch gradient descent (rate ``1 / lambda_max``, from w = 0) on the least-squares fit of
    a random linear target, until the loss gap to the optimum is below ``tol`` of its start; ``max_steps``
    when it is not reached by then. Runs on the quadratic's error: ``e <- (I - H / lambda_max) e``."""
    x = np.concatenate([x, np.ones((len(x), 1))], 1)
    h = x.T @ x / len(x)
    lam = np.linalg.eigvalsh(h)[-1]
    e = np.random.default_rng(seed).normal(size=len(h))      # w - w*
    gap0 = 0.5 * e @ h @ e
    step = np.eye(len(h)) - h / lam
    for t in range(1, max_steps + 1):
        e = step @ e
        if 0.5 * e @ h @ e <= tol * gap0:
            return t
    return max_steps


def analyse(x_raw: np.ndarray, batch: int = 16, seed: int = 0, max_steps: int = 100_000) -> list[dict]:
    """One row per preprocessing: per-sample and mini-batch one-sign shares, kappa and GD steps."""
    rng = np.random.default_rng(seed)
    upstream = rng.normal(size=len(x_raw))                    # dL/dy of each sample
    rows = []
    for how in PREPROCESSINGS:
        x = preprocess(x_raw, how)
        g = weight_gradients(x, upstream)
        n = len(g) // batch * batch
        g_batch = g[:n].reshape(-1, batch, g.shape[1]).sum(1)
        rows.append({"inputs": how, "mean": float(x.mean()), "per_sample_one_sign": float(one_sign(g).mean()),
                     "batch_one_sign": float(one_sign(g_batch).mean()), "kappa": condition_number(x),
                     "gd_steps": gd_steps(x, max_steps=max_steps)})
    return rows


def format_rows(rows: list[dict], max_steps: int) -> str:
    head = (f"{'inputs':<22} {'mean':>7} {'one-sign grads (1 sample)':>26} {'(batch of 16)':>14} "
            f"{'kappa of E[xx^T]':>17} {'GD steps to 0.1 %':>18}")
    lines = [head, "-" * len(head)]
    for r in rows:
        steps = f">{max_steps}" if r["gd_steps"] >= max_steps else str(r["gd_steps"])
        lines.append(f"{r['inputs']:<22} {r['mean']:>7.3f} {100 * r['per_sample_one_sign']:>25.1f}% "
                     f"{100 * r['batch_one_sign']:>13.1f}% {r['kappa']:>17.3g} {steps:>18}")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", default=DEFAULT_IMAGE, help="an RGB image to take patches from")
    p.add_argument("--patch", type=int, default=3, help="patch side (a 3x3 conv's input: 27 values)")
    p.add_argument("--samples", type=int, default=4000)
    p.add_argument("--max-steps", type=int, default=100_000, help="give up gradient descent after this many steps")
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    args = add_debug_flag(get_args_parser()).parse_args(argv)
    image = read_image_rgb(args.image)
    if image is None:
        raise InputError(f"--image {args.image} cannot be read (missing or not an image)")
    rows = analyse(sample_patches(image, args.patch, args.samples), max_steps=args.max_steps)
    print(f"{args.samples} patches of {args.patch}x{args.patch}x3 from {args.image}; a linear unit y = w.x + b")
    print(format_rows(rows, args.max_steps))
    return rows


if __name__ == "__main__":
    run_cli(main)
