"""Evaluation tasks and the in-memory description of an embedded dataset."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from .held_out import HeldOutImages
from .in_memory import InMemoryImageText

__all__ = ["ZeroShotTask", "RetrievalTask", "EmbeddedTask"]

Template = Union[str, Callable[[str], str]]


def _format(template: Template, classname: str) -> str:
    return template(classname) if callable(template) else template.format(classname)


@dataclass
class ZeroShotTask:
    """Held-out images with labels, scored against prompts built from class names.

    Attributes
    ----------
    images : torch.utils.data.Dataset
        Item ``i`` is held-out image ``i`` through the validation transform, a tensor (3, H, W) made
        when read: the evaluation streams them in batches (:mod:`manifold_align_train.data.held_out`).
    labels : torch.Tensor, shape (N,), long in [0, C)
    classnames : list of str, length C
    templates : list of str or callable
        Format strings with one ``{}`` (or callables ``classname -> prompt``); they differ from
        every training phrasing.
    bad : list of str
        Names of the images left out as unreadable or missing (item None), as the last evaluation met them.
    """

    images: Dataset
    labels: torch.Tensor
    classnames: List[str]
    templates: List[Template]
    bad: List[str] = field(default_factory=list)

    def prompts(self, classname: str) -> List[str]:
        """All templates filled with ``classname``."""
        return [_format(t, classname) for t in self.templates]


@dataclass
class RetrievalTask:
    """Paired held-out images and captions for recall@K: image ``i`` goes with caption ``i``.

    Attributes
    ----------
    pairs : torch.utils.data.Dataset or IterableDataset
        The held-out pairs, read when the evaluation streams them in batches
        (:func:`manifold_align_train.data.held_out.held_out_batches`): map-style items
        ``(image (3, H, W), tokens (L,))`` or None for a bad pair; an iterable yields
        ``(index, item, name)``.
    labels : torch.Tensor, shape (N,), long, optional
        Class of pair ``i`` where one exists: class-captioned data, where captions repeat per class, so
        index-exact recall has a ceiling and class-level recall is what means something.
    bad : list of str
        Names of the held-out pairs left out as bad (unreadable or missing image, empty caption),
        as the last evaluation met them.
    """

    pairs: Union[Dataset, IterableDataset]
    labels: Optional[torch.Tensor] = None
    bad: List[str] = field(default_factory=list)


@dataclass
class EmbeddedTask:
    """An embedded dataset before preprocessing: training pairs plus held-out material.

    Attributes
    ----------
    train_images : numpy.ndarray, shape (n, S, S) or (n, S, S, 3), uint8
    train_captions : list of str, length n
    train_labels : numpy.ndarray, shape (n,)
        True class of each training image.
    caption_labels : numpy.ndarray, shape (n,)
        Class each training caption names (differs from ``train_labels`` where noise hit).
    test_images : numpy.ndarray, shape (m, S, S) or (m, S, S, 3), uint8
    test_labels : numpy.ndarray, shape (m,)
    classnames : list of str
    templates : list of str
        Zero-shot prompt templates.
    retrieval_captions : list of str, length m
        One caption per held-out image, in a phrasing never used for training.
    name : str
    """

    train_images: np.ndarray
    train_captions: List[str]
    train_labels: np.ndarray
    caption_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classnames: List[str]
    templates: List[str]
    retrieval_captions: List[str]
    name: str = "embedded"
    extra: dict = field(default_factory=dict)

    def zero_shot(self, preprocess: Callable) -> ZeroShotTask:
        """Held-out images through ``preprocess`` (PIL -> (3, H, W)), made when read, as a :class:`ZeroShotTask`."""
        return ZeroShotTask(
            HeldOutImages(self.test_images, preprocess),
            torch.as_tensor(self.test_labels, dtype=torch.long),
            list(self.classnames),
            list(self.templates),
        )

    def retrieval(self, preprocess: Callable, tokenizer: Callable) -> RetrievalTask:
        """Held-out images paired with their held-out-phrasing captions (images made when read)."""
        pairs = InMemoryImageText(self.test_images, self.retrieval_captions, preprocess, tokenizer,
                                  prefix=f"{self.name} held-out")
        return RetrievalTask(pairs, torch.as_tensor(self.test_labels, dtype=torch.long))
