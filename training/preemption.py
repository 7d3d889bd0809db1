"""Preemption: SIGTERM, or an early-warning signal, stops a run at a step boundary with a checkpoint.

Clusters announce the end of a job with a signal: SLURM sends SIGTERM on preemption or at the time limit
(and, with ``--signal=USR1@120``, SIGUSR1 two minutes before), Kubernetes and torchrun send SIGTERM. While
:class:`StopRequest` is installed, these signals only set a flag. The trainer reads the flag once a step,
inside the all-reduce it already makes for its finite-loss check (no extra collective), so every rank learns
at the same step that some rank was signalled; every rank then finishes that step, the checkpoint of that
step is written collectively and atomically, and the job exits with :data:`PREEMPTED_EXIT_CODE` and one line
on stderr. Signals that arrive later (a launcher forwarding the one the scheduler already sent, a second
``scancel``) change nothing, so they cannot interrupt the checkpoint being written.

A process that is stuck (in a collective whose peer hangs, in a read from a dead filesystem) does not reach the
next step and ignores the signal; the launcher's escalation (SLURM's ``KillWait``, torchrun's
``--shutdown-timeout``, Kubernetes' grace period, each ending in SIGKILL) ends it, and ``--resume latest``
continues from the newest periodic checkpoint.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Optional

__all__ = [
    "EARLY_WARNING_SIGNALS",
    "PREEMPTED_EXIT_CODE",
    "Preempted",
    "StopRequest",
    "ignore_stop_signals",
]

#: exit status of a run stopped by a signal with its checkpoint written: sysexits' EX_TEMPFAIL ("temporary
#: failure; the user is invited to retry"), which a job script can tell from success (0), a failure (1) and a
#: bad command line (2), e.g. to requeue the job
PREEMPTED_EXIT_CODE = 75

#: the signals ``train.preempt_signal`` may name (besides SIGTERM, which always stops a run): catchable ones
#: whose default action ends the process, as schedulers send them ahead of the end of a job
EARLY_WARNING_SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGHUP", "SIGINT")

# the signals a StopRequest of this process handles now: what a forked data-loader worker must ignore
_handled: set[int] = set()


class Preempted(Exception):
    """The run stopped at a step boundary on a signal; its checkpoint of that step is written.

    Attributes
    ----------
    signal_name : str
        The signal this process received (or ``"a stop signal on another process"``).
    step : int
        The optimizer steps done, the step of ``checkpoint``.
    checkpoint : Path
        The checkpoint to continue from (``--resume latest`` finds it).
    """

    def __init__(self, signal_name: str, step: int, checkpoint: Path):
        self.signal_name, self.step, self.checkpoint = signal_name, step, Path(checkpoint)
        super().__init__(f"stopped by {signal_name} at step {step}; checkpoint {checkpoint} written; "
                         f"continue with --resume latest (exit status {PREEMPTED_EXIT_CODE})")


class StopRequest:
    """Records the first stop signal this process receives while installed (a context manager).

    Parameters
    ----------
    early_warning : str or None
        ``train.preempt_signal``: one of :data:`EARLY_WARNING_SIGNALS`, handled besides SIGTERM; None: SIGTERM
        only.

    Notes
    -----
    Handlers are installed only from the main thread (Python delivers signals there alone); elsewhere the
    request stays empty and signals keep their previous handlers. The previous handlers come back on exit,
    unless a stop signal arrived: then the process is stopping, and they are ignored until it exits.
    """

    def __init__(self, early_warning: Optional[str] = "SIGUSR1"):
        if early_warning is not None and early_warning not in EARLY_WARNING_SIGNALS:
            raise ValueError(f"early_warning must be one of {EARLY_WARNING_SIGNALS} or None, got {early_warning!r}")
        names = ["SIGTERM"] + ([early_warning] if early_warning else [])
        self.signals = tuple(signal.Signals[name] for name in names)
        self.received: Optional[str] = None
        self._previous: dict[int, object] = {}

    @property
    def pending(self) -> bool:
        """Whether a stop signal arrived (a plain attribute read: free to call every step)."""
        return self.received is not None

    def _handle(self, signum, frame) -> None:
        # only a flag: the step in progress, and a checkpoint being written, run on untouched
        if self.received is None:
            self.received = signal.Signals(signum).name

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
                _handled.add(int(sig))
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            # once stopping, the process is on its way out with its checkpoint: the same signal sent again
            # (SLURM and torchrun both deliver it) must not kill it, not even while the interpreter shuts down
            signal.signal(sig, signal.SIG_IGN if self.received is not None else previous)
            _handled.discard(int(sig))
        self._previous.clear()


def ignore_stop_signals(worker_id: int = 0) -> None:
    """``worker_init_fn`` of the data loaders: a worker ignores the stop signals.

    A scheduler signals every process of a job (SLURM signals the whole step, a terminal's Ctrl-C the process
    group), the data-loader workers too; torch's worker would die of it, and its death would end the run
    before the trainer could write its checkpoint. The trainer stops its workers itself. SIGTERM and the
    signals the parent handles when it forks the worker are ignored.
    """
    for sig in {int(signal.SIGTERM), *_handled}:
        signal.signal(sig, signal.SIG_IGN)
