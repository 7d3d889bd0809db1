"""The process's place in a torchrun job: rank, world size, device, process group.

torchrun (``python -m torch.distributed.run``) starts the processes and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; this module only reads them and
calls ``init_process_group`` (NCCL on GPU, gloo on CPU). Without those variables the run is a single
process and nothing is initialized. Process management stays with torchrun.

Elastic restarts
----------------
torchrun's agent hosts the rendezvous store that its workers share (``TORCHELASTIC_USE_AGENT_STORE``), and
that store outlives a worker group: after ``--max-restarts`` restarts a group, the new workers meet in the
same store, under the same keys, as the group that died. Gloo's rendezvous then reads the dead workers'
addresses: the new group hangs in ``init_process_group`` or fails with "Connection refused" (torch 2.14;
the same happens to a plain script that calls ``init_process_group("gloo")``). So each attempt joins under
its own prefix, ``attempt_<TORCHELASTIC_RESTART_COUNT>``, as torch's own ``env://`` handler once did.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist

__all__ = ["DEFAULT_GLOO_TIMEOUT", "DistEnv", "cleanup_distributed", "collective_timeout", "cpu_model",
           "device_name", "init_distributed", "job_store", "resolve_device"]

#: seconds a gloo collective waits for the other processes by default (``train.collective_timeout``): torch's
#: own 30 minutes would keep a job whose rank hangs alive for half an hour
DEFAULT_GLOO_TIMEOUT = 60.0

_store: Optional[dist.Store] = None  # this attempt's rendezvous store (job_store)


@dataclass(frozen=True)
class DistEnv:
    """Where this process runs.

    Attributes
    ----------
    rank, world_size, local_rank : int
        From torchrun's environment (0, 1, 0 for a single process).
    device : torch.device
        ``cuda:<local_rank>`` or ``cpu``.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that logs and writes checkpoints."""
        return self.rank == 0


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """Map ``"auto" | "cpu" | "cuda"`` to a device; ``"cuda"`` without a GPU is an error."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but torch.cuda.is_available() is False")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else ``platform.processor()``, else ``"unknown CPU"``."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def device_name(device: torch.device) -> str:
    """What computes on ``device``: the GPU's name for a CUDA device, else the CPU's model (:func:`cpu_model`).

    Recorded with a run because its result depends on it: kernels round differently on other CPUs and GPUs, and
    a long training amplifies the difference.
    """
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def collective_timeout(seconds: Optional[float], backend: str) -> Optional[timedelta]:
    """The process group's timeout: ``seconds``, else :data:`DEFAULT_GLOO_TIMEOUT` on gloo and torch's default
    (None) on NCCL."""
    if seconds is None and backend == "gloo":
        seconds = DEFAULT_GLOO_TIMEOUT
    return None if seconds is None else timedelta(seconds=seconds)


def _attempt_store(rank: int, world_size: int) -> dist.Store:
    """The ``env://`` rendezvous store, under a prefix of its own for each torchrun attempt (module docstring).

    It waits torch's default time for the other processes to join: a process that starts late (a slow import,
    a node that boots later) is no failure; ``train.collective_timeout`` bounds the collectives after that.
    """
    from torch.distributed.constants import default_pg_timeout
    from torch.distributed.rendezvous import rendezvous

    store, _, _ = next(rendezvous("env://", rank, world_size, timeout=default_pg_timeout))
    store.set_timeout(default_pg_timeout)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"manifold_align/attempt_{attempt}", store)


def job_store() -> Optional[dist.Store]:
    """The store the processes of this attempt share (None outside a process group)."""
    return _store if dist.is_available() and dist.is_initialized() else None


def init_distributed(device_preference: str = "auto", *, timeout: Optional[float] = None) -> DistEnv:
    """Read torchrun's environment and join the process group when ``WORLD_SIZE > 1``.

    Parameters
    ----------
    device_preference : str
        ``train.device``: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    timeout : float, optional
        ``train.collective_timeout``: seconds a collective waits for the other processes before it fails
        (see :func:`collective_timeout`).

    Returns
    -------
    DistEnv
    """
    global _store
    rank = _env_int("RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = resolve_device(device_preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        wait = collective_timeout(timeout, backend)
        _store = _attempt_store(rank, world_size)
        dist.init_process_group(backend=backend, store=_store, rank=rank, world_size=world_size, timeout=wait)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def cleanup_distributed() -> None:
    """Leave the process group if one was joined."""
    global _store
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _store = None
