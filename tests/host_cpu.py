"""The CPU's model name, read here independently of the code under test (which records it with each run)."""

import platform
from pathlib import Path


def cpu_model_name() -> str:
    """``model name`` of ``/proc/cpuinfo``, else ``platform.processor()`` (aarch64 has no such line)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    found = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return found[0] if found else (platform.processor() or "unknown CPU")
