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

Bad samples: a sample whose image is missing or unreadable, whose caption is missing or empty, or
whose transform fails is logged, named (``shard:key``) and replaced by the next sample of the stream,
so every batch is full on every rank (the loss gathers features across ranks, which needs the same
number of rows everywhere). A broken shard or tar member goes to a handler that does the same. Each
batch reports the bad samples met while it was filled in ``n_skipped`` and ``bad``. A whole pass over
the shards without one full batch raises :class:`BadDataError`.
"""

from __future__ import annotations

import glob
import io
import logging
import tarfile
from itertools import islice
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from ..faults import loader_batches
from ..preemption import ignore_stop_signals
from ..rng import cpu_seeded
from .batch import BadDataError, Batch
from .loader import PositionedLoader

__all__ = ["WebDatasetLoader", "count_samples", "decode_sample", "expand_shards", "HeldOutShards", "sample_name"]

log = logging.getLogger(__name__)

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
    """webdataset exception handler for what breaks before a sample exists (an unreadable shard or tar
    member): log, count, name, continue. Lives inside each worker's pipeline."""

    def __init__(self):
        self.bad: List[str] = []

    def __call__(self, error: Exception) -> bool:
        # webdataset appends the shard's url to the arguments of the errors it forwards
        where = error.args[-1] if error.args and isinstance(error.args[-1], str) else "?"
        self.bad.append(f"{where} ({type(error).__name__})")
        log.warning("skipping bad webdataset data: %s: %s", type(error).__name__, error)
        return True

    def take(self) -> Tuple[str, ...]:
        bad, self.bad = tuple(self.bad), []
        return bad


class _RankSplit:
    """Node splitter with explicit rank and world size (not read from the environment)."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size

    def __call__(self, src):
        return islice(src, self.rank, None, self.world_size)


def sample_name(sample: dict) -> str:
    """``"<shard>:<key>"`` of a webdataset sample, for logs and reports."""
    return f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"


def decode_sample(sample: dict) -> Tuple[Image.Image, str]:
    """The RGB image and the stripped caption of a raw webdataset sample (member name -> bytes).

    Raises
    ------
    ValueError
        When the image or ``.txt`` member is missing or the caption is empty.
    Exception
        Whatever PIL raises on an unreadable image (``convert`` forces the whole decode).
    """
    image_key = next((key for key in sample if key.lower() in _IMAGE_EXTS), None)
    if image_key is None:
        raise ValueError("no image member (.jpg, .jpeg, .png or .webp)")
    if "txt" not in sample:
        raise ValueError("no .txt caption member")
    caption = sample["txt"].decode("utf-8").strip()
    if not caption:
        raise ValueError("empty caption")
    with Image.open(io.BytesIO(sample[image_key])) as image:
        return image.convert("RGB"), caption


class _Batcher:
    """Pipeline stage: raw samples -> full local batches of ``batch_size`` good samples.

    A bad sample (see :func:`decode_sample`, or a failing transform) is logged, named and replaced
    by the next one of the stream, so every batch is full on every rank. Captions are tokenized
    once per batch. The transforms of batch ``k`` of a worker run under a torch seed drawn from
    ``(seed, worker, k)``.
    """

    def __init__(self, transform, tokenizer, batch_size: int, counter: _SkipCounter, seed: List[int]):
        self.transform, self.tokenizer = transform, tokenizer
        self.batch_size, self.counter, self.seed = batch_size, counter, seed

    def __call__(self, src) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        samples = iter(src)
        for k in range(1 << 62):
            images, captions, bad = [], [], []
            item_seed = int(np.random.SeedSequence(self.seed + [worker, k]).generate_state(1)[0])
            with cpu_seeded(item_seed):
                for sample in samples:
                    try:
                        image, caption = decode_sample(sample)
                        images.append(self.transform(image))
                    except Exception as error:  # a bad sample must not stop training
                        bad.append(sample_name(sample))
                        log.warning("skipping %s: %s: %s", bad[-1], type(error).__name__, error)
                        continue
                    captions.append(caption)
                    if len(images) == self.batch_size:
                        break
            if len(images) < self.batch_size:
                return  # the pass ran dry: drop its partial tail
            bad = self.counter.take() + tuple(bad)
            yield Batch(_stack(images, shared=info is not None), self.tokenizer(captions), len(bad), bad)


def _stack(tensors: List[torch.Tensor], *, shared: bool) -> torch.Tensor:
    """``torch.stack(tensors)``; with ``shared``, straight into shared memory.

    A loader worker hands its batch to the main process through shared memory: stacking there (as torch's
    ``default_collate`` does in workers) saves copying the whole image batch once more on the way out.
    """
    if not shared:
        return torch.stack(tensors)
    first = tensors[0]
    storage = first._typed_storage()._new_shared(len(tensors) * first.numel(), device=first.device)
    out = first.new(storage).resize_(len(tensors), *first.shape)
    return torch.stack(tensors, out=out)


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
                                pin_memory=self.pin_memory, worker_init_fn=ignore_stop_signals)
            for batch in loader_batches(loader):
                produced += 1
                if produced > start:
                    yield self._count_bad(batch)
                if produced == self.steps_per_epoch:
                    return
            if produced == before:
                raise BadDataError(
                    f"a full pass over {len(self.urls)} shard(s) gave no batch of "
                    f"{self.local_batch_size} good samples: {self.urls[:5]}"
                )



class HeldOutShards(IterableDataset):
    """The samples of validation shards, read in order when iterated (for streamed evaluation retrieval).

    Yields ``(index, (image (3, H, W), tokens (L,)), None)`` for a good sample and ``(index, None, name)``
    for a bad one (``shard:key``, or the shard for what breaks before a sample exists); ``index`` counts
    the samples a reader met. Loader workers split the shards (``wds.split_by_worker``), so every sample
    is read once. The evaluation streams it with :func:`manifold_align_train.data.held_out.held_out_batches`.

    Parameters
    ----------
    pattern : str
        Shards, as ``data.val_data`` (brace and ``::`` lists).
    transform : callable
        ``PIL.Image -> torch.Tensor (3, H, W)``.
    tokenizer : callable
        ``list[str] -> torch.LongTensor (N, L)``.
    """

    def __init__(self, pattern: str, transform: Callable, tokenizer: Callable):
        self.urls = expand_shards(pattern)
        self.pattern, self.transform, self.tokenizer = pattern, transform, tokenizer

    def __iter__(self):
        counter = _SkipCounter()
        dataset = wds.WebDataset(self.urls, handler=counter, shardshuffle=False, empty_check=False,
                                 nodesplitter=None, workersplitter=wds.split_by_worker)
        index = 0
        for sample in dataset:
            for name in counter.take():
                yield -1, None, name
            try:
                image, caption = decode_sample(sample)
                item = self.transform(image), self.tokenizer([caption])[0]
            except Exception as error:
                name = sample_name(sample)
                log.warning("skipping validation sample %s: %s: %s", name, type(error).__name__, error)
                yield index, None, name
            else:
                yield index, item, None
            index += 1
        for name in counter.take():
            yield -1, None, name
