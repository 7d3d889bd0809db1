"""Default image transforms and tokenizer, from open_clip (for tests and scripts).

The training code receives its transforms from the model side; this helper builds equivalent
ones without a model: ``open_clip.transform.image_transform`` (train: random resized crop with
scale (0.9, 1.0), val: resize + centre crop; both normalized with the OpenAI CLIP mean/std) and
open_clip's BPE ``SimpleTokenizer`` (vocabulary shipped in the package; works offline).
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

__all__ = ["make_transforms"]


def make_transforms(
    image_size: int = 32,
    *,
    context_length: int = 16,
    mean: Optional[Tuple[float, ...]] = None,
    std: Optional[Tuple[float, ...]] = None,
) -> Tuple[Callable, Callable, Callable]:
    """Return ``(preprocess_train, preprocess_val, tokenizer)``.

    Returns
    -------
    preprocess_train, preprocess_val : callable
        ``PIL.Image -> torch.Tensor (3, image_size, image_size)``, float32.
    tokenizer : callable
        ``list[str] -> torch.LongTensor (N, context_length)``.
    """
    from open_clip.tokenizer import SimpleTokenizer
    from open_clip.transform import image_transform

    train = image_transform(image_size, is_train=True, mean=mean, std=std)
    val = image_transform(image_size, is_train=False, mean=mean, std=std)
    return train, val, SimpleTokenizer(context_length=context_length)
