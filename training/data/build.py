"""``build_data``: one entry point from a DataConfig to loaders and evaluation tasks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Union

from .csv_dataset import CsvDataset
from .digit_pairs import make_digit_pairs
from .digits import make_digits
from .in_memory import InMemoryImageText
from .loader import ResumableLoader
from .synthetic import make_synthetic
from .tasks import EmbeddedTask, RetrievalTask, ZeroShotTask
from .webdataset_source import HeldOutShards, WebDatasetLoader

__all__ = ["DATASETS", "EMBEDDED_DATASETS", "DataBundle", "ZeroShotTask", "RetrievalTask", "build_data", "build_embedded"]

EMBEDDED_DATASETS = ("digits", "digit-pairs", "synthetic")  # built in memory; `caption_noise` applies
DATASETS = EMBEDDED_DATASETS + ("csv", "webdataset")


@dataclass
class DataBundle:
    """What the trainer needs from the data side.

    Attributes
    ----------
    train : ResumableLoader or WebDatasetLoader
        Iterable of :class:`~manifold_align_train.data.batch.Batch`; ``position()`` / ``set_position()``.
    zero_shot : ZeroShotTask or None
    retrieval : RetrievalTask or None
    steps_per_epoch : int
        Batches per epoch on every rank.
    description : str
        One line for logs.
    eval_sets : list of manifold_align_train.eval_sets.EvalSet
        The named evaluation sets of ``eval.datasets`` (attached by ``builders.build_data_bundle``).
    """

    train: Union[ResumableLoader, WebDatasetLoader]
    zero_shot: Optional[ZeroShotTask]
    retrieval: Optional[RetrievalTask]
    steps_per_epoch: int
    description: str
    eval_sets: list = field(default_factory=list)


def build_embedded(data_cfg, seed: int) -> EmbeddedTask:
    """The digits, digit-pairs or synthetic task for ``data_cfg`` (a ``DataConfig``)."""
    size, noise = data_cfg.image_size, data_cfg.caption_noise
    if data_cfg.dataset == "digits":
        return make_digits(size, seed=seed, caption_noise=noise)
    if data_cfg.dataset == "digit-pairs":
        return make_digit_pairs(size, seed=seed, caption_noise=noise)
    sizes = {} if data_cfg.num_samples is None else {"n_train": data_cfg.num_samples}
    return make_synthetic(size, seed=seed, caption_noise=noise, **sizes)


def _csv(path, data_cfg, transform, tokenizer) -> CsvDataset:
    return CsvDataset(
        path,
        transform,
        tokenizer,
        img_key=data_cfg.csv_img_key,
        caption_key=data_cfg.csv_caption_key,
        sep=data_cfg.csv_separator,
    )


def build_data(
    data_cfg,
    *,
    preprocess_train: Callable,
    preprocess_val: Callable,
    tokenizer: Callable,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> DataBundle:
    """Build the training loader and the evaluation tasks for ``data_cfg``.

    Parameters
    ----------
    data_cfg : DataConfig
        ``manifold_align_train.config.DataConfig`` (or an object with all its fields): ``dataset``, ``train_data``, ``val_data``, ``csv_separator``,
        ``csv_img_key``, ``csv_caption_key``, ``caption_noise``, ``image_size``, ``batch_size``
        (GLOBAL, all ranks together), ``workers``, ``num_samples``.
    preprocess_train, preprocess_val : callable
        ``PIL.Image -> torch.Tensor (3, H, W)``.
    tokenizer : callable
        ``list[str] -> torch.LongTensor (N, L)``.
    seed : int
        Seeds the batch order, augmentation, caption phrasings and caption noise.
    rank, world_size : int
        This process's slice of each global batch.
    pin_memory : bool
        Page-locked training batches (for a GPU: faster, asynchronous copies).

    Returns
    -------
    DataBundle

    Raises
    ------
    ValueError
        Unknown ``data.dataset``, or a missing ``data.train_data`` for csv/webdataset.
    """
    name = data_cfg.dataset
    if name not in DATASETS:
        raise ValueError(f"`data.dataset` must be one of {list(DATASETS)}, got {name!r}")
    batch_size, workers = data_cfg.batch_size, data_cfg.workers
    common = dict(seed=seed, rank=rank, world_size=world_size, workers=workers, pin_memory=pin_memory)
    if name in EMBEDDED_DATASETS:
        task = build_embedded(data_cfg, seed)
        train = InMemoryImageText(task.train_images, task.train_captions, preprocess_train, tokenizer, prefix=name)
        loader = ResumableLoader(train, batch_size, **common)
        description = (
            f"{name}: {len(train)} train / {len(task.test_labels)} held-out images, "
            f"{len(task.classnames)} classes, caption_noise={data_cfg.caption_noise:g}, "
            f"batch {batch_size} (global), {loader.steps_per_epoch} steps/epoch"
        )
        return DataBundle(
            loader,
            task.zero_shot(preprocess_val),
            task.retrieval(preprocess_val, tokenizer),
            loader.steps_per_epoch,
            description,
        )
    train_data, val_data = data_cfg.train_data, data_cfg.val_data
    if not train_data:
        raise ValueError(f"`data.train_data` is required for `data.dataset`={name!r}")
    if name == "csv":
        loader = ResumableLoader(_csv(train_data, data_cfg, preprocess_train, tokenizer), batch_size, **common)
        retrieval = RetrievalTask(_csv(val_data, data_cfg, preprocess_val, tokenizer)) if val_data else None
        n = len(loader.dataset)
    else:
        loader = WebDatasetLoader(
            train_data, preprocess_train, tokenizer, batch_size,
            num_samples=data_cfg.num_samples, **common,
        )
        retrieval = RetrievalTask(HeldOutShards(val_data, preprocess_val, tokenizer)) if val_data else None
        n = loader.num_samples
    description = (
        f"{name}: {train_data} ({n} samples/epoch), val={val_data or 'none'}, "
        f"batch {batch_size} (global), {loader.steps_per_epoch} steps/epoch"
    )
    return DataBundle(loader, None, retrieval, loader.steps_per_epoch, description)
