"""What every benchmark script shares: the line that names the machine, and how a call is timed.

The scripts import this module as ``machine_info`` (``benchmarks/`` is on ``sys.path`` when a script runs, and
``manifold-align bench`` runs them the same way).
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Callable, Optional, Sequence

from manifold_align_train.distributed_env import cpu_model


def gpu_name() -> Optional[str]:
    """The first CUDA device's name, or None without a usable GPU."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def commit() -> str:
    """The checkout's short commit hash, else ``"unknown"`` (no git, or not a checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine(*, threads: Optional[int] = None, extra: Sequence[str] = ()) -> str:
    """One line naming the machine: CPU, cores, torch threads, GPU, OS, torch and Python versions.

    Parameters
    ----------
    threads : int, optional
        The torch threads the measurement used, when not the process's current ``torch.get_num_threads()``
        (a script whose timed work runs in child processes).
    extra : sequence of str
        More items for the line (a library version the benchmark compares against).
    """
    import torch

    threads = torch.get_num_threads() if threads is None else threads
    items = [f"CPU {cpu_model()} ({platform.machine()}, {os.cpu_count()} logical cores, {threads} torch "
             f"thread{'' if threads == 1 else 's'})", f"GPU {gpu_name() or 'none'}", f"{platform.system()} {platform.release()}",
             f"torch {torch.__version__}", f"Python {platform.python_version()}", *extra]
    return ", ".join(items)


def header_lines(script: str, argv) -> list[str]:
    """The ``Command:`` and ``Machine:`` lines (Markdown, hard breaks) of a results file written by ``script``.

    ``argv`` is the script's arguments (None: ``sys.argv[1:]``); the machine line is :func:`machine` and the
    checkout's commit.
    """
    import sys

    args = sys.argv[1:] if argv is None else argv
    command = " ".join(["python", f"benchmarks/{script}", *args])
    return [f"Command: `{command}`  ",
            f"Machine: {machine()} (shared with other jobs: figures are noisy); commit {commit()}  "]


def median_s(fn: Callable[[], object], min_run_time: float, *, sync_cuda: bool = False) -> float:
    """Median seconds per call of ``fn`` (``torch.utils.benchmark.Timer.blocked_autorange``).

    Parameters
    ----------
    fn : callable
        Called with no arguments.
    min_run_time : float
        Seconds of timing at least.
    sync_cuda : bool, keyword-only
        Synchronize CUDA after every call, so that a call's time covers its kernels and not only their
        launch. Without it the Timer synchronizes around each block of calls only (throughput).
    """
    import torch
    import torch.utils.benchmark as tb

    def call():
        fn()
        torch.cuda.synchronize()

    timed = call if sync_cuda else fn
    return tb.Timer(stmt="fn()", globals={"fn": timed}).blocked_autorange(min_run_time=min_run_time).median
