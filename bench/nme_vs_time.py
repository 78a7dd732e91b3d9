"""NME against training time, from runs' ``epochs.csv``, with a peer's NME as a line and the trend carried on.

    .venv/bin/python bench/nme_vs_time.py --run recipe=runs/faces --run "10 epochs=runs/proxy" \
        --peer dlib=0.0323 --out docs/images/nme_vs_time_300w.png

Each run's validation rows give (cumulative training minutes, ``val_NME``); the training minutes are the
sum of ``train_seconds`` of the epochs so far (evaluation time left out). The trend is a straight line of
NME against log(minutes) through the last ``--fit-last`` evaluations of the first run: a learning curve that
keeps its slope per doubling of the budget. Where that line crosses the peer's NME is printed as the budget
the trend says would be needed; a trend is an extrapolation, so read it as an order of magnitude.

A run's own last evaluations flatten as a cosine schedule anneals, which says nothing about a longer budget.
``--trend-over ends`` fits the line through the *final* evaluation of every ``--run`` instead (the same
config trained for different numbers of epochs: one point per budget). Their minutes are then each run's
epochs times the first run's training minutes per epoch, so runs timed on a busier machine or with fewer
threads sit where they would on the first run's machine (same config, same cost per epoch).
"""

from __future__ import annotations

import argparse
import csv
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_curve(epochs_csv: str, metric: str = "val_NME") -> list[tuple[float, float, int]]:
    """``[(training minutes, metric, epoch)]`` of the rows of ``epochs_csv`` that have ``metric``."""
    out, seconds = [], 0.0
    with open(epochs_csv, newline="") as f:
        for row in csv.DictReader(f):
            seconds += float(row["train_seconds"] or 0)
            value = row.get(metric)
            if value not in (None, ""):
                out.append((seconds / 60, float(value), int(row["epoch"])))
    if not out:
        raise SystemExit(f"error: {epochs_csv} has no {metric!r} column with values; was the run evaluated?")
    return out


def on_first_runs_clock(curve: list[tuple[float, float, int]], minutes_per_epoch: float):
    """``curve`` with its minutes replaced by ``epoch * minutes_per_epoch``."""
    return [(epoch * minutes_per_epoch, value, epoch) for _, value, epoch in curve]


def log_trend(points: list[tuple[float, float, int]]) -> tuple[float, float]:
    """Least-squares ``NME = a + b * log(minutes)`` through ``points``; returns ``(a, b)``."""
    xs = [math.log(m) for m, _, _ in points]
    ys = [v for _, v, _ in points]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if n < 2 or sxx == 0:
        raise SystemExit("error: the trend needs at least two evaluations at different times (--fit-last)")
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - b * mx, b


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, help="label=run_folder (its epochs.csv)")
    parser.add_argument("--peer", action="append", default=[], help="label=NME (a fraction), drawn as a line")
    parser.add_argument("--metric", default="val_NME")
    parser.add_argument("--fit-last", type=int, default=4, help="evaluations of the first run the trend uses")
    parser.add_argument("--trend-over", choices=("last", "ends"), default="last",
                        help="last: the first run's last --fit-last evaluations; ends: every run's final one")
    parser.add_argument("--out", required=True, help="the PNG to write")
    args = parser.parse_args(argv)

    runs = [(label, read_curve(f"{path}/epochs.csv", args.metric))
            for label, path in (r.split("=", 1) for r in args.run)]
    peers = [(label, float(v)) for label, v in (p.split("=", 1) for p in args.peer)]
    if args.trend_over == "ends":
        first = runs[0][1]
        minutes_per_epoch = first[-1][0] / first[-1][2]
        runs = [(label, on_first_runs_clock(curve, minutes_per_epoch)) for label, curve in runs]
        fit_points = [curve[-1] for _, curve in runs]
    else:
        fit_points = runs[0][1][-args.fit_last:]
    a, b = log_trend(fit_points)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, curve in runs:
        ax.plot([m for m, _, _ in curve], [100 * v for _, v, _ in curve], "o-", label=label)
    last_minutes = max(curve[-1][0] for _, curve in runs)
    report = {"trend": {"a": a, "b_per_log_minute": b, "fit_points": len(fit_points), "over": args.trend_over}}
    for label, value in peers:
        ax.axhline(100 * value, color="grey", linestyle="--")
        ax.text(0.01, 100 * value, f"{label} {100 * value:.2f} %", transform=ax.get_yaxis_transform(),
                va="bottom", color="grey")    # x in axes fractions: inside the plot whatever the x scale
        # Solve a + b log(t) = value; only a falling trend (b < 0) ever gets there.
        minutes = math.exp((value - a) / b) if b < 0 else math.inf
        report[f"minutes_to_{label}"] = minutes
        through = (f"the final evaluations of {len(fit_points)} runs" if args.trend_over == "ends"
                   else f"the last {args.fit_last} evaluations of {runs[0][0]!r}")
        print(f"trend through {through}: NME = {100 * a:.2f} "
              f"{100 * b:+.2f} x ln(minutes) (%); reaches {label}'s {100 * value:.2f} % at "
              + (f"{minutes:.0f} training minutes" if math.isfinite(minutes) else "never (the trend is flat)"))
    if b < 0:
        end = max(last_minutes * 4, min(report.get(f"minutes_to_{peers[0][0]}", 0) if peers else 0,
                                        last_minutes * 16))
        ts = [last_minutes * (end / last_minutes) ** (i / 20) for i in range(21)]
        ax.plot(ts, [100 * (a + b * math.log(t)) for t in ts], ":", color="black", label="trend (log fit)")
    ax.set_xscale("log")
    ax.set_xlabel("training minutes (this CPU, evaluation excluded)")
    ax.set_ylabel(f"{args.metric.removeprefix('val_')} (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
