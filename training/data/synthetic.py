"""A tiny synthetic task for smoke tests: coloured shapes on a noisy dark background.

Nine classes, (colour, shape) in {red, green, blue} x {square, circle, triangle}; captions like
``"a red circle"`` are a learnable function of the image. Everything is drawn from the seed.
"""

from __future__ import annotations

from typing import List

import numpy as np
from PIL import Image, ImageDraw

from .noise import noisy_caption_labels
from .tasks import EmbeddedTask

__all__ = ["COLORS", "SHAPES", "SYNTHETIC_PHRASINGS", "SYNTHETIC_TEMPLATES", "make_synthetic"]

COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230)}
SHAPES = ("square", "circle", "triangle")

SYNTHETIC_PHRASINGS = ("a {c} {s}", "{c} {s} on a dark background", "one {s}, coloured {c}")
SYNTHETIC_RETRIEVAL_PHRASING = "the {s} is {c}"
SYNTHETIC_TEMPLATES = ["an image of a {}.", "{}"]


def _classnames() -> List[str]:
    return [f"{c} {s}" for c in COLORS for s in SHAPES]


def _caption(label: int, phrasing: str) -> str:
    c, s = divmod(int(label), len(SHAPES))
    return phrasing.format(c=list(COLORS)[c], s=SHAPES[s])


def _render(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size, 3) uint8 image of class ``label``."""
    c, s = divmod(int(label), len(SHAPES))
    background = rng.integers(0, 40, size=(size, size, 3), dtype=np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    extent = int(rng.integers(size // 3, size // 2 + 1))
    x0, y0 = (int(v) for v in rng.integers(0, size - extent, size=2))
    box = (x0, y0, x0 + extent, y0 + extent)
    color = list(COLORS.values())[c]
    if SHAPES[s] == "square":
        draw.rectangle(box, fill=color)
    elif SHAPES[s] == "circle":
        draw.ellipse(box, fill=color)
    else:
        draw.polygon([(x0, y0 + extent), (x0 + extent, y0 + extent), (x0 + extent // 2, y0)], fill=color)
    return np.asarray(image)


def make_synthetic(
    image_size: int = 32,
    *,
    seed: int = 0,
    n_train: int = 512,
    n_test: int = 90,
    caption_noise: float = 0.0,
) -> EmbeddedTask:
    """Build the synthetic task: ``n_train`` + ``n_test`` images, 9 balanced-at-random classes.

    Returns
    -------
    EmbeddedTask
        ``train_images`` (n_train, S, S, 3) uint8, captions from :data:`SYNTHETIC_PHRASINGS`.
    """
    rng = np.random.default_rng([seed, 4])
    n_classes = len(COLORS) * len(SHAPES)
    train_labels = rng.integers(0, n_classes, size=n_train)
    test_labels = np.arange(n_test) % n_classes
    train_images = np.stack([_render(c, image_size, rng) for c in train_labels])
    test_images = np.stack([_render(c, image_size, rng) for c in test_labels])
    caption_labels = noisy_caption_labels(train_labels, caption_noise, seed, n_classes)
    phrasing = rng.integers(0, len(SYNTHETIC_PHRASINGS), size=n_train)
    return EmbeddedTask(
        train_images=train_images,
        train_captions=[_caption(c, SYNTHETIC_PHRASINGS[p]) for c, p in zip(caption_labels, phrasing)],
        train_labels=train_labels.astype(np.int64),
        caption_labels=caption_labels,
        test_images=test_images,
        test_labels=test_labels.astype(np.int64),
        classnames=_classnames(),
        templates=list(SYNTHETIC_TEMPLATES),
        retrieval_captions=[_caption(c, SYNTHETIC_RETRIEVAL_PHRASING) for c in test_labels],
        name="synthetic",
    )
