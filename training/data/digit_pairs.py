"""A harder embedded task: two handwritten digits side by side, 100 ordered classes.

Each image is ``image_size`` x ``image_size``; the left digit fills the left half, the right digit
the right half (each a ``image_size // 2`` square, centred vertically). The class is the ordered
pair (left, right), named like ``"three seven"``; captions name both digits in order. Training
pairs are built from the training digits and held-out pairs from the held-out digits of the
digits split (:func:`manifold_align_train.data.digit_source.load_digit_split`), so no digit scan is shared.
The pairs drawn depend on ``split_seed`` only; caption phrasings and noise on ``seed``.
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np

from .digit_source import DIGIT_WORDS, load_digit_split
from .noise import noisy_caption_labels
from .tasks import EmbeddedTask

__all__ = [
    "PAIR_TRAIN_PHRASINGS",
    "PAIR_RETRIEVAL_PHRASING",
    "PAIR_ZERO_SHOT_TEMPLATES",
    "pair_classnames",
    "pair_caption",
    "make_digit_pairs",
]

#: ``{a}``/``{b}`` are the words of the left/right digit, ``{A}``/``{B}`` their numerals.
PAIR_TRAIN_PHRASINGS = (
    "the digits {a} and {b}",
    "{A} then {B}",
    "a {a} followed by a {b}",
    "handwritten {A} and {B}",
    "two digits: {a}, {b}",
    "{a} on the left, {b} on the right",
    "the numbers {A} and {B} side by side",
    "a photo of a {a} next to a {b}",
)

PAIR_RETRIEVAL_PHRASING = "first a {A}, second a {B}, written by hand"

PAIR_ZERO_SHOT_TEMPLATES = [
    "an image of the pair {}.",
    "a picture showing {}.",
    "{}",
    "the two numbers {}.",
]


def pair_classnames() -> List[str]:
    """The 100 class names, class ``10 * left + right`` -> ``"<left word> <right word>"``."""
    return [f"{DIGIT_WORDS[a]} {DIGIT_WORDS[b]}" for a in range(10) for b in range(10)]


def pair_caption(label: int, phrasing: str) -> str:
    """Fill ``phrasing`` for pair class ``label = 10 * left + right``."""
    a, b = divmod(int(label), 10)
    return phrasing.format(a=DIGIT_WORDS[a], b=DIGIT_WORDS[b], A=str(a), B=str(b))


def _compose(
    images: np.ndarray, labels: np.ndarray, per_class: int, size: int, rng: np.random.Generator
) -> Tuple[np.ndarray, np.ndarray]:
    """Draw ``per_class`` pairs for each of the 100 classes; returns (images (n, S, S), labels (n,))."""
    half = images.shape[1]
    by_class = [np.flatnonzero(labels == c) for c in range(10)]
    top = (size - half) // 2
    out_images = np.zeros((100 * per_class, size, size), np.uint8)
    out_labels = np.repeat(np.arange(100), per_class)
    for i, label in enumerate(out_labels):
        a, b = divmod(int(label), 10)
        out_images[i, top : top + half, :half] = images[rng.choice(by_class[a])]
        out_images[i, top : top + half, half : 2 * half] = images[rng.choice(by_class[b])]
    return out_images, out_labels


def make_digit_pairs(
    image_size: int = 32,
    *,
    seed: int = 0,
    caption_noise: float = 0.0,
    split_seed: int = 0,
    train_per_class: int = 50,
    test_per_class: int = 10,
) -> EmbeddedTask:
    """Build the digit-pairs task.

    Parameters
    ----------
    image_size : int
        Side of the square images; each digit is ``image_size // 2`` square.
    seed : int
        Picks caption phrasings and the noisy captions.
    caption_noise : float in [0, 1]
        Share of training captions naming a wrong pair (uniform over the 99 others).
    split_seed : int
        Fixes the digit split and which scans make up each pair.
    train_per_class, test_per_class : int
        Images per class: 100 * train_per_class training and 100 * test_per_class held out.

    Returns
    -------
    EmbeddedTask
        100 classes, class ``10 * left + right``.
    """
    if image_size < 4:
        raise ValueError(f"`data.image_size` must be >= 4 for digit-pairs, got {image_size}")
    split = load_digit_split(image_size // 2, split_seed=split_seed)
    rng = np.random.default_rng([split_seed, 2])
    train_images, train_labels = _compose(
        split.train_images, split.train_labels, train_per_class, image_size, rng
    )
    test_images, test_labels = _compose(
        split.test_images, split.test_labels, test_per_class, image_size, rng
    )
    caption_labels = noisy_caption_labels(train_labels, caption_noise, seed, 100)
    phrasing = np.random.default_rng([seed, 3]).integers(
        0, len(PAIR_TRAIN_PHRASINGS), size=len(train_labels)
    )
    captions = [pair_caption(c, PAIR_TRAIN_PHRASINGS[p]) for c, p in zip(caption_labels, phrasing)]
    return EmbeddedTask(
        train_images=train_images,
        train_captions=captions,
        train_labels=train_labels,
        caption_labels=caption_labels,
        test_images=test_images,
        test_labels=test_labels,
        classnames=pair_classnames(),
        templates=list(PAIR_ZERO_SHOT_TEMPLATES),
        retrieval_captions=[pair_caption(c, PAIR_RETRIEVAL_PHRASING) for c in test_labels],
        name="digit-pairs",
    )
