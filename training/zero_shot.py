"""Zero-shot classification and image-text retrieval scored with the model's own geometry.

Class embeddings live on the model's manifold: shape ``(C, k, d)``, the template average taken per
token and projected back with ``model.similarity.project`` (per-token renormalization on OB(d, k)).
Logits are ``model.temperature(model.similarity.pairwise(...))`` (plus ``model.logit_bias`` for the
sigmoid objective): no hard-coded 100x scale.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence, Union

import torch

__all__ = [
    "build_zero_shot_classifier",
    "encode_images",
    "encode_texts",
    "retrieval_metrics",
    "zero_shot_accuracy",
    "zero_shot_logits",
]

Template = Union[str, Callable[[str], str]]
ImageSource = Union[torch.Tensor, Iterable]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batches(images: ImageSource, batch_size: int) -> Iterable[torch.Tensor]:
    """A tensor split in batches, or a loader's batches (``(images, ...)`` tuples take the first item)."""
    if isinstance(images, torch.Tensor):
        yield from images.split(batch_size)
        return
    for batch in images:
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        elif hasattr(batch, "images"):
            batch = batch.images
        yield batch


class _EvalMode:
    """Context: eval mode and no grad, the model's mode restored after."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.was_training = model, model.training
        self.no_grad = torch.no_grad()

    def __enter__(self):
        self.model.eval()
        self.no_grad.__enter__()

    def __exit__(self, *exc):
        self.no_grad.__exit__(*exc)
        self.model.train(self.was_training)


def encode_images(model, images: ImageSource, *, batch_size: int = 256) -> torch.Tensor:
    """Projected image features of a tensor (N, 3, H, W) or a loader, in eval mode: (N, k, d)."""
    device = _device(model)
    with _EvalMode(model):
        return torch.cat([model.encode_image(batch.to(device)) for batch in _batches(images, batch_size)])


def encode_texts(model, tokens: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """Projected text features of token ids (N, L), in eval mode: (N, k, d)."""
    device = _device(model)
    with _EvalMode(model):
        return torch.cat([model.encode_text(batch.to(device)) for batch in tokens.split(batch_size)])


def _fill(template: Template, classname: str) -> str:
    return template(classname) if callable(template) else template.format(classname)


def build_zero_shot_classifier(
    model,
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[Template],
    *,
    batch_size: int = 256,
) -> torch.Tensor:
    """Class embeddings on the model's manifold.

    Parameters
    ----------
    model : MultiTokenCLIP
    tokenizer : callable
        ``tokenizer(list_of_str)`` -> LongTensor (N, L), e.g. :func:`training.model.get_tokenizer`.
    classnames : sequence of str, length C
    templates : sequence of str or callable, length T
        Format strings with ``"{}"`` or callables ``classname -> prompt``.
    batch_size : int, keyword-only
        Prompts encoded per forward pass.

    Returns
    -------
    torch.Tensor, shape (C, k, d)
        Per class, the mean over templates of the projected prompt features, taken token by token, then
        projected again with ``model.similarity.project`` (per token on OB; the whole vector for cosine).
    """
    if not classnames or not templates:
        raise ValueError(f"`classnames` and `templates` must be non-empty, got {len(classnames)} and {len(templates)}")
    prompts = [_fill(template, name) for name in classnames for template in templates]
    features = encode_texts(model, tokenizer(prompts), batch_size=batch_size)  # (C * T, k, d)
    mean = features.view(len(classnames), len(templates), *features.shape[1:]).mean(dim=1)
    return model.similarity.project(mean).reshape(mean.shape)


def zero_shot_logits(model, image_features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """Scaled similarities of images to classes.

    Parameters
    ----------
    image_features : torch.Tensor, shape (B, k, d)
        Projected (``model.encode_image``).
    classifier : torch.Tensor, shape (C, k, d)
        From :func:`build_zero_shot_classifier`.

    Returns
    -------
    torch.Tensor, shape (B, C)
        ``model.temperature(model.similarity.pairwise(image_features, classifier))`` (+ ``logit_bias``).
    """
    logits = model.temperature(model.similarity.pairwise(image_features, classifier.to(image_features.device)))
    if getattr(model, "logit_bias", None) is not None:
        logits = logits + model.logit_bias
    return logits


def zero_shot_accuracy(
    model,
    images: ImageSource,
    labels: torch.Tensor,
    classifier: torch.Tensor,
    *,
    batch_size: int = 256,
) -> dict[str, float]:
    """Top-1 and top-5 zero-shot accuracy.

    Parameters
    ----------
    images : torch.Tensor (N, 3, H, W) or iterable of batches
        Images, or a loader yielding image batches (or ``(images, ...)`` tuples), N images in all.
    labels : torch.Tensor, shape (N,)
        Class indices into ``classifier``.
    classifier : torch.Tensor, shape (C, k, d)

    Returns
    -------
    dict
        ``{"top1": float, "top5": float}`` in [0, 1]; top-5 is top-min(5, C).
    """
    with _EvalMode(model):
        logits = zero_shot_logits(model, encode_images(model, images, batch_size=batch_size), classifier)
    labels = labels.to(logits.device)
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"`labels` has {labels.shape[0]} entries for {logits.shape[0]} images")
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return {"top1": hits[:, 0].float().mean().item(), "top5": hits.any(dim=1).float().mean().item()}


def retrieval_metrics(
    model,
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    *,
    text_to_image: Optional[torch.Tensor] = None,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Recall@K for image->text and text->image retrieval, ranked by ``model.similarity``.

    Parameters
    ----------
    image_features : torch.Tensor, shape (Ni, k, d)
        Projected.
    text_features : torch.Tensor, shape (Nt, k, d)
        Projected.
    text_to_image : torch.Tensor, shape (Nt,), optional, keyword-only
        Image index of each caption (several captions per image). Default: caption i belongs to image i
        (needs Nt == Ni).
    ks : sequence of int, keyword-only
    chunk_size : int, keyword-only
        Image rows scored at a time (the (Ni, Nt) matrix is never held whole).

    Returns
    -------
    dict
        ``"image_to_text_R@K"`` (an image counts if any of its captions is in its top K) and
        ``"text_to_image_R@K"``, in [0, 1]. Ties are ranked in the item's favour.
    """
    n_images, n_texts = image_features.shape[0], text_features.shape[0]
    if text_to_image is None:
        if n_images != n_texts:
            raise ValueError(f"{n_images} images and {n_texts} captions: pass `text_to_image` (Nt,)")
        text_to_image = torch.arange(n_texts)
    owner = text_to_image.to(image_features.device)
    image_rank = torch.empty(n_images, dtype=torch.long, device=image_features.device)
    positive = torch.empty(n_texts, device=image_features.device)  # score of each caption's own image
    greater = torch.zeros(n_texts, dtype=torch.long, device=image_features.device)
    with torch.no_grad():
        for start in range(0, n_images, chunk_size):
            scores = model.similarity.pairwise(image_features[start : start + chunk_size], text_features)
            rows = torch.arange(start, start + scores.shape[0], device=scores.device)
            correct = owner[None, :] == rows[:, None]  # (chunk, Nt)
            best = scores.masked_fill(~correct, float("-inf")).max(dim=1).values
            image_rank[start : start + scores.shape[0]] = (scores > best[:, None]).sum(dim=1)
            mine = (owner >= start) & (owner < start + scores.shape[0])
            positive[mine] = scores[owner[mine] - start, mine.nonzero().squeeze(1)]
        for start in range(0, n_images, chunk_size):
            scores = model.similarity.pairwise(image_features[start : start + chunk_size], text_features)
            greater += (scores > positive[None, :]).sum(dim=0)
    out = {}
    for k in ks:
        out[f"image_to_text_R@{k}"] = (image_rank < k).float().mean().item()
    for k in ks:
        out[f"text_to_image_R@{k}"] = (greater < k).float().mean().item()
    return out
