"""Jobs stopped from outside: SIGTERM (and SIGUSR1 when configured) ends a REAL ``python -m tools.train`` like
Ctrl-C does, and the printed command finishes the run.

The end-to-end tests start the tool as a subprocess (a signal handler is process state: only a real process
shows the exit code, the line on stderr and what the DataLoader workers do), wait for the log line of the
first finished epoch, send the signal and read the result. Where exactly the signal lands (start of epoch 2,
or a few steps into it) depends on the machine's speed, so the checks read the step and epoch from the line
and hold them against ``last.pt``. Under torchrun (2 gloo processes on the CPU) the signal goes to one rank
only, then, in the resumed run, to the launcher and both ranks at once (as SLURM signals every process of a
job step): both ranks must stop at the same step, and no process may hang (every wait has a deadline).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from engine.checkpoint import load_checkpoint
from engine.config.sections import STOP_SIGNALS
from engine.tasks.registry import load_config
from engine.train.stop import IgnoreInWorkers, shield_workers, stop_signals
from models.errors import ConfigError, Stopped
from tools.train import launcher_prefix, resume_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/cls_resnet10t_synthetic-shapes_32x32.yaml"
EPOCHS = 3
# 48 images of 32 x 32 in batches of 8: 6 optimiser steps per epoch, an epoch in a second or two on one thread.
TINY = ["data.synthetic.num_train_images=48", "data.synthetic.num_val_images=8", "data.synthetic.min_image_size=32",
        "data.synthetic.max_image_size=32", "data.input_size=[32,32]", "train.batch_size=8", "data.val_batch_size=8",
        "train.num_threads=1", "train.warmup_steps=1", "train.ema_decay=null", "train.log_interval=1",
        f"train.epochs={EPOCHS}"]
STEPS_PER_EPOCH = 6
DEADLINE = 180          # seconds for any one wait: a hang fails the test instead of the suite's 10-minute limit
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}


# ---------------------------------------------------------------------------------------------- helpers
class Training:
    """A training subprocess in its own session (so a group signal reaches it and its workers, nothing else)
    whose stderr is read by a thread, line by line."""

    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen(argv, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str) -> None:
        end = time.monotonic() + DEADLINE
        while not any(text in line for line in self.lines):
            if self.proc.poll() is not None:
                self.reader.join(5)
                if any(text in line for line in self.lines):
                    return
                pytest.fail(f"exited with {self.proc.returncode} before {text!r}:\n" + self.stderr[-4000:])
            if time.monotonic() > end:
                self.kill()
                pytest.fail(f"no {text!r} within {DEADLINE} s:\n" + self.stderr[-4000:])
            time.sleep(0.05)

    def finish(self) -> int:
        try:
            code = self.proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"still running {DEADLINE} s after the signal (a hang):\n" + self.stderr[-4000:])
        self.reader.join(10)
        return code

    def kill(self) -> None:
        for pid in [*descendants(self.proc.pid), self.proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def error_lines(self) -> list[str]:
        return [line for line in self.lines if line.startswith("error: ")]


def tool(*args: str) -> list[str]:
    return [sys.executable, "-m", "tools.train", "--config", CONFIG, "--no-progress", *args]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun's workers run in their own sessions, so a group signal misses
    them), from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def rank_pids(launcher_pid: int) -> dict[int, int]:
    """``{rank: pid}`` of the workers that torchrun started (their environment names the rank)."""
    out = {}
    for pid in descendants(launcher_pid):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        except OSError:
            continue
        if b"RANK" in env and b"TORCHELASTIC_RUN_ID" in env:
            out[int(env[b"RANK"])] = pid
    return out


def our_traceback(stderr: str) -> bool:
    """A traceback through this repository's code (torchrun prints its own for failed workers: not ours)."""
    return bool(re.search(r'File "[^"]*/(engine|tools|models|datasets)/', stderr))


STOP_LINE = re.compile(r"^error: stopped by (SIG\w+) in epoch (\d+) of (\d+), after (\d+) optimiser steps; (\S+) is "
                       r"complete \(end of epoch (\d+)\)(?:; the (\d+) optimiser steps after it are trained again on "
                       r"resume \(a stop keeps the last end-of-epoch checkpoint\))?; continue with: (.+)$")


def check_stop_line(line: str, signame: str, run: str, epochs: int, steps_per_epoch: int) -> tuple[int, str]:
    """The line is right about itself and about ``last.pt``: ``(epochs in last.pt, resume command)``."""
    match = STOP_LINE.match(line)
    assert match, line
    name, epoch, total, steps, path, saved, redo, command = match.groups()
    last = os.path.join(run, "last.pt")
    assert (name, int(total), path) == (signame, epochs, last), line
    state = load_checkpoint(last)                        # complete: it loads
    assert int(saved) == state["epoch"] >= 1 and int(epoch) == state["epoch"] + 1 <= epochs, line
    assert state["global_step"] == state["epoch"] * steps_per_epoch
    assert int(steps) == state["global_step"] + int(redo or 0), line
    assert command.endswith(f"--run-dir {run} --resume {last}"), command
    return state["epoch"], command


# ---------------------------------------------------------------------------------------------- in-process
def test_handlers_are_restored_and_nested_blocks_share_what_they_heard():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1)
    with stop_signals(["TERM"]) as outer:
        assert signal.getsignal(signal.SIGTERM) is outer
        assert signal.getsignal(signal.SIGUSR1) is before[1]          # not configured: left alone
        outer(signal.SIGTERM)                                         # heard before the inner block
        with stop_signals(["SIGTERM", "usr1"]) as inner:
            assert inner.signum == signal.SIGTERM                     # inherited
            inner(signal.SIGUSR1)
            assert inner.signum == signal.SIGTERM and inner.count == 2   # the first signal wins
        assert signal.getsignal(signal.SIGTERM) is outer and signal.getsignal(signal.SIGUSR1) is before[1]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1)) == before

    with stop_signals(["TERM"]) as outer:
        with stop_signals(["TERM"]) as inner:
            os.kill(os.getpid(), signal.SIGTERM)                      # a real signal, handled, not fatal
            time.sleep(0.01)
            assert inner.signum == signal.SIGTERM
        assert outer.signum == signal.SIGTERM                         # handed back on the way out
    with pytest.raises(RuntimeError), stop_signals(["TERM"]):
        raise RuntimeError("an error inside")
    assert signal.getsignal(signal.SIGTERM) == before[0]


def test_workers_ignore_the_stop_signals_and_keep_the_loaders_own_init():
    calls = []
    loader = torch.utils.data.DataLoader(list(range(4)), num_workers=1, worker_init_fn=calls.append)
    shield_workers([loader, None, torch.utils.data.DataLoader([1])], ["TERM", "USR1"])
    init = loader.worker_init_fn
    assert isinstance(init, IgnoreInWorkers) and init.signums == [signal.SIGTERM, signal.SIGUSR1]
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        IgnoreInWorkers([signal.SIGUSR1], calls.append)(3)   # in-process: no SIGTERM blocking here
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN and calls == [3]
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_the_config_key_takes_known_signals_once():
    assert load_config(CONFIG).train.stop_signals == ["TERM"] and "USR1" in STOP_SIGNALS
    assert load_config(CONFIG, ["train.stop_signals=[TERM,SIGUSR1]"]).train.stop_signals == ["TERM", "SIGUSR1"]
    assert load_config(CONFIG, ["train.stop_signals=[]"]).train.stop_signals == []
    for bad in ("[KILL]", "[TERM,SIGTERM]"):
        with pytest.raises(ConfigError, match=r"train.stop_signals = .*each of TERM, USR1, USR2 at most once"):
            load_config(CONFIG, [f"train.stop_signals={bad}"])


def test_the_exit_code_is_the_shells_for_the_signal():
    assert Stopped("x", signal.SIGTERM).exit_code == 143 and Stopped("x", signal.SIGUSR1).exit_code == 138


def test_the_resume_command_under_torchrun_is_the_launchers_own():
    args = ["--config", CONFIG, "--run-dir", "runs/a", "train.epochs=3"]
    assert launcher_prefix({}) == "python -m tools.train"
    env = {"TORCHELASTIC_RUN_ID": "x", "LOCAL_WORLD_SIZE": "4", "GROUP_WORLD_SIZE": "2"}
    script = ["/usr/bin/python3", "/venv/bin/torchrun", "--nnodes", "2", "--nproc_per_node", "4", "--rdzv_endpoint",
              "head:29500", "-m", "tools.train", *args]
    assert launcher_prefix(env, script) == ("torchrun --nnodes 2 --nproc_per_node 4 --rdzv_endpoint head:29500 "
                                            "-m tools.train")
    module = ["/venv/bin/python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
              "tools.train", *args]
    assert launcher_prefix(env, module) == ("python -m torch.distributed.run --standalone --nproc_per_node=2 "
                                            "-m tools.train")
    assert launcher_prefix(env, []) == "torchrun --nnodes 2 --nproc_per_node 4 -m tools.train"   # /proc unreadable
    assert resume_command(args, "runs/a", "runs/a/last.pt", launcher_prefix(env, module)) == (
        "python -m torch.distributed.run --standalone --nproc_per_node=2 -m tools.train --config "
        f"{CONFIG} train.epochs=3 --run-dir runs/a --resume runs/a/last.pt")


# ---------------------------------------------------------------------------------------------- real processes
@pytest.mark.slow
def test_sigterm_stops_with_one_line_and_exit_143_then_the_printed_command_finishes(tmp_path):
    run = str(tmp_path / "run")
    # One DataLoader worker, and the signal to the whole process group as SLURM sends it: the worker must not
    # die under the loop (torch's own SIGTERM handler in workers would end it).
    training = Training(tool("--run-dir", run, *TINY, "train.num_workers=1"))
    training.wait_for(f"epoch 1/{EPOCHS}:")
    os.killpg(training.proc.pid, signal.SIGTERM)
    code = training.finish()
    assert code == 143, training.stderr[-4000:]
    assert "Traceback" not in training.stderr and len(training.error_lines()) == 1, training.stderr[-4000:]
    saved, command = check_stop_line(training.error_lines()[0], "SIGTERM", run, EPOCHS, STEPS_PER_EPOCH)
    assert command.startswith("python -m tools.train ")

    argv = shlex.split(command)
    resumed = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, env=ENV, capture_output=True, text=True,
                             timeout=DEADLINE)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"resumed from {run}/last.pt at epoch {saved}" in resumed.stderr
    state = load_checkpoint(os.path.join(run, "last.pt"))
    assert state["epoch"] == EPOCHS and state["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert os.path.isfile(os.path.join(run, "metrics.json"))
    with open(os.path.join(run, "epochs.csv")) as f:
        assert [line.split(",")[0] for line in f.read().splitlines()[1:]] == [str(e) for e in range(1, EPOCHS + 1)]


@pytest.mark.slow
def test_sigusr1_stops_only_when_configured(tmp_path):
    """Configured, SIGUSR1 stops like SIGTERM (exit code 138 = 128 + 10). Not configured, it keeps Python's
    default action, which ends the process at once (killed by the signal, no line); the checkpoint of the
    last finished epoch is intact either way. Both runs go side by side to share the start-up time."""
    configured, plain = str(tmp_path / "configured"), str(tmp_path / "plain")
    runs = {configured: Training(tool("--run-dir", configured, *TINY, "train.num_workers=0",
                                      "train.stop_signals=[TERM,USR1]")),
            plain: Training(tool("--run-dir", plain, *TINY, "train.num_workers=0"))}
    for training in runs.values():
        training.wait_for(f"epoch 1/{EPOCHS}:")
        training.proc.send_signal(signal.SIGUSR1)
    codes = {run: training.finish() for run, training in runs.items()}

    training = runs[configured]
    assert codes[configured] == 138, training.stderr[-4000:]
    assert "Traceback" not in training.stderr and len(training.error_lines()) == 1, training.stderr[-4000:]
    _, command = check_stop_line(training.error_lines()[0], "SIGUSR1", configured, EPOCHS, STEPS_PER_EPOCH)
    assert "'train.stop_signals=[TERM,USR1]'" in command             # the resumed run listens for it too

    assert codes[plain] == -signal.SIGUSR1, runs[plain].stderr[-4000:]
    assert not runs[plain].error_lines()
    assert load_checkpoint(os.path.join(plain, "last.pt"))["epoch"] >= 1


@pytest.mark.slow
def test_ddp_ranks_stop_together_when_one_rank_or_every_process_gets_sigterm(tmp_path):
    """Two gloo processes under torchrun. First SIGTERM reaches rank 1 only: rank 0 learns of it in the
    step's all-reduce and both stop at the same step (rank 1's line says so, rank 0's names the checkpoint and
    the torchrun command). Then the printed command resumes, and SIGTERM reaches torchrun and both ranks at
    once; again both stop and nothing hangs. torchrun itself reports its workers as failed (exit code 1)."""
    run, epochs = str(tmp_path / "ddp"), 4
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    args = ["-m", "tools.train", "--config", CONFIG, "--no-progress", "--run-dir", run, *TINY,
            f"train.epochs={epochs}", "train.batch_size=4", "train.num_workers=0", "train.freeze_bn=all"]
    training = Training([*launcher, *args])
    try:
        training.wait_for(f"epoch 1/{epochs}:")
        os.kill(rank_pids(training.proc.pid)[1], signal.SIGTERM)
        assert training.finish() != 0
    finally:
        training.kill()
    lines = training.error_lines()
    assert len(lines) == 2 and not our_traceback(training.stderr), training.stderr[-4000:]
    follower = next(line for line in lines if line.startswith("error: rank 1 of 2: "))
    saved, command = check_stop_line(next(line for line in lines if line is not follower), "SIGTERM", run, epochs,
                                     STEPS_PER_EPOCH)
    where = re.search(r"in epoch \d+ of \d+, after \d+ optimiser steps", follower).group(0)
    assert where in lines[0] and where in lines[1]                   # the same step on both ranks
    assert command.startswith("python -m torch.distributed.run --standalone --nproc_per_node=2 -m tools.train ")

    resumed = Training([sys.executable, *shlex.split(command)[1:]])
    try:
        resumed.wait_for(f"epoch {saved + 1}/{epochs}:")
        for pid in [resumed.proc.pid, *rank_pids(resumed.proc.pid).values()]:
            os.kill(pid, signal.SIGTERM)
        assert resumed.finish() != 0
    finally:
        resumed.kill()
    assert f"resumed from {run}/last.pt at epoch {saved}" in resumed.stderr
    lines = resumed.error_lines()
    assert len(lines) == 2 and not our_traceback(resumed.stderr), resumed.stderr[-4000:]
    leader = next(line for line in lines if not line.startswith("error: rank 1 of 2: "))
    assert check_stop_line(leader, "SIGTERM", run, epochs, STEPS_PER_EPOCH)[0] > saved
