"""Seeding and the random-number state that checkpoints carry (python, numpy, torch, CUDA)."""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch

__all__ = ["cpu_seeded", "replayed", "rng_state", "seed_everything", "set_rng_state", "torch_rng_state"]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def cpu_seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU generator seeded with ``seed``; its state is restored after.

    The CPU generator alone, which the data transforms draw from. ``torch.manual_seed`` would also seed
    every accelerator (where CUDA is not initialized, such as in a loader worker, each call queues the
    seeding with a formatted stack trace: about 1 ms, more than loading a small image), and
    ``torch.random.fork_rng(devices=[])`` would not restore those.
    """
    generator = torch.default_generator
    state = generator.get_state()
    generator.manual_seed(seed)
    try:
        yield
    finally:
        generator.set_state(state)


def rng_state() -> dict[str, Any]:
    """This process's generator states as tensors and plain numbers (loadable with ``weights_only=True``).

    Returns
    -------
    dict
        ``python``: ``{"version": int, "state": LongTensor (625,), "gauss": float or None}``;
        ``numpy``: ``{"kind": str, "keys": LongTensor (624,), "pos": int, "has_gauss": int,
        "cached_gaussian": float}``; ``torch``: ByteTensor; with CUDA, ``cuda`` (current device only).
    """
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        # this process's device only (one per process under torchrun): restorable on a node with fewer GPUs
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a :func:`rng_state` (its CUDA part only where CUDA is available)."""
    python, numpy = state["python"], state["numpy"]
    random.setstate((python["version"], tuple(int(v) for v in python["state"].tolist()), python["gauss"]))
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def torch_rng_state(device: torch.device) -> tuple[torch.Tensor, Any]:
    """The torch generators a forward pass draws from (dropout, patch dropout): the CPU's and ``device``'s."""
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


@contextmanager
def replayed(state: tuple[torch.Tensor, Any], device: torch.device) -> Iterator[None]:
    """Run the block from a :func:`torch_rng_state`, so that it draws what the pass that recorded it drew; the
    generators continue afterwards as if the block had not run (``torch.random.fork_rng``)."""
    cpu, accelerator = state
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.set_rng_state(cpu)
        if accelerator is not None:
            torch.cuda.set_rng_state(accelerator, device)
        yield
