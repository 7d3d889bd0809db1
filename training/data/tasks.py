"""Evaluation tasks and the in-memory description of an embedded dataset."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Union

import numpy as np
import torch
from PIL import Image

__all__ = ["ZeroShotTask", "RetrievalTask", "EmbeddedTask"]

Template = Union[str, Callable[[str], str]]


def _format(template: Template, classname: str) -> str:
    return template(classname) if callable(template) else template.format(classname)


@dataclass
class ZeroShotTask:
    """Held-out images with labels, scored against prompts built from class names.

    Attributes
    ----------
    images : torch.Tensor, shape (N, 3, H, W)
        Preprocessed with the validation transform.
    labels : torch.Tensor, shape (N,), long in [0, C)
    classnames : list of str, length C
    templates : list of str or callable
        Format strings with one ``{}`` (or callables ``classname -> prompt``); they differ from
        every training phrasing.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classnames: List[str]
    templates: List[Template]

    def prompts(self, classname: str) -> List[str]:
        """All templates filled with ``classname``."""
        return [_format(t, classname) for t in self.templates]


@dataclass
class RetrievalTask:
    """Paired held-out images and captions for recall@K: image ``i`` goes with caption ``i``.

    Attributes
    ----------
    images : torch.Tensor, shape (N, 3, H, W)
    texts : torch.Tensor, shape (N, L), long
    captions : list of str, length N
    labels : torch.Tensor, shape (N,), long, optional
        Class of each pair where one exists. On class-coded data several captions are identical
        strings, so index-exact recall has a ceiling; class-level recall can use ``labels``.
    bad : list of str
        Names of the held-out samples left out as bad (unreadable or missing image, empty caption).
    """

    images: torch.Tensor
    texts: torch.Tensor
    captions: List[str]
    labels: Optional[torch.Tensor] = None
    bad: List[str] = field(default_factory=list)

    def __iter__(self):  # allows ``images, texts = task``
        return iter((self.images, self.texts))


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

    def _test_tensor(self, preprocess: Callable) -> torch.Tensor:
        return torch.stack([preprocess(Image.fromarray(a).convert("RGB")) for a in self.test_images])

    def zero_shot(self, preprocess: Callable) -> ZeroShotTask:
        """Held-out images through ``preprocess`` (PIL -> (3, H, W)) as a :class:`ZeroShotTask`."""
        return ZeroShotTask(
            self._test_tensor(preprocess),
            torch.as_tensor(self.test_labels, dtype=torch.long),
            list(self.classnames),
            list(self.templates),
        )

    def retrieval(self, preprocess: Callable, tokenizer: Callable) -> RetrievalTask:
        """Held-out images paired with their held-out-phrasing captions."""
        return RetrievalTask(
            self._test_tensor(preprocess),
            tokenizer(list(self.retrieval_captions)),
            list(self.retrieval_captions),
            torch.as_tensor(self.test_labels, dtype=torch.long),
        )
