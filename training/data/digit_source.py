"""scikit-learn's bundled handwritten digits, upscaled and split once, deterministically."""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from PIL import Image

__all__ = ["DIGIT_WORDS", "DigitSplit", "load_digit_split", "upscale"]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


class DigitSplit(NamedTuple):
    """Upscaled digit images, split stratified by class.

    Attributes
    ----------
    train_images, test_images : numpy.ndarray, shape (n, S, S), uint8
    train_labels, test_labels : numpy.ndarray, shape (n,), int64 in [0, 9]
    train_index, test_index : numpy.ndarray, shape (n,), int64
        Rows of ``sklearn.datasets.load_digits()`` (disjoint, together all 1797).
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    train_index: np.ndarray
    test_index: np.ndarray


def upscale(images8: np.ndarray, size: int) -> np.ndarray:
    """Upscale 8x8 images with 17 grey levels (0..16) to ``size`` x ``size`` uint8, bicubic.

    Parameters
    ----------
    images8 : numpy.ndarray, shape (N, 8, 8), values in [0, 16]
    size : int

    Returns
    -------
    numpy.ndarray, shape (N, size, size), uint8
    """
    grey = np.clip(np.round(images8 * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    out = [np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC)) for img in grey]
    return np.stack(out) if out else np.zeros((0, size, size), np.uint8)


@functools.lru_cache(maxsize=8)
def load_digit_split(size: int, *, split_seed: int = 0, test_fraction: float = 0.2) -> DigitSplit:
    """Load the 1797 digits, upscale to ``size`` and split stratified ``1 - test_fraction`` / ``test_fraction``.

    The split depends on ``split_seed`` only (not on the training seed), so every run evaluates on
    the same held-out images. Returned arrays are shared by the cache: do not modify them.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=split_seed, stratify=labels
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    images = upscale(bunch.images, size)
    for arr in (images, labels):
        arr.setflags(write=False)
    return DigitSplit(
        images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], train_idx, test_idx
    )
