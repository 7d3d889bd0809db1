"""A resumable, distributed-aware loader over a map-style dataset.

Order of the data
-----------------
Epoch ``e`` draws one permutation ``perm`` of ``range(len(dataset))`` from a ``torch.Generator``
seeded with ``seed + e``. Global batch ``b`` is ``perm[b * B : (b + 1) * B]`` with ``B`` the
*global* batch size; rank ``r`` of ``world_size`` takes the contiguous slice
``[r * B / world_size, (r + 1) * B / world_size)`` of it. The concatenation of the ranks' batches
(in rank order) is therefore exactly the batch a single process would get. The incomplete last
global batch is dropped, so every rank runs ``steps_per_epoch = len(dataset) // B`` steps.

Each item also gets its own seed, drawn from the same generator, and is loaded under
``torch.random.fork_rng`` seeded with it: random augmentation is a function of
``(seed, epoch, index)`` only -- independent of ``workers``, ``world_size`` and of where a run was
resumed -- and the caller's global RNG state is left untouched.
"""

from __future__ import annotations

from typing import Iterator, List, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from .batch import Batch, collate_skip_bad

__all__ = ["ResumableLoader"]

_SEED_HIGH = 2**62


class _SeededItems(Dataset):
    """Dataset view keyed by ``(index, item_seed)``; returns ``(index, item)``."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]):
        index, item_seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed)
            return index, self.dataset[index]


class _CollateNamed:
    """Collate ``(index, item)`` pairs, naming the dataset's sources if the batch is all bad."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __call__(self, pairs: Sequence) -> Batch:
        items = [item for _, item in pairs]
        sources = None
        if all(item is None for item in items):
            describe = getattr(self.dataset, "source", None)
            sources = [describe(i) if describe else f"index {i}" for i, _ in pairs]
        return collate_skip_bad(items, sources=sources)


class ResumableLoader:
    """Seeded, resumable, rank-sliced batches of a map-style dataset.

    Parameters
    ----------
    dataset : torch.utils.data.Dataset
        Map-style; items are ``(image (3, H, W), tokens (L,))`` or ``None`` for a bad sample. An
        optional ``source(index) -> str`` method names an item in error messages.
    batch_size : int
        GLOBAL batch size ``B`` (all ranks together); must be divisible by ``world_size``.
    seed : int
        The epoch-``e`` permutation is drawn from ``torch.Generator().manual_seed(seed + e)``.
    rank, world_size : int
        This process's slice of each global batch.
    workers : int
        ``num_workers`` of the underlying ``torch.utils.data.DataLoader``.
    pin_memory : bool
        Passed to the ``DataLoader``.

    Notes
    -----
    ``iter(loader)`` is infinite: it yields :class:`Batch` from :meth:`position` on, across epochs,
    and advances the position after each batch. :meth:`epoch_batches` yields one epoch and leaves
    the position alone. ``position()`` is the NEXT batch to be yielded, so saving it after a step
    and calling :meth:`set_position` on resume yields exactly the remaining batches.
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 0,
        pin_memory: bool = False,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(
                f"`data.batch_size` is the global batch size and must be a positive multiple of "
                f"world_size={world_size}, got {batch_size}"
            )
        if len(dataset) < batch_size:
            raise ValueError(
                f"the dataset has {len(dataset)} samples, fewer than one global batch "
                f"(`data.batch_size`={batch_size}); lower the batch size"
            )
        if workers < 0:
            raise ValueError(f"`data.workers` must be >= 0, got {workers}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.local_batch_size = self.batch_size // world_size
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.workers = int(workers)
        self.pin_memory = bool(pin_memory)
        self.steps_per_epoch = len(dataset) // self.batch_size
        self.n_skipped_total = 0
        self._epoch = 0
        self._batch_index = 0

    def __len__(self) -> int:
        return self.steps_per_epoch

    # -- position --------------------------------------------------------------------------
    def position(self) -> Tuple[int, int]:
        """Return ``(epoch, batch_index)`` of the next batch :meth:`__iter__` will yield."""
        return self._epoch, self._batch_index

    def set_position(self, epoch: int, batch_index: int) -> None:
        """Make the next batch yielded by :meth:`__iter__` be ``batch_index`` of ``epoch``.

        ``batch_index == steps_per_epoch`` is accepted and means ``(epoch + 1, 0)``.
        """
        if epoch < 0 or not 0 <= batch_index <= self.steps_per_epoch:
            raise ValueError(
                f"position must satisfy epoch >= 0 and 0 <= batch_index <= steps_per_epoch="
                f"{self.steps_per_epoch}, got ({epoch}, {batch_index})"
            )
        if batch_index == self.steps_per_epoch:
            epoch, batch_index = epoch + 1, 0
        self._epoch, self._batch_index = int(epoch), int(batch_index)

    # -- order -----------------------------------------------------------------------------
    def _epoch_order(self, epoch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(len(self.dataset), generator=generator)
        item_seeds = torch.randint(0, _SEED_HIGH, (len(self.dataset),), generator=generator)
        return perm, item_seeds

    def batch_indices(self, epoch: int, batch_index: int) -> List[int]:
        """Dataset indices of this rank's part of global batch ``batch_index`` of ``epoch``.

        Returns
        -------
        list of int, length ``batch_size // world_size``
        """
        perm, _ = self._epoch_order(epoch)
        return perm[self._local_slice(batch_index)].tolist()

    def _local_slice(self, batch_index: int) -> slice:
        start = batch_index * self.batch_size + self.rank * self.local_batch_size
        return slice(start, start + self.local_batch_size)

    def _batch_keys(self, epoch: int, start: int) -> List[List[Tuple[int, int]]]:
        perm, item_seeds = self._epoch_order(epoch)
        keys = []
        for b in range(start, self.steps_per_epoch):
            part = self._local_slice(b)
            keys.append(list(zip(perm[part].tolist(), item_seeds[perm[part]].tolist())))
        return keys

    # -- iteration -------------------------------------------------------------------------
    def epoch_batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Yield this rank's batches ``start, ..., steps_per_epoch - 1`` of ``epoch``.

        Yields
        ------
        Batch
            ``images`` (b, 3, H, W), ``texts`` (b, L), ``b = batch_size // world_size - n_skipped``.
        """
        keys = self._batch_keys(epoch, start)
        if not keys:
            return
        loader = DataLoader(
            _SeededItems(self.dataset),
            batch_sampler=keys,
            num_workers=self.workers,
            collate_fn=_CollateNamed(self.dataset),
            pin_memory=self.pin_memory,
        )
        for batch in loader:
            self.n_skipped_total += batch.n_skipped
            yield batch

    def __iter__(self) -> Iterator[Batch]:
        while True:
            epoch, start = self.position()
            for offset, batch in enumerate(self.epoch_batches(epoch, start)):
                self.set_position(epoch, start + offset + 1)
                yield batch
            if self.position() == (epoch, start):  # empty remainder of an epoch
                self.set_position(epoch + 1, 0)
