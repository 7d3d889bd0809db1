"""The embedded default task: scikit-learn's handwritten digits with generated captions.

1797 real 8x8 scans (17 grey levels) are upscaled bicubically to ``image_size`` and split
stratified 80/20 by a fixed ``split_seed``. Each training image gets one caption, its phrasing
drawn from :data:`TRAIN_PHRASINGS` by the training seed; ``caption_noise`` re-labels an exact,
seeded share of the training captions. Zero-shot prompts (:data:`ZERO_SHOT_TEMPLATES`) and the
retrieval caption (:data:`RETRIEVAL_PHRASING`) use phrasings never seen in training.
"""

from __future__ import annotations

from typing import List

import numpy as np

from .digit_source import DIGIT_WORDS, load_digit_split
from .noise import noisy_caption_labels
from .tasks import EmbeddedTask

__all__ = [
    "TRAIN_PHRASINGS",
    "RETRIEVAL_PHRASING",
    "ZERO_SHOT_TEMPLATES",
    "CLASSNAMES",
    "digit_caption",
    "make_digits",
]

CLASSNAMES: List[str] = list(DIGIT_WORDS)

#: Training phrasings; ``{w}`` is the word ("seven"), ``{n}`` the numeral ("7").
TRAIN_PHRASINGS = (
    "a photo of the digit {w}",
    "handwritten {n}",
    "the number {w} written by hand",
    "a scanned numeral {n}",
    "a handwritten {w}",
    "digit {n}",
    "a small grey image of the number {w}",
    "the figure {n} in pen",
)

#: Held out from training: the one caption of each retrieval image.
RETRIEVAL_PHRASING = "a {w} drawn by someone, the digit {n}"

#: Zero-shot prompts, filled with :data:`CLASSNAMES`; none equals a training caption.
ZERO_SHOT_TEMPLATES = [
    "an image of a {}.",
    "a picture showing the number {}.",
    "{}",
    "a drawing of a {}.",
    "a low resolution photo of the number {}.",
]


def digit_caption(label: int, phrasing: str) -> str:
    """Fill ``phrasing`` (with ``{w}``/``{n}`` fields) for digit ``label``."""
    return phrasing.format(w=DIGIT_WORDS[label], n=str(label))


def make_digits(
    image_size: int = 32,
    *,
    seed: int = 0,
    caption_noise: float = 0.0,
    split_seed: int = 0,
) -> EmbeddedTask:
    """Build the digits task.

    Parameters
    ----------
    image_size : int
        Side of the square RGB images.
    seed : int
        Picks each training caption's phrasing and the noisy captions.
    caption_noise : float in [0, 1]
        Share of training captions naming a wrong class (exactly ``round(noise * n_train)``).
    split_seed : int
        Fixes the train/test split (default 0: the same held-out set for every run).

    Returns
    -------
    EmbeddedTask
        1437 training and 360 held-out images (at ``split_seed=0``), 10 classes.
    """
    split = load_digit_split(image_size, split_seed=split_seed)
    caption_labels = noisy_caption_labels(split.train_labels, caption_noise, seed, 10)
    rng = np.random.default_rng([seed, 1])
    phrasing = rng.integers(0, len(TRAIN_PHRASINGS), size=len(caption_labels))
    captions = [digit_caption(int(c), TRAIN_PHRASINGS[p]) for c, p in zip(caption_labels, phrasing)]
    retrieval = [digit_caption(int(c), RETRIEVAL_PHRASING) for c in split.test_labels]
    return EmbeddedTask(
        train_images=split.train_images,
        train_captions=captions,
        train_labels=split.train_labels.copy(),
        caption_labels=caption_labels,
        test_images=split.test_images,
        test_labels=split.test_labels.copy(),
        classnames=list(CLASSNAMES),
        templates=list(ZERO_SHOT_TEMPLATES),
        retrieval_captions=retrieval,
        name="digits",
    )
