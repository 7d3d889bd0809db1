"""Held-out data streamed in batches for evaluation: memory bounded by the batch size, not by the set.

An evaluation task holds a *source* of held-out items, never its images: a map-style dataset (items
made when read) or an iterable one (shards read in order). :func:`held_out_batches` runs it through a
``torch.utils.data.DataLoader`` of ``batch_size`` items, so at most ``batch_size`` images per batch in
flight (times ``2 * workers + 1`` with loader workers) are alive at once; the evaluation keeps only
their features, shape (N, k, d).
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ..faults import loader_batches
from ..preemption import ignore_stop_signals

__all__ = ["HeldOutBatch", "HeldOutImages", "held_out_batches"]


class HeldOutBatch(NamedTuple):
    """A batch of held-out items.

    Attributes
    ----------
    images : torch.Tensor, shape (b, 3, H, W), or None
        The good items' images (None when every item of the batch was bad).
    texts : torch.Tensor, shape (b, L), long, or None
        Their token ids, for sources of image-caption pairs; None for sources of images alone.
    index : torch.Tensor, shape (b,), long
        Position of each good item in its source (labels of the task are looked up by it).
    bad : tuple of str
        Names of the bad items of the batch (unreadable or missing image, empty caption), left out.
    """

    images: Optional[torch.Tensor]
    texts: Optional[torch.Tensor]
    index: torch.Tensor
    bad: Tuple[str, ...] = ()


class HeldOutImages(Dataset):
    """Images held as uint8 arrays, made into tensors one at a time when read.

    Parameters
    ----------
    images : numpy.ndarray, shape (N, S, S) or (N, S, S, 3), uint8
    transform : callable
        ``PIL.Image -> torch.Tensor (3, H, W)`` (grey images are converted to RGB first).
    """

    def __init__(self, images, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index]).convert("RGB"))


class _Numbered(Dataset):
    """A map-style source whose items come back as ``(index, item, name)``; ``name`` only for bad items."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        if item is not None:
            return index, item, None
        describe = getattr(self.dataset, "source", None)
        return index, None, describe(index) if describe else f"index {index}"


def _collate(rows) -> HeldOutBatch:
    good = [(index, item) for index, item, _ in rows if item is not None]
    bad = tuple(name for _, item, name in rows if item is None)
    if not good:
        return HeldOutBatch(None, None, torch.zeros(0, dtype=torch.long), bad)
    pairs = isinstance(good[0][1], (tuple, list))
    images = torch.stack([item[0] if pairs else item for _, item in good])
    texts = torch.stack([torch.as_tensor(item[1], dtype=torch.long) for _, item in good]) if pairs else None
    return HeldOutBatch(images, texts, torch.tensor([index for index, _ in good], dtype=torch.long), bad)


def held_out_batches(source, batch_size: int, *, workers: int = 0) -> Iterator[HeldOutBatch]:
    """The items of ``source`` in order, ``batch_size`` at a time.

    Parameters
    ----------
    source : torch.utils.data.Dataset or IterableDataset
        Map-style: items ``image (3, H, W)``, ``(image, tokens (L,))`` or ``None`` for a bad item (named
        by an optional ``source(index)`` method). Iterable: yields ``(index, item, name)`` itself (``item``
        None and ``name`` set for a bad one) and splits its work between loader workers.
    batch_size : int
        Items per batch (the evaluation's ``eval.batch_size``).
    workers : int, keyword-only
        Loader worker processes (0: read in this process).

    Yields
    ------
    HeldOutBatch
    """
    dataset = source if isinstance(source, IterableDataset) else _Numbered(source)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate,
                        worker_init_fn=ignore_stop_signals,
                        # its own generator: drawing the workers' base seed leaves the global RNG (and with
                        # it the training that follows the evaluation) untouched
                        generator=torch.Generator().manual_seed(0))
    yield from loader_batches(loader)
