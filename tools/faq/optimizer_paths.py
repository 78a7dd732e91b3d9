"""Compare SGD, momentum, Nesterov, Adagrad, RMSprop and Adam on an ill-conditioned 2-D quadratic.

J(theta) = 0.5 * (theta_1^2 + cond * theta_2^2), minimum 0 at the origin, gradient
(theta_1, cond * theta_2). The valley is ``cond`` times steeper along theta_2 than along
theta_1, so one learning rate cannot suit both coordinates: plain SGD must keep lr < 2 / cond
to stay stable and then crawls along theta_1.

Every optimiser is the real ``torch.optim`` class, started from the same point. The figure has
two panels: the paths over the loss contours, and the *effective step size* per coordinate,
|delta theta_i| / |grad_i| (grad taken where the step was computed). For SGD it is the constant
lr for both coordinates; Adagrad / RMSprop / Adam divide by a per-coordinate running gradient
scale, so their effective steps differ between coordinates and change over time (momentum
methods also vary, because the step carries past gradients).

Usage::

    python -m tools.faq.optimizer_paths [--steps 100] [--output outputs/optimizer_paths.png]
                                    [--cond 50] [--lr adam=0.3 sgd=0.02 ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")  # headless: only ever writes files
import matplotlib.pyplot as plt  # noqa: E402

from models.errors import InputError
from tools._common import add_debug_flag, run_cli

# name -> (optimiser class, default kwargs); learning rates chosen so that all six converge
# reasonably in ~100 steps at cond = 50 from the default start.
OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict]] = {
    "sgd": (torch.optim.SGD, {"lr": 0.035}),
    "momentum": (torch.optim.SGD, {"lr": 0.01, "momentum": 0.9}),
    "nesterov": (torch.optim.SGD, {"lr": 0.01, "momentum": 0.9, "nesterov": True}),
    "adagrad": (torch.optim.Adagrad, {"lr": 1.0}),
    "rmsprop": (torch.optim.RMSprop, {"lr": 0.05}),
    "adam": (torch.optim.Adam, {"lr": 0.3}),
}


def quadratic(cond: float):
    """Returns (loss, grad) for J(theta) = 0.5 * (theta_1^2 + cond * theta_2^2); theta: (2,)."""
    a = torch.tensor([1.0, cond], dtype=torch.float64)

    def loss(theta: torch.Tensor) -> float:
        return float(0.5 * (a * theta**2).sum())

    def grad(theta: torch.Tensor) -> torch.Tensor:
        return a * theta

    return loss, grad


def run_optimizer(name: str, lr: float | None, start, steps: int, cond: float) -> dict:
    """Run one optimiser. Returns path (steps+1, 2), loss (steps+1,), grad (steps, 2),
    effective_step (steps, 2) = |theta_t - theta_{t-1}| / |grad(theta_{t-1})| (nan where grad is 0), lr."""
    cls, kwargs = OPTIMIZERS[name]
    kwargs = dict(kwargs) if lr is None else {**kwargs, "lr": lr}
    loss, grad = quadratic(cond)
    theta = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    opt = cls([theta], **kwargs)
    path, grads = [theta.detach().clone()], []
    for _ in range(steps):
        g = grad(theta.detach())
        theta.grad = g.clone()  # exact gradient; the optimiser may modify .grad in place
        opt.step()
        path.append(theta.detach().clone())
        grads.append(g)
    path_np = torch.stack(path).numpy()
    grads_np = torch.stack(grads).numpy() if grads else np.zeros((0, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        eff = np.abs(np.diff(path_np, axis=0)) / np.abs(grads_np)
    eff[grads_np == 0] = np.nan
    return {
        "path": path_np,
        "loss": np.array([loss(torch.from_numpy(p)) for p in path_np]),
        "grad": grads_np,
        "effective_step": eff,
        "lr": kwargs["lr"],
    }


def plot(results: dict, cond: float, out: Path) -> None:
    fig, (ax_path, ax_eff) = plt.subplots(1, 2, figsize=(13, 5.2))
    pts = np.concatenate([r["path"] for r in results.values()])
    finite = pts[np.isfinite(pts).all(axis=1)]
    lo, hi = finite.min(0), finite.max(0)
    pad = 0.15 * (hi - lo) + 0.1
    xs = np.linspace(lo[0] - pad[0], hi[0] + pad[0], 300)
    ys = np.linspace(lo[1] - pad[1], hi[1] + pad[1], 300)
    X, Y = np.meshgrid(xs, ys)
    Z = 0.5 * (X**2 + cond * Y**2)
    levels = np.geomspace(max(Z.min(), 1e-3), Z.max(), 15)
    ax_path.contour(X, Y, Z, levels=levels, colors="0.75", linewidths=0.8)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (name, r), c in zip(results.items(), colors, strict=False):
        p = r["path"]
        ax_path.plot(p[:, 0], p[:, 1], "-o", ms=2, lw=1, color=c, label=f"{name} (lr={r['lr']:g})")
        steps = np.arange(1, len(p))
        # momentum steps carry old gradients, so their ratio spikes when grad_i crosses zero;
        # drawn faintly to keep the per-coordinate scaling of the adaptive methods readable
        style = {"lw": 0.8, "alpha": 0.45} if "momentum" in OPTIMIZERS[name][1] else {"lw": 1.4}
        ax_eff.plot(steps, r["effective_step"][:, 0], "-", color=c, label=f"{name} θ1", **style)
        ax_eff.plot(steps, r["effective_step"][:, 1], "--", color=c, label=f"{name} θ2", **style)
    ax_path.plot([0], [0], "k*", ms=10)
    ax_path.set(
        xlabel="θ1 (flat direction)", ylabel=f"θ2 ({cond:g}x steeper)", title="paths over loss contours"
    )
    ax_path.legend(fontsize=8)
    ax_eff.set_yscale("log")
    ax_eff.set(
        xlabel="iteration",
        ylabel="|Δθ_i| / |grad_i|",
        title="effective step size per coordinate (solid θ1, dashed θ2)",
    )
    ax_eff.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def parse_lrs(items: list[str]) -> dict[str, float]:
    lrs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in OPTIMIZERS:
            raise InputError(f"--lr: expected NAME=VALUE with NAME in {sorted(OPTIMIZERS)}, got '{item}'")
        try:
            lrs[name] = float(value)
        except ValueError:
            raise InputError(f"--lr: '{value}' in '{item}' is not a number") from None
        if lrs[name] <= 0:
            raise InputError(f"--lr: learning rate for {name} must be > 0, got {value}")
    return lrs


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100, help="optimisation steps per optimiser")
    p.add_argument("--output", type=Path, default=Path("outputs/optimizer_paths.png"), help="PNG to write")
    p.add_argument("--cond", type=float, default=50.0, help="condition number of the quadratic (>= 1)")
    p.add_argument("--start", type=float, nargs=2, default=[-5.0, 1.5], metavar=("T1", "T2"))
    p.add_argument(
        "--lr", nargs="*", default=[], metavar="NAME=LR", help="override learning rates, e.g. adam=0.1"
    )
    p.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    return p


def main(argv: list[str] | None = None) -> dict:
    """Returns {name: run_optimizer(...) result} for every optimiser, in the order run."""
    args = add_debug_flag(get_args_parser()).parse_args(argv)
    if args.steps < 1:
        raise InputError(f"--steps must be >= 1, got {args.steps}")
    if args.cond < 1:
        raise InputError(f"--cond is a condition number and must be >= 1, got {args.cond}")
    lrs = parse_lrs(args.lr)
    results = {
        name: run_optimizer(name, lrs.get(name), args.start, args.steps, args.cond)
        for name in args.optimizers
    }
    plot(results, args.cond, args.output)

    print(
        f"J(theta) = 0.5 (theta_1^2 + {args.cond:g} theta_2^2), start {tuple(args.start)}, {args.steps} steps"
    )
    print(f"{'optimizer':<10} {'lr':>7} {'initial loss':>13} {'final loss':>12}")
    for name, r in results.items():
        print(f"{name:<10} {r['lr']:>7g} {r['loss'][0]:>13.4g} {r['loss'][-1]:>12.4g}")
    print(f"wrote {args.output}")
    return results


if __name__ == "__main__":
    run_cli(main)
