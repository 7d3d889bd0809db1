"""What the benchmark scripts print about the machine they ran on."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else ``platform.processor()``, else ``"unknown CPU"``."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def commit() -> str:
    """The checkout's short commit hash, else ``"unknown"`` (no git, or not a checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def header_lines(script: str, argv) -> list[str]:
    """The ``Command:`` and ``Machine:`` lines (Markdown, hard breaks) of a results file written by ``script``.

    ``argv`` is the script's arguments (None: ``sys.argv[1:]``); the machine line names the CPU, the cores,
    torch, Python and the checkout's commit.
    """
    import os
    import sys

    import torch

    args = sys.argv[1:] if argv is None else argv
    command = " ".join(["python", f"benchmarks/{script}", *args])
    return [
        f"Command: `{command}`  ",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores visible (shared with other jobs: figures are noisy); "
        f"torch {torch.__version__}, Python {platform.python_version()}; commit {commit()}  ",
    ]
