"""Image-text retrieval recalls, ranked by the model's own geometry."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

__all__ = ["retrieval_metrics"]


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
    """Recall@K for image->text and text->image retrieval, ranked by the scores of ``model.geometry`` (a positive
    scale and a bias do not change a ranking).

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
        scores = model.geometry.pairwise(image_features[start : start + chunk_size], text_features).float()
        correct = image_keys[start : start + scores.shape[0], None] == text_keys[None, :]  # (chunk, Nt)
        masked = scores.masked_fill(~correct, float("-inf"))
        best = masked.max(dim=1).values
        rank = (scores > best[:, None]).sum(dim=1)
        image_rank[start : start + scores.shape[0]] = rank.masked_fill(best == float("-inf"), never)
        positive = torch.maximum(positive, masked.max(dim=0).values)
    text_rank = torch.zeros(n_texts, dtype=torch.long, device=image_features.device)
    for start in range(0, n_images, chunk_size):
        scores = model.geometry.pairwise(image_features[start : start + chunk_size], text_features).float()
        text_rank += (scores > positive[None, :]).sum(dim=0)
    return image_rank, text_rank.masked_fill(positive == float("-inf"), never)
