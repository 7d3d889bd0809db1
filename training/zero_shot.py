"""Zero-shot classification and image-text retrieval scored with the model's own geometry.

Class embeddings live on the model's manifold: shape ``(C, k, d)``, the template average taken per
token and projected back with ``model.similarity.project`` (per-token renormalization on OB(d, k)).
Logits are ``model.temperature(model.similarity.pairwise(...))`` (plus ``model.logit_bias`` for the
sigmoid objective): no hard-coded 100x scale.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager, Iterable, Optional, Sequence, Union

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
#: a zero-argument factory of the context each forward pass runs in (e.g. ``torch.autocast``)
Autocast = Callable[[], ContextManager]


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


def _encode(encode, batches: Iterable[torch.Tensor], device: torch.device, autocast: Autocast) -> torch.Tensor:
    parts = []
    for batch in batches:
        with autocast():
            parts.append(encode(batch.to(device)).float())
    return torch.cat(parts)


def encode_images(model, images: ImageSource, *, batch_size: int = 256,
                  autocast: Autocast = nullcontext) -> torch.Tensor:
    """Projected image features of a tensor (N, 3, H, W) or a loader, in eval mode.

    Each batch runs inside ``autocast()``; the features come back as float32, shape (N, k, d).
    """
    with _EvalMode(model):
        return _encode(model.encode_image, _batches(images, batch_size), _device(model), autocast)


def encode_texts(model, tokens: torch.Tensor, *, batch_size: int = 256,
                 autocast: Autocast = nullcontext) -> torch.Tensor:
    """Projected text features of token ids (N, L), in eval mode: float32, shape (N, k, d).

    Each batch runs inside ``autocast()``. A multi-token model's batches are trimmed on the CPU first
    (``model.trim_text``, exact), so that a GPU tower runs only the positions it needs without a sync.
    """
    batches = tokens.split(batch_size)
    if hasattr(model, "trim_text") and tokens.device.type == "cpu":
        batches = [model.trim_text(batch) for batch in batches]
    with _EvalMode(model):
        return _encode(model.encode_text, batches, _device(model), autocast)


def _fill(template: Template, classname: str) -> str:
    return template(classname) if callable(template) else template.format(classname)


def build_zero_shot_classifier(
    model,
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[Template],
    *,
    batch_size: int = 256,
    autocast: Autocast = nullcontext,
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
    autocast : callable, keyword-only
        Factory of the context each forward pass runs in (default: none).

    Returns
    -------
    torch.Tensor, shape (C, k, d)
        Per class, the mean over templates of the projected prompt features, taken token by token, then
        projected again with ``model.similarity.project`` (per token on OB; the whole vector for cosine).
    """
    if not classnames or not templates:
        raise ValueError(f"`classnames` and `templates` must be non-empty, got {len(classnames)} and {len(templates)}")
    prompts = [_fill(template, name) for name in classnames for template in templates]
    features = encode_texts(model, tokenizer(prompts), batch_size=batch_size, autocast=autocast)  # (C * T, k, d)
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
    autocast: Autocast = nullcontext,
) -> dict[str, float]:
    """Top-1 and top-5 zero-shot accuracy.

    Parameters
    ----------
    images : torch.Tensor (N, 3, H, W) or iterable of batches
        Images, or a loader yielding image batches (or ``(images, ...)`` tuples), N images in all.
    labels : torch.Tensor, shape (N,)
        Class indices into ``classifier``.
    classifier : torch.Tensor, shape (C, k, d)
    batch_size : int, keyword-only
    autocast : callable, keyword-only
        Factory of the context each image batch is encoded in (default: none); logits are float32.

    Returns
    -------
    dict
        ``{"top1": float, "top5": float}`` in [0, 1]; top-5 is top-min(5, C).
    """
    with _EvalMode(model):
        features = encode_images(model, images, batch_size=batch_size, autocast=autocast)
        logits = zero_shot_logits(model, features, classifier.float())
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
    labels: Optional[torch.Tensor] = None,
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
    labels : torch.Tensor, shape (Ni,), optional, keyword-only
        Class of each image; caption j has the class of image ``text_to_image[j]``. When given, the
        class-level recalls are reported as well: a retrieved item is correct when its class is the
        query's (on class-coded captions, where every caption of a class is the same sentence,
        index-exact recall has a ceiling that class-level recall does not).
    ks : sequence of int, keyword-only
    chunk_size : int, keyword-only
        Image rows scored at a time (the (Ni, Nt) matrix is never held whole).

    Returns
    -------
    dict
        ``"image_to_text_R@K"`` (an image counts if any of its captions is in its top K) and
        ``"text_to_image_R@K"``, in [0, 1]; with ``labels`` also ``"image_to_text_class_R@K"`` and
        ``"text_to_image_class_R@K"``. Ties are ranked in the query's favour: a query counts when
        fewer than K items score strictly above its best correct item, so equal scores never depend
        on sort order.
    """
    n_images, n_texts = image_features.shape[0], text_features.shape[0]
    if text_to_image is None:
        if n_images != n_texts:
            raise ValueError(f"{n_images} images and {n_texts} captions: pass `text_to_image` (Nt,)")
        text_to_image = torch.arange(n_texts)
    owner = text_to_image.to(image_features.device)
    keys = {"": (torch.arange(n_images, device=owner.device), owner)}
    if labels is not None:
        if labels.shape != (n_images,):
            raise ValueError(f"`labels` must have shape ({n_images},) (one class per image), got {tuple(labels.shape)}")
        labels = labels.to(owner.device)
        keys["class_"] = (labels, labels[owner])
    out = {}
    for prefix, (image_keys, text_keys) in keys.items():
        image_rank, text_rank = _retrieval_ranks(model, image_features, text_features, image_keys, text_keys,
                                                 chunk_size)
        out.update({f"image_to_text_{prefix}R@{k}": (image_rank < k).float().mean().item() for k in ks})
        out.update({f"text_to_image_{prefix}R@{k}": (text_rank < k).float().mean().item() for k in ks})
    return out


@torch.no_grad()
def _retrieval_ranks(model, image_features, text_features, image_keys, text_keys, chunk_size):
    """Per query, how many items score strictly above its best correct item (correct: equal keys).

    Returns ``(image_rank (Ni,), text_rank (Nt,))``; a query without any correct item gets a rank no K
    reaches.
    """
    n_images, n_texts = image_features.shape[0], text_features.shape[0]
    never = torch.iinfo(torch.long).max
    image_rank = torch.empty(n_images, dtype=torch.long, device=image_features.device)
    positive = torch.full((n_texts,), float("-inf"), device=image_features.device)  # best correct image
    for start in range(0, n_images, chunk_size):
        scores = model.similarity.pairwise(image_features[start : start + chunk_size], text_features).float()
        correct = image_keys[start : start + scores.shape[0], None] == text_keys[None, :]  # (chunk, Nt)
        masked = scores.masked_fill(~correct, float("-inf"))
        best = masked.max(dim=1).values
        rank = (scores > best[:, None]).sum(dim=1)
        image_rank[start : start + scores.shape[0]] = rank.masked_fill(best == float("-inf"), never)
        positive = torch.maximum(positive, masked.max(dim=0).values)
    text_rank = torch.zeros(n_texts, dtype=torch.long, device=image_features.device)
    for start in range(0, n_images, chunk_size):
        scores = model.similarity.pairwise(image_features[start : start + chunk_size], text_features).float()
        text_rank += (scores > positive[None, :]).sum(dim=0)
    return image_rank, text_rank.masked_fill(positive == float("-inf"), never)
