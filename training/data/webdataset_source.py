"""Training batches streamed from webdataset shards (``.tar`` of ``<key>.<image ext>`` + ``<key>.txt``).

Order of the data
-----------------
Shards are read in passes. Pass ``p`` of epoch ``e`` orders the shards by a permutation seeded
with ``(seed, e, p)`` (the list is repeated until it has at least ``world_size * max(1, workers)``
entries, so every rank and worker gets a shard -- with fewer shards than that, some data is read
twice). Rank ``r`` takes every ``world_size``-th shard from ``r`` on, each DataLoader worker every
``workers``-th of those (``wds.split_by_worker``); samples pass a seeded shuffle buffer. An
epoch is ``steps_per_epoch = num_samples // batch_size`` batches per rank (``batch_size`` global);
when a pass runs dry before that, the next pass starts.

Resume (best effort): :meth:`WebDatasetLoader.epoch_batches` with ``start > 0`` replays the epoch
from its beginning and discards ``start`` batches. With the same shards, ``workers`` and
``world_size`` this gives the same batches, at the cost of decoding the skipped ones again.

Bad samples: a decoding error (corrupt image, missing caption file, broken tar member) goes to a
handler that logs it, counts it and continues; an empty caption or a failing transform is skipped
too. The count is reported in the next batch's ``n_skipped``; batches stay full (the stream moves
on to the next sample), unlike the map-style loaders whose batches shrink.
"""

from __future__ import annotations

import glob
import logging
import tarfile
from itertools import islice
from typing import Callable, Iterator, List, Optional

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from .batch import BadDataError, Batch, collate_skip_bad
from .loader import PositionedLoader

__all__ = ["WebDatasetLoader", "expand_shards", "count_samples", "read_samples"]

log = logging.getLogger(__name__)

IMAGE_KEYS = "jpg;jpeg;png;webp"
_IMAGE_EXTS = {"jpg", "jpeg", "png", "webp"}


def expand_shards(pattern: str) -> List[str]:
    """Expand ``"a/{000..009}.tar"`` braces and ``"::"``-separated lists (and local globs).

    Returns
    -------
    list of str
        Shard URLs or paths, in the pattern's order.
    """
    urls = []
    for url in wds.shardlists.expand_urls(pattern):
        matches = sorted(glob.glob(url)) if any(ch in url for ch in "*?[") else []
        urls.extend(matches or [url])
    if not urls:
        raise ValueError(f"`data.train_data` pattern {pattern!r} expands to no shards")
    return urls


def count_samples(urls: List[str]) -> int:
    """Count image members of local ``.tar`` shards (headers only). For ``num_samples=None``."""
    total = 0
    for url in urls:
        with tarfile.open(url) as tar:
            total += sum(1 for m in tar if m.isfile() and m.name.rsplit(".", 1)[-1].lower() in _IMAGE_EXTS)
    return total


class _SkipCounter:
    """webdataset exception handler: log, count, continue. Lives inside each worker's pipeline."""

    def __init__(self):
        self.count = 0

    def __call__(self, error: Exception) -> bool:
        self.count += 1
        log.warning("skipping bad webdataset sample: %s: %s", type(error).__name__, error)
        return True

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


class _RankSplit:
    """Node splitter with explicit rank and world size (not read from the environment)."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size

    def __call__(self, src):
        return islice(src, self.rank, None, self.world_size)


class _Batcher:
    """Pipeline stage: preprocess ``(image, caption, key)`` tuples and collate full local batches."""

    def __init__(self, transform, tokenizer, batch_size: int, counter: _SkipCounter, seed: List[int]):
        self.transform, self.tokenizer = transform, tokenizer
        self.batch_size, self.counter, self.seed = batch_size, counter, seed

    def _item(self, sample):
        image, caption, name = sample
        caption = caption.strip() if isinstance(caption, str) else ""
        if not caption:
            log.warning("skipping %s: empty caption", name)
            return None
        try:
            return self.transform(image.convert("RGB")), self.tokenizer([caption])[0]
        except Exception as error:  # a bad image must not stop training
            log.warning("skipping %s: %s: %s", name, type(error).__name__, error)
            return None

    def __call__(self, src) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        samples = iter(src)
        for k in range(1 << 62):
            group = list(islice(samples, self.batch_size))
            if len(group) < self.batch_size:
                return  # drop the partial tail of the pass
            item_seed = int(np.random.SeedSequence(self.seed + [worker, k]).generate_state(1)[0])
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(item_seed)
                items = [self._item(s) for s in group]
            names = [f"{s[2]}" for s in group]
            batch = collate_skip_bad(items, sources=names)
            yield batch._replace(n_skipped=batch.n_skipped + self.counter.take())


class WebDatasetLoader(PositionedLoader):
    """Seeded, rank-split batches streamed from webdataset shards; same interface as ResumableLoader.

    Parameters
    ----------
    pattern : str
        Shard pattern, e.g. ``"data/shard-{0000..0099}.tar"``.
    transform : callable
        ``PIL.Image -> torch.Tensor (3, H, W)``.
    tokenizer : callable
        ``list[str] -> torch.LongTensor (N, L)``.
    batch_size : int
        GLOBAL batch size; each rank yields ``batch_size // world_size`` samples per batch.
    num_samples : int, optional
        Samples per epoch (all ranks). ``None``: count the image members of the (local) shards.
    seed, rank, world_size, workers : int
    shuffle_buffer : int
        Sample shuffle buffer per worker (0 disables).
    pin_memory : bool
        Passed to the ``DataLoader`` (page-locked batches copy to a GPU faster and asynchronously).
    """

    def __init__(
        self,
        pattern: str,
        transform: Callable,
        tokenizer: Callable,
        batch_size: int,
        *,
        num_samples: Optional[int] = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 0,
        shuffle_buffer: int = 1000,
        pin_memory: bool = False,
    ):
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(
                f"`data.batch_size` is the global batch size and must be a positive multiple of "
                f"world_size={world_size}, got {batch_size}"
            )
        self.urls = expand_shards(pattern)
        self.num_samples = int(num_samples) if num_samples else count_samples(self.urls)
        self.steps_per_epoch = self.num_samples // batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"`data.num_samples`={self.num_samples} is less than one global batch ({batch_size})"
            )
        self.transform, self.tokenizer = transform, tokenizer
        self.batch_size, self.local_batch_size = batch_size, batch_size // world_size
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.workers, self.shuffle_buffer = int(workers), int(shuffle_buffer)
        self.pin_memory = bool(pin_memory)
        self.n_skipped_total = 0

    def _pass_urls(self, epoch: int, pass_index: int) -> List[str]:
        rng = np.random.default_rng([self.seed, epoch, pass_index])
        need = self.world_size * max(1, self.workers)
        urls: List[str] = []
        while len(urls) < need or not urls:
            urls.extend(self.urls[i] for i in rng.permutation(len(self.urls)))
        return urls

    def pipeline(self, epoch: int, pass_index: int) -> wds.DataPipeline:
        """One finite pass of this rank over its shards, yielding :class:`Batch`."""
        counter = _SkipCounter()
        dataset = wds.WebDataset(
            self._pass_urls(epoch, pass_index),
            handler=counter,
            nodesplitter=_RankSplit(self.rank, self.world_size),
            workersplitter=wds.split_by_worker,
            shardshuffle=False,
            empty_check=False,
        )
        if self.shuffle_buffer > 0:
            dataset = dataset.shuffle(
                self.shuffle_buffer, initial=min(100, self.shuffle_buffer), seed=self.seed + 7919 * epoch + pass_index
            )
        dataset = dataset.decode("pil", handler=counter)
        dataset = dataset.to_tuple(IMAGE_KEYS, "txt", "__key__", handler=counter)
        seed = [self.seed, epoch, pass_index, self.rank]
        return dataset.compose(_Batcher(self.transform, self.tokenizer, self.local_batch_size, counter, seed))

    def epoch_batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Yield this rank's batches ``start, ..., steps_per_epoch - 1`` of ``epoch``.

        Raises
        ------
        BadDataError
            If a whole pass over the shards yields no batch.
        """
        produced = 0
        for pass_index in range(1 << 30):
            before = produced
            loader = DataLoader(self.pipeline(epoch, pass_index), batch_size=None, num_workers=self.workers,
                                pin_memory=self.pin_memory)
            for batch in loader:
                produced += 1
                if produced > start:
                    self.n_skipped_total += batch.n_skipped
                    yield batch
                if produced == self.steps_per_epoch:
                    return
            if produced == before:
                raise BadDataError(
                    f"a full pass over {len(self.urls)} shard(s) gave no batch of "
                    f"{self.local_batch_size} good samples: {self.urls[:5]}"
                )



def read_samples(pattern: str, transform: Callable, tokenizer: Callable):
    """Read every good sample of the shards once, in order (for validation retrieval).

    Returns
    -------
    images : torch.Tensor, shape (N, 3, H, W)
    texts : torch.Tensor, shape (N, L)
    captions : list of str
    n_skipped : int
    """
    counter = _SkipCounter()
    dataset = (
        wds.WebDataset(expand_shards(pattern), handler=counter, shardshuffle=False, empty_check=False,
                       nodesplitter=None, workersplitter=None)
        .decode("pil", handler=counter)
        .to_tuple(IMAGE_KEYS, "txt", handler=counter)
    )
    images, captions = [], []
    for image, caption in dataset:
        caption = caption.strip() if isinstance(caption, str) else ""
        if not caption:
            counter.count += 1
            continue
        try:
            images.append(transform(image.convert("RGB")))
        except Exception as error:
            counter(error)
            continue
        captions.append(caption)
    if not images:
        raise BadDataError(f"no good sample in {pattern!r}")
    return torch.stack(images), tokenizer(captions), captions, counter.count
