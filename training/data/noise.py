"""Caption noise: a seeded, exact share of captions that name a different class."""

from __future__ import annotations

import numpy as np

__all__ = ["noisy_caption_labels"]


def noisy_caption_labels(labels: np.ndarray, noise: float, seed: int, n_classes: int) -> np.ndarray:
    """Return the class each caption names, with ``round(noise * n)`` of them wrong.

    Parameters
    ----------
    labels : numpy.ndarray, shape (n,), int in [0, n_classes)
        True classes.
    noise : float in [0, 1]
        Share of captions replaced.
    seed : int
        The corrupted positions are the first ``round(noise * n)`` of a permutation drawn from
        ``numpy.random.default_rng(seed)``; each gets a class uniform over the ``n_classes - 1``
        others.
    n_classes : int

    Returns
    -------
    numpy.ndarray, shape (n,), int64
        Differs from ``labels`` at exactly ``round(noise * n)`` positions.
    """
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"`data.caption_noise` must be in [0, 1], got {noise}")
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng([seed, 0xC0FFEE])
    n_noisy = int(round(noise * len(labels)))
    chosen = rng.permutation(len(labels))[:n_noisy]
    shift = rng.integers(1, n_classes, size=n_noisy)  # never 0: always a different class
    out = labels.copy()
    out[chosen] = (labels[chosen] + shift) % n_classes
    return out
