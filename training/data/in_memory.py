"""A map-style dataset over images held in memory as uint8 arrays, with fixed captions."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["InMemoryImageText"]


class InMemoryImageText(Dataset):
    """Image-caption pairs from a uint8 array; captions are tokenized once, up front.

    Parameters
    ----------
    images : numpy.ndarray, shape (N, H, W) or (N, H, W, 3), uint8
        Grey images are converted to RGB.
    captions : sequence of str, length N
    transform : callable
        ``PIL.Image -> torch.Tensor (3, H', W')``.
    tokenizer : callable
        ``list[str] -> torch.LongTensor (N, L)``.
    prefix : str
        Items are named ``"{prefix}[i]"`` in error messages.

    Notes
    -----
    Items are ``(image (3, H', W'), tokens (L,))``, or ``None`` when a caption is empty.
    """

    def __init__(
        self,
        images: np.ndarray,
        captions: Sequence[str],
        transform: Callable,
        tokenizer: Callable,
        *,
        prefix: str = "item",
    ):
        if len(images) != len(captions):
            raise ValueError(f"got {len(images)} images but {len(captions)} captions")
        self.images = np.ascontiguousarray(images, dtype=np.uint8)
        self.captions = list(captions)
        self.transform = transform
        self.tokens = tokenizer(self.captions) if self.captions else torch.zeros(0, 1, dtype=torch.long)
        self.prefix = prefix

    def __len__(self) -> int:
        return len(self.captions)

    def source(self, index: int) -> str:
        """Name of item ``index`` for error messages."""
        return f"{self.prefix}[{index}]"

    def pil_image(self, index: int) -> Image.Image:
        """Item ``index`` as an RGB ``PIL.Image``."""
        return Image.fromarray(self.images[index]).convert("RGB")

    def __getitem__(self, index: int):
        if not self.captions[index].strip():
            return None
        return self.transform(self.pil_image(index)), self.tokens[index]

