"""The two rules for zero-shot class prototypes: the model's own geometry, or clip_benchmark's whole vector.

==============  =================================================================================================
rule            prototype of a class and score of an image against it
==============  =================================================================================================
``geometry``    ours, the default: the mean over templates of the projected prompt features taken in the model's
                geometry (:func:`manifold_align.clip.build_zero_shot_classifier`: per token on OB(d, k),
                renormalized; the whole vector for ``cosine``), shape (C, k, d); scored with the model's
                geometry and temperature (:func:`manifold_align.clip.zero_shot_logits`).
``whole``       clip_benchmark's (and open_clip's trainer's): each prompt's features flattened to one ``k * d``
                vector and L2-normalized, the mean over templates L2-normalized again; scored by the dot product
                of the image's flattened, L2-normalized features with it (clip_benchmark multiplies it by 100,
                which ranks the same). On OB(d, k) this averages the whole vector, not each token.
==============  =================================================================================================

For ``cosine`` the two rules give the same prototypes. For ``oblique`` they differ (per-token versus
whole-vector renormalization), which is why clip_benchmark's own numbers on an oblique model can differ from
ours by an image or two; ``eval.prototype=whole`` gives clip_benchmark's number from our evaluation.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .zero_shot import Autocast, Template, _fill, build_zero_shot_classifier, encode_texts, zero_shot_logits

__all__ = ["PROTOTYPE_RULES", "class_prototypes", "prototype_logits", "whole_vector_classifier"]

#: the accepted ``rule`` values, the default first
PROTOTYPE_RULES = ("geometry", "whole")


def _check_rule(rule: str) -> None:
    if rule not in PROTOTYPE_RULES:
        raise ValueError(f"`rule` = {rule!r}; accepted: {', '.join(PROTOTYPE_RULES)}")


def whole_vector_classifier(
    model,
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[Template],
    *,
    batch_size: int = 256,
    autocast: Autocast = nullcontext,
) -> torch.Tensor:
    """clip_benchmark's class prototypes (``zero_shot_classifier``) of our model's projected features.

    Returns
    -------
    torch.Tensor, shape (C, k, d)
        Per class ``normalize(mean_t(normalize(flatten(encode_text(prompt_t)))))``, reshaped back to (C, k, d):
        unit norm as a whole ``k * d`` vector.
    """
    if not classnames or not templates:
        raise ValueError(f"`classnames` and `templates` must be non-empty, got {len(classnames)} and {len(templates)}")
    prompts = [_fill(template, name) for name in classnames for template in templates]
    features = encode_texts(model, tokenizer(prompts), batch_size=batch_size, autocast=autocast)  # (C * T, k, d)
    flat = F.normalize(features.flatten(1), dim=-1).view(len(classnames), len(templates), -1)
    return F.normalize(flat.mean(dim=1), dim=-1).view(len(classnames), *features.shape[1:])


def class_prototypes(model, tokenizer, classnames: Sequence[str], templates: Sequence[Template], *,
                     rule: str = "geometry", batch_size: int = 256, autocast: Autocast = nullcontext) -> torch.Tensor:
    """Class prototypes (C, k, d) by ``rule`` (``"geometry"`` or ``"whole"``, see the module's table)."""
    _check_rule(rule)
    build = build_zero_shot_classifier if rule == "geometry" else whole_vector_classifier
    return build(model, tokenizer, classnames, templates, batch_size=batch_size, autocast=autocast)


def prototype_logits(model, image_features: torch.Tensor, classifier: torch.Tensor, *,
                     rule: str = "geometry") -> torch.Tensor:
    """Scores (B, C) of projected image features (B, k, d) against prototypes (C, k, d) made by ``rule``.

    ``geometry``: :func:`manifold_align.clip.zero_shot_logits` (the model's geometry and temperature);
    ``whole``: the cosine of the flattened vectors, in [-1, 1] (clip_benchmark's logits are 100 times it).
    """
    _check_rule(rule)
    if rule == "geometry":
        return zero_shot_logits(model, image_features, classifier)
    classifier = classifier.to(image_features.device)
    return F.normalize(image_features.flatten(1), dim=-1) @ classifier.flatten(1).T
