"""bench/nme_vs_time.py: the curve read from epochs.csv and the log-time trend, on hand-made numbers."""

from __future__ import annotations

import math

import pytest

from bench.nme_vs_time import log_trend, main, read_curve


def _write_epochs(path, rows):
    header = "epoch,step,train_loss,train_images,train_seconds,train_images_per_s,lr,val_NME\n"
    path.write_text(header + "".join(f"{e},{e * 10},0.1,100,{s},10,0.001,{v}\n" for e, s, v in rows))


def test_curve_sums_training_seconds_and_keeps_evaluated_rows(tmp_path):
    _write_epochs(tmp_path / "epochs.csv", [(1, 60, ""), (2, 60, 0.08), (3, 120, ""), (4, 60, 0.05)])
    assert read_curve(str(tmp_path / "epochs.csv")) == [(2.0, 0.08, 2), (5.0, 0.05, 4)]


def test_log_trend_recovers_a_known_line_and_the_budget_to_a_peer(tmp_path):
    # NME = 0.10 - 0.01 ln(t): at t = 1, e, e^2 minutes -> 0.10, 0.09, 0.08; it reaches 0.05 at t = e^5.
    points = [(1.0, 0.10, 1), (math.e, 0.09, 2), (math.e ** 2, 0.08, 3)]
    a, b = log_trend(points)
    assert a == pytest.approx(0.10) and b == pytest.approx(-0.01)
    rows = [(1, 60, 0.10), (2, 60 * (math.e - 1), 0.09), (3, 60 * (math.e ** 2 - math.e), 0.08)]
    _write_epochs(tmp_path / "epochs.csv", rows)
    report = main(["--run", f"r={tmp_path}", "--peer", "peer=0.05", "--fit-last", "3",
                   "--out", str(tmp_path / "curve.png")])
    assert report["minutes_to_peer"] == pytest.approx(math.e ** 5, rel=1e-4)
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_a_run_without_evaluations_is_refused(tmp_path):
    _write_epochs(tmp_path / "epochs.csv", [(1, 60, "")])
    with pytest.raises(SystemExit, match="no 'val_NME'"):
        read_curve(str(tmp_path / "epochs.csv"))


def test_trend_over_run_ends_puts_every_run_on_the_first_runs_clock(tmp_path):
    # The long run: 4 epochs of 60 s (1 minute per epoch), final NME 0.10 - 0.01 ln 4. The short run: 1 epoch
    # timed at 300 s (a busy machine), NME 0.10. On the long run's clock the short run ends at 1 minute, so
    # the line is NME = 0.10 - 0.01 ln(t), and it reaches 0.05 at t = e^5.
    long_dir, short_dir = tmp_path / "long", tmp_path / "short"
    long_dir.mkdir()
    short_dir.mkdir()
    _write_epochs(long_dir / "epochs.csv", [(1, 60, 0.2), (2, 60, ""), (3, 60, ""), (4, 60, 0.10 - 0.01 * math.log(4))])
    _write_epochs(short_dir / "epochs.csv", [(1, 300, 0.10)])
    report = main(["--run", f"long={long_dir}", "--run", f"short={short_dir}", "--peer", "peer=0.05",
                   "--trend-over", "ends", "--out", str(tmp_path / "curve.png")])
    assert report["trend"]["fit_points"] == 2 and report["trend"]["over"] == "ends"
    assert report["trend"]["a"] == pytest.approx(0.10) and report["trend"]["b_per_log_minute"] == pytest.approx(-0.01)
    assert report["minutes_to_peer"] == pytest.approx(math.e ** 5, rel=1e-6)
