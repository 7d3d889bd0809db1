"""When a run fails: a clear error, the rank that failed first, and that rank's line last on the launcher's stderr.

A rank that raises in a torchrun job leaves the process group at once (``train`` destroys it on the way out),
so the other ranks' collectives fail within milliseconds with a gloo "Connection closed by peer"; a rank that
hangs instead is given up on after ``train.collective_timeout``. Each of those errors would print a traceback
that buries the one that matters. So a failing rank first claims the failure in the job's store
(:func:`claim_failure`): the first rank to claim it is the root cause and reports it, in one line naming the
rank (:meth:`FailureReport.line`), also written to torchrun's error file so that torchrun's closing summary
names it as the root cause; a rank that finds the failure claimed only exits. Errors whose cause is known get a
message of their own instead of a traceback (:func:`explain`: a dead data-loader worker).
"""

from __future__ import annotations

import json
import multiprocessing.connection
import os
import re
import signal
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

from .distributed_env import DistEnv, job_store

__all__ = ["FailureReport", "LoaderWorkerDied", "claim_failure", "explain", "loader_batches",
           "write_elastic_error_file"]

_FAILED_KEY = "failed_rank"
_TIMED_OUT = re.compile(r"[Tt]imed out|[Tt]imeout")
# torch's messages (torch/utils/data/dataloader.py and DataLoader.cpp) for a worker that died
_LOADER_DEATH = re.compile(r"DataLoader worker \(pids?(?:\(s\))? ([\d, ]+)\) (exited unexpectedly|is killed by "
                           r"signal: ([^.]+))")
# how long a broken connection to a loader worker waits for the worker to finish dying
_DYING_WORKER_WAIT = 5.0


class LoaderWorkerDied(RuntimeError):
    """A data-loading worker process died (the out-of-memory killer, a crash in an image decoder).

    Nothing is written from the interrupted step; the checkpoints on disk are untouched, and ``--resume latest``
    continues from the newest.
    """


@dataclass(frozen=True)
class FailureReport:
    """Who failed, where, and whether this rank is the one to say so.

    Attributes
    ----------
    rank, world_size : int
    step : int or None
        Optimizer steps done when it failed (None: before the trainer was built).
    first : bool
        This rank claimed the failure first (:func:`claim_failure`): it reports it; the others only exit.
    timeout : float or None
        The process group's timeout in seconds (None: torch's default), named when a collective timed out.
    """

    rank: int
    world_size: int
    step: Optional[int]
    first: bool
    timeout: Optional[float] = None

    def line(self, error: BaseException) -> str:
        """``rank R of N failed at step S: Type: message`` (the message's first line); for a collective that
        timed out, what that means."""
        timeout = self.timeout
        where = "" if self.step is None else f" at step {self.step}"
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        line = f"rank {self.rank} of {self.world_size} failed{where}: {type(error).__name__}: {text}"
        if _TIMED_OUT.search(text) and timeout is not None:
            line += f" (no answer from the other processes within train.collective_timeout = {timeout:g} s)"
        return line


def claim_failure(env: DistEnv) -> bool:
    """Record in the job's store that this rank failed, unless another rank did first; return whether it was first.

    Called by every failing rank before it leaves the process group, so the ranks whose collectives fail
    because of it find the failure claimed. Without a reachable store (one process; the store's host died)
    every rank counts as first: better a line too many than none.
    """
    store = job_store()
    if store is None:
        return True
    try:
        return store.compare_set(_FAILED_KEY, "", str(env.rank)).decode() == str(env.rank)
    except Exception:  # noqa: BLE001 (a dead store says nothing about who failed)
        return True


def explain(error: BaseException, *, step: Optional[int], last_checkpoint: Optional[str]) -> BaseException:
    """``error``, or an exception with a clear message raised from it when its cause is known.

    A data-loader worker that died (torch: ``DataLoader worker (pid 123) is killed by signal: Killed``)
    becomes :class:`LoaderWorkerDied` naming the step, the likely cause and the checkpoint to continue from.
    """
    if isinstance(error, LoaderWorkerDied):
        return error
    found = _loader_death(error)
    if found is None:
        return error
    how = f"killed by signal {found.group(3).strip()}" if found.group(3) else "exited unexpectedly"
    hint = " (SIGKILL: most often the out-of-memory killer; lower data.workers or data.batch_size)" if (
        found.group(3) and "Killed" in found.group(3)) else ""
    where = "" if step is None else f" at step {step}"
    resume = (f"the newest checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet")
    explained = LoaderWorkerDied(f"a data-loading worker process (pid {found.group(1).strip()}) {how}{where}{hint}; "
                                 f"{resume}; continue with --resume latest")
    explained.__cause__ = error
    return explained


def _loader_death(error: BaseException) -> Optional[re.Match]:
    """torch's words for a dead loader worker in ``error`` or the errors it was raised from, the signal preferred.

    The SIGCHLD handler's ``is killed by signal`` error can fire while the main process waits on the data
    queue; torch then raises ``exited unexpectedly`` from it, so the signal is one link down the chain.
    """
    matches, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        found = _LOADER_DEATH.search(str(error)) if isinstance(error, RuntimeError) else None
        if found is not None:
            matches.append(found)
        error = error.__cause__ or error.__context__
    return next((found for found in matches if found.group(3)), matches[0] if matches else None)


def loader_batches(loader: Iterable) -> Iterator:
    """Iterate a ``torch.utils.data.DataLoader``; a worker that dies mid-transfer raises torch's dead-worker error.

    A batch's tensors reach the main process as file descriptors fetched from the worker over a socket
    (``multiprocessing.resource_sharer``). A worker killed during that fetch resets the connection before the
    kernel has finished the process, so torch, finding it still alive, re-raises the bare
    ``ConnectionResetError``. Here such an error (any ``ConnectionError`` or ``EOFError``) waits up to
    ``_DYING_WORKER_WAIT`` seconds for a worker to exit and then raises torch's own ``DataLoader worker (pid P)
    is killed by signal: S`` from it, which :func:`explain` turns into :class:`LoaderWorkerDied`; with every
    worker alive the error is re-raised as it came.

    Yields
    ------
    What ``loader`` yields.
    """
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except (ConnectionError, EOFError) as error:
            dead = _exited_workers(getattr(iterator, "_workers", []))
            if not dead:
                raise
            worker = next((w for w in dead if w.exitcode < 0), dead[0])
            how = (f"is killed by signal: {signal.strsignal(-worker.exitcode)}." if worker.exitcode < 0
                   else "exited unexpectedly")
            raise RuntimeError(f"DataLoader worker (pid {worker.pid}) {how}") from error
        yield batch


def _exited_workers(workers: list) -> list:
    """The worker processes that have exited, once one has or ``_DYING_WORKER_WAIT`` seconds have passed.

    A dying process closes its descriptors, the sentinel among them, before the kernel reports it exited, so
    a worker whose sentinel is ready is joined (``waitpid``) before it is asked whether it lives.
    """
    if not workers:  # a loader without workers: nothing to wait for (wait([]) would sleep the whole timeout)
        return []
    ready = multiprocessing.connection.wait([worker.sentinel for worker in workers], timeout=_DYING_WORKER_WAIT)
    for worker in workers:
        if worker.sentinel in ready:
            worker.join(timeout=_DYING_WORKER_WAIT)
    return [worker for worker in workers if not worker.is_alive()]


def write_elastic_error_file(line: str, details: str = "") -> None:
    """Write torchrun's error file (``TORCHELASTIC_ERROR_FILE``) so that its summary shows ``line`` last.

    The format is that of ``torch.distributed.elastic.multiprocessing.errors.ErrorHandler.record_exception``;
    torchrun prints ``py_callstack`` as the root cause's traceback.
    """
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    callstack = f"{details.rstrip()}\n{line}" if details.strip() else line
    data = {"message": {"message": line, "extraInfo": {"py_callstack": callstack,
                                                       "timestamp": str(int(time.time()))}}}
    with open(path, "w") as handle:
        json.dump(data, handle)
