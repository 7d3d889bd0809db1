"""Training data: embedded digit tasks, CSV and webdataset sources, a resumable loader.

Entry point: :func:`build_data`. See ``docs/data.md``.
"""

from .batch import BadDataError, Batch, collate_skip_bad
from .build import DATASETS, EMBEDDED_DATASETS, DataBundle, build_data, build_embedded
from .csv_dataset import CsvDataset
from .digit_pairs import make_digit_pairs
from .digits import make_digits
from .in_memory import InMemoryImageText
from .labelled_images import LabelledImages, zero_shot_task
from .loader import ResumableLoader
from .synthetic import make_synthetic
from .tasks import EmbeddedTask, RetrievalTask, ZeroShotTask
from .webdataset_source import WebDatasetLoader

__all__ = [
    "BadDataError",
    "Batch",
    "collate_skip_bad",
    "DATASETS",
    "EMBEDDED_DATASETS",
    "DataBundle",
    "build_data",
    "build_embedded",
    "CsvDataset",
    "make_digit_pairs",
    "make_digits",
    "InMemoryImageText",
    "LabelledImages",
    "zero_shot_task",
    "ResumableLoader",
    "make_synthetic",
    "EmbeddedTask",
    "RetrievalTask",
    "ZeroShotTask",
    "WebDatasetLoader",
]
