"""Stopping from outside: SIGTERM (and SIGUSR1/SIGUSR2 when configured) ends training like Ctrl-C does.

Schedulers (SLURM at the time limit or on preemption, Kubernetes, spot instances) send SIGTERM and kill the
job a little later; SLURM can send a chosen signal earlier (``--signal=USR1@90``). Python's default action for
these signals ends the process wherever it is, with no word on which checkpoint is complete. Here:

* :func:`stop_signals` installs a handler for each signal named in ``train.stop_signals`` (default
  ``[TERM]``; ``[TERM, USR1]`` adds USR1; ``[]`` keeps every default action) for the duration of one
  :func:`engine.train.run.train`, and puts the previous handlers back afterwards, so a Python user's own
  handlers survive. Signals not named keep their action: an unconfigured SIGUSR1 still ends the process
  (Python's default), as it would for any program that does not listen for it; the last end-of-epoch
  ``last.pt`` is intact either way (checkpoint writes are atomic).
* The handler only records the signal (:class:`StopFlag`). It does not raise or exit: an exception raised in a
  handler surfaces wherever the main thread is, e.g. halfway through an optimiser step or a checkpoint write,
  or between a DDP rank's collectives, where it would leave the other ranks waiting. A second signal while
  stopping is only counted; the stop already under way is not disturbed.
* The loop (:class:`engine.train.loop.Trainer`) reads the flag at step boundaries: at the start of every
  epoch and at every step's existing host sync (the finite-loss check, before ``backward``), and raises
  :class:`StopRequested` there. ``engine.train.run.train`` turns it into a one-line
  :class:`models.errors.Stopped` (exit code 128 + the signal's number: 143 for SIGTERM, 138 for SIGUSR1).

What is saved: nothing new. The trainer cannot resume mid-epoch (the data order, the per-sample augmentation
seeds and the epoch statistics are kept per epoch), so a stop keeps the last end-of-epoch ``last.pt``, which
resumes bit-identically, and the line says how many optimiser steps of the current epoch are trained again. A
signal during the last epoch's validation lets the run finish (exit code 0). Validation itself is not cut
short: the scheduler's grace (SLURM's ``@90``, Kubernetes' ``terminationGracePeriodSeconds``) must cover one
validation and one checkpoint write.

Under DistributedDataParallel the signal may reach one rank (``kill`` of one worker), all of them (SLURM
signals every process of a job step) or only the launcher (torchrun forwards SIGTERM, and the signals of its
``--signals-to-handle``, to every worker). Ranks must stop at the same step, or the ones that go on wait in
the next all-reduce for a peer that has left. So the flag rides on the all-reduce that every step already
does for the finite-loss check (``min`` of ``[finite, -signal]``: one collective, no extra sync), and on one
small all-reduce at the start of each epoch; every rank then sees the same signal at the same step and stops
there. A rank that is blocked inside a collective because a peer died runs no Python code, so no handler can
free it: torchrun kills such workers after its ``--shutdown-timeout`` (30 s), SLURM after ``KillWait``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator

from engine.config.sections import stop_signal_names

log = logging.getLogger(__name__)


class StopRequested(BaseException):
    """Raised by the loop at a step boundary once a stop signal was received (on any rank).

    A ``BaseException`` like ``KeyboardInterrupt``: an ``except Exception`` around a hook or a plot must not
    swallow a stop that the scheduler is about to enforce with SIGKILL.
    """

    def __init__(self, signum: int):
        super().__init__(f"stop requested by {signal_name(signum)}")
        self.signum = int(signum)


class StopFlag:
    """The one thing a handler touches: the first stop signal's number (0: none) and how many arrived."""

    def __init__(self) -> None:
        self.signum = 0
        self.count = 0

    def __call__(self, signum: int, frame=None) -> None:
        # Only plain assignments: a handler runs between two bytecodes of whatever the main thread is doing
        # (logging, a checkpoint write), so it must not take locks or raise.
        self.count += 1
        if not self.signum:
            self.signum = int(signum)


def signal_name(signum: int) -> str:
    """``15`` -> ``"SIGTERM"``."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@contextlib.contextmanager
def stop_signals(names) -> Iterator[StopFlag]:
    """Handle the signals ``names`` (``TERM``, ``USR1``, ``USR2``) with a :class:`StopFlag` while the block
    runs; the previous handlers are restored on the way out, whatever happens inside.

    Nested blocks share what they heard: ``tools.train`` holds the signals from before :func:`engine.train.run.train`
    until its report is built, because under torchrun the other ranks are signalled the moment one rank
    exits, and a SIGTERM that lands after ``train`` restored the default action but before the line is
    printed would end the process without it. A signal the outer flag already holds counts for the inner one,
    and one the inner flag heard is handed back to the outer flag on the way out.

    Traps: handlers can be installed from the main thread only (elsewhere the signals keep their action,
    with a warning); ``signal.signal`` returns None for a handler installed by C code, which cannot be put
    back and is replaced by the default action. DataLoader workers need :func:`shield_workers` as well.
    """
    flag = StopFlag()
    wanted = [getattr(signal, f"SIG{name}") for name in stop_signal_names(names)]
    previous: dict[int, object] = {}
    if wanted and threading.current_thread() is not threading.main_thread():
        log.warning("train.stop_signals: training runs outside the main thread, where no signal handler can be "
                    "installed; %s keep their default action", ", ".join(signal_name(s) for s in wanted))
        wanted = []
    try:
        for sig in wanted:
            previous[sig] = signal.signal(sig, flag)
        outer = [h for h in previous.values() if isinstance(h, StopFlag)]
        for held in outer:
            if held.signum and not flag.signum:
                flag(held.signum)
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        for held in {id(h): h for h in previous.values() if isinstance(h, StopFlag)}.values():
            if flag.signum and not held.signum:
                held(flag.signum)


class IgnoreInWorkers:
    """A DataLoader ``worker_init_fn`` that makes the worker deaf to the stop signals from anyone but its
    parent, then calls the loader's own ``worker_init_fn``.

    SIGTERM cannot simply be ignored: the parent ends its workers with SIGTERM when it exits
    (multiprocessing's exit handler terminates, then joins, every live child; torch's worker handler treats
    a SIGTERM from the parent as "exit now"), so a worker that ignores it hangs the parent's exit forever.
    A Python handler cannot see who sent a signal, so SIGTERM is blocked and a thread takes it with
    ``sigwaitinfo``, which names the sender: the parent's (or any, once the parent is gone) ends the worker
    as torch's handler would, anyone else's is dropped. USR1/USR2 are never sent by the parent: ignored.
    Without ``sigwaitinfo`` (not Linux) SIGTERM keeps torch's handling.

    A class, not a closure: a loader with the ``spawn`` start method pickles it.
    """

    def __init__(self, signums: list[int], inner=None):
        self.signums, self.inner = list(signums), inner

    def __call__(self, worker_id: int) -> None:
        for sig in self.signums:
            if sig != signal.SIGTERM:
                signal.signal(sig, signal.SIG_IGN)
        if signal.SIGTERM in self.signums and hasattr(signal, "sigwaitinfo"):
            # Blocked before the thread starts, so that the thread inherits the mask and sigwaitinfo, not a
            # handler in some other thread, receives every SIGTERM.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            threading.Thread(target=_end_on_parents_sigterm, args=(os.getppid(),), daemon=True,
                             name="sigterm-from-parent").start()
        if self.inner is not None:
            self.inner(worker_id)


def _end_on_parents_sigterm(parent: int) -> None:
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == parent or os.getppid() != parent:
            os._exit(0)     # what torch's worker handler does for its parent's SIGTERM


def shield_workers(loaders, names) -> None:
    """Make the DataLoader workers of ``loaders`` ignore the signals ``names``; the main process decides.

    The trap: SLURM signals every process of a job step, and ``kill -TERM -PGID`` a whole process group, so
    the workers get the signal too. torch installs its own SIGTERM handler in each worker (it dies unless the
    parent sent it; an unconfigured SIGUSR1 kills it too), and the worker's death reaches the main process
    as a RuntimeError raised by torch's SIGCHLD handler at whatever line it is on, e.g. inside the report of
    the stop. A shielded worker (:class:`IgnoreInWorkers`) keeps feeding batches until the loop stops at its
    step boundary and the parent ends it (or, if the parent is killed, it exits by torch's parent
    watchdog). The ``worker_init_fn`` runs after torch's handlers are set, so it has the last word.
    """
    signums = [getattr(signal, f"SIG{name}") for name in stop_signal_names(names)]
    if not signums:
        return
    for loader in loaders:
        if loader is not None and getattr(loader, "num_workers", 0) > 0:
            loader.worker_init_fn = IgnoreInWorkers(signums, loader.worker_init_fn)
