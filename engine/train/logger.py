"""Run logs: CSV files of every logged value (per step and per epoch), TensorBoard when installed."""

from __future__ import annotations

import csv
import os


class CsvLog:
    """Rows of named values; the file is rewritten when a new column appears, so columns never shift."""

    def __init__(self, path: str):
        self.path = path
        self.rows: list[dict] = []
        self.columns: list[str] = []

    def restore(self, key: str, last: int) -> None:
        """Resume into the same folder: keep the existing rows with ``row[key] <= last``, drop the later ones
        (logged after the checkpoint the run resumes from, so they are about to be logged again)."""
        if not os.path.isfile(self.path):
            return
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            rows = [r for r in reader if r.get(key) not in (None, "") and float(r[key]) <= last]
            columns = list(reader.fieldnames or [])
        self.rows, self.columns = rows, columns
        self._rewrite()

    def append(self, row: dict) -> None:
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        if new or not os.path.exists(self.path):
            self.columns += new
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, self.columns).writerow(row)

    def _rewrite(self) -> None:
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(self.rows)


class RunLogger:
    """``steps.csv`` and ``epochs.csv`` in the run folder, mirrored to TensorBoard if it is installed."""

    def __init__(self, run_dir: str, enabled: bool = True):
        self.enabled = enabled
        self.steps = CsvLog(os.path.join(run_dir, "steps.csv"))
        self.epochs = CsvLog(os.path.join(run_dir, "epochs.csv"))
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
            except ImportError:   # tensorboard is optional
                self.tb = None

    def log_step(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        self.steps.append({"step": step, **values})
        if self.tb:
            for k, v in values.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.tb.add_scalar(f"train/{k}", v, step)

    def log_epoch(self, epoch: int, step: int, values: dict) -> None:
        if not self.enabled:
            return
        self.epochs.append({"epoch": epoch, "step": step, **values})
        if self.tb:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"epoch/{k}", v, epoch)

    def restore(self, step: int, epoch: int) -> None:
        """Continue the CSV files of a run folder that is being resumed (TensorBoard appends by itself)."""
        if self.enabled:
            self.steps.restore("step", step)
            self.epochs.restore("epoch", epoch)
        if self.tb:   # purge_step: TensorBoard hides the events after the checkpoint from the earlier attempt
            from torch.utils.tensorboard import SummaryWriter

            log_dir = self.tb.log_dir
            self.tb.close()
            self.tb = SummaryWriter(log_dir, purge_step=step + 1)

    def close(self) -> None:
        if self.tb:
            self.tb.close()
