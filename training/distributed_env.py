"""The process's place in a torchrun job: rank, world size, device, process group.

torchrun (``python -m torch.distributed.run``) starts the processes and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; this module only reads them and
calls ``init_process_group`` (NCCL on GPU, gloo on CPU). Without those variables the run is a single
process and nothing is initialized. Process management stays with torchrun.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "cleanup_distributed", "init_distributed", "resolve_device"]


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


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def init_distributed(device_preference: str = "auto") -> DistEnv:
    """Read torchrun's environment and join the process group when ``WORLD_SIZE > 1``.

    Parameters
    ----------
    device_preference : str
        ``train.device``: ``"auto"``, ``"cpu"`` or ``"cuda"``.

    Returns
    -------
    DistEnv
    """
    rank = _env_int("RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = resolve_device(device_preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def cleanup_distributed() -> None:
    """Leave the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
