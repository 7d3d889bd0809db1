"""Zero-shot classification scored with the model's own geometry, and the encoders it and retrieval use.

Class embeddings are points of the model's geometry: shape ``(C, k, d)``, the template average taken by
``model.geometry.mean`` (per token: renormalized on OB(d, k), in the tangent space at the origin on the
hyperboloids, plain in Euclidean space). Logits are ``model.geometry.logits(...)`` with the model's temperature
scale (plus ``model.logit_bias`` for the sigmoid objective): no hard-coded 100x scale.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from typing import Callable, ContextManager, Iterable, Sequence, Union

import torch

from .tokenizer import trim_padding

__all__ = [
    "build_zero_shot_classifier",
    "classification_metrics",
    "encode_images",
    "encode_texts",
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

    Each batch runs inside ``autocast()``. CPU batches lose their trailing padding first
    (:func:`manifold_align.clip.trim_padding`, exact), so that a GPU tower runs only the positions it needs
    without a sync.
    """
    batches = tokens.split(batch_size)
    if tokens.device.type == "cpu":
        batches = [trim_padding(batch) for batch in batches]
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
        ``tokenizer(list_of_str)`` -> LongTensor (N, L), e.g. :func:`manifold_align.clip.get_tokenizer`.
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
        Per class, the mean over templates of the projected prompt features,
        ``model.geometry.mean(..., modality="text")``: per token on OB, renormalized (the whole vector for
        cosine); per token in the tangent space at the origin for ``lorentz``; plain for ``euclidean``.
    """
    if not classnames or not templates:
        raise ValueError(f"`classnames` and `templates` must be non-empty, got {len(classnames)} and {len(templates)}")
    prompts = [_fill(template, name) for name in classnames for template in templates]
    features = encode_texts(model, tokenizer(prompts), batch_size=batch_size, autocast=autocast)  # (C * T, k, d)
    per_template = features.view(len(classnames), len(templates), *features.shape[1:])
    with torch.no_grad():
        return model.geometry.mean(per_template, dim=1, modality="text")


def zero_shot_logits(model, image_features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """Logits of images against classes: ``model.geometry.logits`` at the model's temperature (and bias).

    Parameters
    ----------
    image_features : torch.Tensor, shape (B, k, d)
        Projected (``model.encode_image``).
    classifier : torch.Tensor, shape (C, k, d)
        From :func:`build_zero_shot_classifier`.

    Returns
    -------
    torch.Tensor, shape (B, C)
        ``model.geometry.logits(image_features, classifier, model.temperature.scale(), model.logit_bias)``.
    """
    return model.geometry.logits(image_features, classifier.to(image_features.device), model.temperature.scale(),
                                 getattr(model, "logit_bias", None))


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
        ``{"top1", "top5", "mean_per_class_recall"}`` in [0, 1] (:func:`classification_metrics`).
    """
    with _EvalMode(model):
        features = encode_images(model, images, batch_size=batch_size, autocast=autocast)
        logits = zero_shot_logits(model, features, classifier.float())
    return classification_metrics(logits, labels)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1, top-5 and mean per-class recall of class scores, as clip_benchmark reports them.

    Parameters
    ----------
    logits : torch.Tensor, shape (N, C)
    labels : torch.Tensor, shape (N,), long in [0, C)

    Returns
    -------
    dict
        ``top1``, ``top5`` (top-min(5, C); clip_benchmark reports NaN for C < 5) and
        ``mean_per_class_recall`` (scikit-learn's ``balanced_accuracy_score`` of the top-1 predictions:
        the mean over the classes present in ``labels`` of the share of their images predicted right),
        fractions in [0, 1].
    """
    labels = labels.to(logits.device)
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"`labels` has {labels.shape[0]} entries for {logits.shape[0]} images")
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():
        # predictions of classes without images are wrong answers, not a problem of the metric
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        recall = balanced_accuracy_score(labels.cpu().numpy(), top[:, 0].cpu().numpy())
    n = labels.shape[0]  # counts over n, as clip_benchmark divides them (exact in float64, not a float32 mean)
    return {"top1": int(hits[:, 0].sum()) / n, "top5": int(hits.any(dim=1).sum()) / n,
            "mean_per_class_recall": float(recall)}
