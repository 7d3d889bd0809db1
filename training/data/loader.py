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
torch's CPU generator seeded with it (``manifold_align_train.rng.cpu_seeded``): random augmentation is a function of
``(seed, epoch, index)`` only -- independent of ``workers``, ``world_size`` and of where a run was
resumed -- and the caller's global RNG state is left untouched.

Bad samples
-----------
A bad item (``None``) is replaced, never dropped: the contrastive loss gathers features across
ranks, which needs every rank to hold the same number of rows. The slot at position ``p`` of the
epoch order tries positions ``p + j * stride (mod N)``, ``j = 1, 2, ...``, with ``stride`` the
smallest integer ``>= B`` coprime with ``N = len(dataset)``. So the first candidates lie in later
batches (not duplicates within this one), two slots of a batch never share a first candidate, a
run of bad rows that are neighbours in the file does not make the search long, and the walk
visits every other sample exactly once before it gives up with :class:`BadDataError`: that happens
only when the whole data source is bad. The replacement is loaded under the slot's item seed, so
it depends on ``(seed, epoch, index)`` only, like everything else. Each bad item met counts once in
``Batch.n_skipped`` and is named in ``Batch.bad``; the loader keeps the running count of encounters
(``n_skipped_total``) apart from the distinct bad samples (``bad_sources``): a bad row met in every
epoch is one bad file, not one per epoch.
"""

from __future__ import annotations

import math
from typing import Iterator, List, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from ..faults import loader_batches
from ..preemption import ignore_stop_signals
from ..rng import cpu_seeded
from .batch import Batch, all_bad_error, collate_skip_bad

__all__ = ["PositionedLoader", "ResumableLoader"]

_SEED_HIGH = 2**62


def _coprime_stride(batch_size: int, n: int) -> int:
    """Smallest ``stride >= batch_size`` with ``gcd(stride, n) == 1``, so that ``p + j * stride``
    (mod ``n``) visits all ``n`` positions."""
    stride = batch_size
    while math.gcd(stride, n) != 1:
        stride += 1
    return stride


class _EpochItems(Dataset):
    """One epoch's items keyed by position in the epoch order; returns ``(item, bad)``.

    A bad item is replaced by the first good one along the walk described in the module
    docstring; ``bad`` names the bad items the walk met (empty for a good slot).
    """

    def __init__(self, dataset, perm: torch.Tensor, item_seeds: torch.Tensor, stride: int):
        self.dataset = dataset
        # numpy views of the (CPU) order: indexing them per item reads no tensor (no Tensor.__int__ per sample)
        self.perm = perm.numpy()
        self.item_seeds = item_seeds.numpy()
        self.stride = stride

    def __len__(self) -> int:
        return len(self.perm)

    def _name(self, index: int) -> str:
        describe = getattr(self.dataset, "source", None)
        return describe(index) if describe else f"index {index}"

    def __getitem__(self, position: int):
        n = len(self.perm)
        item_seed = int(self.item_seeds[self.perm[position]])
        bad: List[int] = []
        for j in range(n):
            index = int(self.perm[(position + j * self.stride) % n])
            with cpu_seeded(item_seed):
                item = self.dataset[index]
            if item is not None:
                return item, [self._name(i) for i in bad]
            bad.append(index)
        raise all_bad_error(f"all {n} samples of the dataset", [self._name(i) for i in bad])


def _collate_replaced(pairs: Sequence) -> Batch:
    """Stack ``(item, bad)`` pairs; ``n_skipped`` counts and ``bad`` joins their bad names."""
    batch = collate_skip_bad([item for item, _ in pairs])
    bad = tuple(name for _, names in pairs for name in names)
    return batch._replace(n_skipped=len(bad), bad=bad)


class PositionedLoader:
    """The data position and the endless iteration shared by the training loaders.

    A subclass sets ``steps_per_epoch`` (batches per epoch and rank) and implements
    ``epoch_batches(epoch, start)``, which yields batches ``start, ..., steps_per_epoch - 1`` of ``epoch``.
    ``iter(loader)`` is then infinite: it yields from :meth:`position` on, across epochs, and advances the
    position after each batch, so saving it after a step and calling :meth:`set_position` on resume
    continues with the next batch.
    """

    steps_per_epoch: int
    _epoch: int = 0
    _batch_index: int = 0
    #: bad samples met by the batches yielded so far, every encounter (a bad file met in 10 epochs: 10)
    n_skipped_total: int = 0

    @property
    def bad_sources(self) -> set:
        """Names of the distinct bad samples met by this process's batches so far."""
        if "_bad_sources" not in vars(self):
            self._bad_sources: set = set()
        return self._bad_sources

    def _count_bad(self, batch: Batch) -> Batch:
        """Add ``batch``'s bad samples to the running totals; return ``batch``."""
        self.n_skipped_total += batch.n_skipped
        self.bad_sources.update(batch.bad)
        return batch

    def __len__(self) -> int:
        return self.steps_per_epoch

    def epoch_batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:  # noqa: D102
        raise NotImplementedError

    def position(self) -> Tuple[int, int]:
        """Return ``(epoch, batch_index)`` of the next batch :meth:`__iter__` will yield."""
        return self._epoch, self._batch_index

    def set_position(self, epoch: int, batch_index: int) -> None:
        """Make the next batch yielded by :meth:`__iter__` be ``batch_index`` of ``epoch``.

        ``batch_index == steps_per_epoch`` is accepted and means ``(epoch + 1, 0)``.

        Raises
        ------
        ValueError
            Unless ``epoch >= 0`` and ``0 <= batch_index <= steps_per_epoch``.
        """
        if epoch < 0 or not 0 <= batch_index <= self.steps_per_epoch:
            raise ValueError(
                f"position must satisfy epoch >= 0 and 0 <= batch_index <= steps_per_epoch="
                f"{self.steps_per_epoch}, got ({epoch}, {batch_index})"
            )
        if batch_index == self.steps_per_epoch:
            epoch, batch_index = epoch + 1, 0
        self._epoch, self._batch_index = int(epoch), int(batch_index)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            epoch, start = self.position()
            for offset, batch in enumerate(self.epoch_batches(epoch, start)):
                self.set_position(epoch, start + offset + 1)
                yield batch
            if self.position() == (epoch, start):  # empty remainder of an epoch
                self.set_position(epoch + 1, 0)


class ResumableLoader(PositionedLoader):
    """Seeded, resumable, rank-sliced batches of a map-style dataset.

    Parameters
    ----------
    dataset : torch.utils.data.Dataset
        Map-style; items are ``(image (3, H, W), tokens (L,))`` or ``None`` for a bad sample, which
        is replaced (see the module docstring). An optional ``source(index) -> str`` method names
        an item in error messages.
    batch_size : int
        GLOBAL batch size ``B`` (all ranks together); must be divisible by ``world_size``.
    seed : int
        The epoch-``e`` permutation is drawn from ``torch.Generator().manual_seed(seed + e)``.
    rank, world_size : int
        This process's slice of each global batch.
    workers : int
        ``num_workers`` of the underlying ``torch.utils.data.DataLoader``.
    pin_memory : bool
        Passed to the ``DataLoader`` (page-locked batches copy to a GPU faster and asynchronously).

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

    # -- order -----------------------------------------------------------------------------
    def _epoch_order(self, epoch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(len(self.dataset), generator=generator)
        item_seeds = torch.randint(0, _SEED_HIGH, (len(self.dataset),), generator=generator)
        return perm, item_seeds

    def batch_indices(self, epoch: int, batch_index: int) -> List[int]:
        """Dataset indices of this rank's part of global batch ``batch_index`` of ``epoch``.

        These are the indices before bad samples are replaced.

        Returns
        -------
        list of int, length ``batch_size // world_size``
        """
        perm, _ = self._epoch_order(epoch)
        return perm[self._local_slice(batch_index)].tolist()

    def _local_slice(self, batch_index: int) -> slice:
        start = batch_index * self.batch_size + self.rank * self.local_batch_size
        return slice(start, start + self.local_batch_size)

    def _batch_positions(self, start: int) -> List[List[int]]:
        """Positions in the epoch order of this rank's part of batches ``start, ...``."""
        part = self._local_slice
        return [list(range(part(b).start, part(b).stop)) for b in range(start, self.steps_per_epoch)]

    # -- iteration -------------------------------------------------------------------------
    def epoch_batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Yield this rank's batches ``start, ..., steps_per_epoch - 1`` of ``epoch``.

        Yields
        ------
        Batch
            ``images`` (b, 3, H, W), ``texts`` (b, L), always ``b = batch_size // world_size``;
            ``n_skipped`` bad samples were met and replaced, named in ``bad``.

        Raises
        ------
        BadDataError
            If every sample of the dataset is bad; names the files.
        """
        positions = self._batch_positions(start)
        if not positions:
            return
        perm, item_seeds = self._epoch_order(epoch)
        loader = DataLoader(
            _EpochItems(self.dataset, perm, item_seeds, _coprime_stride(self.batch_size, len(perm))),
            batch_sampler=positions,
            num_workers=self.workers,
            collate_fn=_collate_replaced,
            pin_memory=self.pin_memory,
            worker_init_fn=ignore_stop_signals,  # the trainer stops on SIGTERM; its workers must not die of it
        )
        for batch in loader_batches(loader):
            yield self._count_bad(batch)
