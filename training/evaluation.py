"""Held-out evaluation of a model: zero-shot classification and image-text retrieval.

The scoring itself is :mod:`manifold_align.clip`'s; this module feeds it a run's held-out data (a
``manifold_align_train.data`` bundle), evaluates checkpoints and formats the metrics for people.
"""

from __future__ import annotations

from contextlib import nullcontext
from types import SimpleNamespace
from typing import Any, Optional

import torch

from manifold_align.clip import (
    class_prototypes,
    classification_metrics,
    encode_images,
    encode_texts,
    prototype_logits,
    retrieval_metrics,
)

from .builders import autocast_for, build_data_bundle, build_model, configure_torch
from .config import RunConfig
from .data.batch import all_bad_error
from .data.held_out import held_out_batches
from .data.tasks import RetrievalTask
from .distributed_env import init_distributed
from .eval_sets import build_eval_sets

__all__ = ["bad_items", "evaluate", "evaluate_checkpoint", "format_metrics"]

RECALL_KS = (1, 5, 10)


def evaluate(model, tokenizer, data, *, batch_size: int, workers: int = 0,
             autocast=nullcontext, prototype: str = "geometry", own_data: bool = True) -> dict[str, float]:
    """Zero-shot classification and image-text retrieval on the held-out data of ``data``, streamed.

    The held-out images are read ``batch_size`` at a time through a DataLoader and only their features,
    shape (N, k, d), are kept: memory is bounded by the batch size, not by the size of the held-out set.
    Runs in this process alone (no collective): under torchrun the trainer calls it on rank 0 only.

    Parameters
    ----------
    model : MultiTokenCLIP
        Evaluated in eval mode; its training mode is restored after.
    tokenizer : callable
    data : manifold_align_train.data.DataBundle
        Its ``zero_shot`` (ZeroShotTask or None) and ``retrieval`` (RetrievalTask or None), and its named
        ``eval_sets`` (:mod:`manifold_align_train.eval_sets`); the bad images and pairs met are left out and
        named in each task's ``bad``.
    batch_size : int, keyword-only
        Images or captions encoded per forward pass, and read per batch.
    workers : int, keyword-only
        Loader worker processes reading the held-out data (0: this process).
    autocast : callable, keyword-only
        Factory of the context each forward pass runs in (:func:`manifold_align_train.builders.autocast_for`).
    prototype : str, keyword-only
        The class-prototype rule, ``"geometry"`` or ``"whole"`` (:mod:`manifold_align.clip.prototypes`).
    own_data : bool, keyword-only
        Score ``data.zero_shot`` and ``data.retrieval``; False scores the named sets alone.

    Returns
    -------
    dict
        ``zero_shot_top1``, ``zero_shot_top5``, ``zero_shot_mean_per_class_recall`` (fractions in [0, 1],
        as clip_benchmark computes them) when ``data.zero_shot`` exists;
        ``image_to_text_R@{1,5,10}``, ``text_to_image_R@{1,5,10}`` when ``data.retrieval`` exists, and
        the class-level ``image_to_text_class_R@K``, ``text_to_image_class_R@K`` when its pairs have
        ``labels``; ``zero_shot_images`` and ``retrieval_pairs``: how many were scored, and
        ``zero_shot_bad_images``: how many were left out. Each named set adds its own under ``NAME/``
        (``NAME/zero_shot_top1``, ``NAME/text_to_image_R@1``, ...).
    """
    metrics: dict[str, float] = {}
    if own_data and data.zero_shot is not None:
        metrics.update(_zero_shot(model, tokenizer, data.zero_shot, batch_size, workers, autocast, prototype))
    if own_data and data.retrieval is not None:
        metrics.update(_retrieval(model, data.retrieval, batch_size, workers, autocast))
    for eval_set in getattr(data, "eval_sets", ()):
        if isinstance(eval_set.task, RetrievalTask):
            found = _retrieval(model, eval_set.task, batch_size, workers, autocast, what=eval_set.name)
        else:
            found = _zero_shot(model, tokenizer, eval_set.task, batch_size, workers, autocast, prototype,
                               what=eval_set.name)
        metrics.update({f"{eval_set.name}/{key}": value for key, value in found.items()})
    return metrics


def _zero_shot(model, tokenizer, task, batch_size: int, workers: int, autocast, prototype: str,
               what: str = "the held-out images") -> dict[str, float]:
    """Top-1, top-5, mean per-class recall of ``task``; its unreadable images are left out and named in
    ``task.bad``."""
    classifier = class_prototypes(model, tokenizer, task.classnames, task.templates, rule=prototype,
                                  batch_size=batch_size, autocast=autocast)
    parts, index, bad = [], [], []
    for batch in held_out_batches(task.images, batch_size, workers=workers):
        bad.extend(batch.bad)
        if batch.images is None:
            continue
        parts.append(encode_images(model, batch.images, batch_size=batch_size, autocast=autocast))
        index.append(batch.index)
    task.bad = sorted(set(bad))
    if not parts:
        raise all_bad_error(f"all images of {what}", task.bad)
    with torch.no_grad():
        logits = prototype_logits(model, torch.cat(parts), classifier, rule=prototype)
    found = classification_metrics(logits, task.labels[torch.cat(index)])
    return {"zero_shot_top1": found["top1"], "zero_shot_top5": found["top5"],
            "zero_shot_mean_per_class_recall": found["mean_per_class_recall"],
            "zero_shot_images": len(logits), "zero_shot_bad_images": len(task.bad)}


def _retrieval(model, task, batch_size: int, workers: int, autocast,
               what: str = "the held-out pairs of `data.val_data`") -> dict[str, float]:
    image_parts, text_parts, index, bad = [], [], [], []
    for batch in held_out_batches(task.pairs, batch_size, workers=workers):
        bad.extend(batch.bad)
        if batch.images is None:
            continue
        image_parts.append(encode_images(model, batch.images, batch_size=batch_size, autocast=autocast))
        text_parts.append(encode_texts(model, batch.texts, batch_size=batch_size, autocast=autocast))
        index.append(batch.index)
    task.bad = sorted(set(bad))
    if not image_parts:
        raise all_bad_error(f"all pairs of {what}", task.bad)
    labels = None if task.labels is None else task.labels[torch.cat(index)]
    image_features, text_features = torch.cat(image_parts), torch.cat(text_parts)
    with torch.no_grad():
        metrics = retrieval_metrics(model, image_features, text_features, labels=labels, ks=RECALL_KS)
    return {**metrics, "retrieval_pairs": len(image_features), "retrieval_bad_pairs": len(task.bad)}


def evaluate_checkpoint(cfg: RunConfig, state: dict[str, Any], *, own_data: bool = True,
                        bad: Optional[dict[str, list[str]]] = None) -> dict[str, float]:
    """Evaluate the model weights of a checkpoint on its configuration's held-out data and named sets.

    ``own_data=False`` scores the named sets (``eval.datasets``) alone, without building the run's data.
    ``bad``, when given, receives the names of the bad images or pairs left out, per set (``""``: the run's own).
    """
    env = init_distributed(cfg.train.device)
    if env.distributed:
        raise RuntimeError("`manifold-align eval` runs in one process; launch it without torchrun")
    restore_torch = configure_torch(cfg, env)
    try:
        model, tokenizer, transforms = build_model(cfg, env.device)
        model.load_state_dict(state["model"])
        if own_data:
            data = build_data_bundle(cfg, env, tokenizer, transforms)
        else:
            data = SimpleNamespace(zero_shot=None, retrieval=None,
                                   eval_sets=build_eval_sets(cfg, transforms[1], tokenizer))
        metrics = evaluate(model, tokenizer, data, batch_size=cfg.eval.batch_size, workers=cfg.data.workers,
                           autocast=autocast_for(cfg.train.precision, env.device), prototype=cfg.eval.prototype,
                           own_data=own_data)
        if bad is not None:
            bad.update(bad_items(data))
        return metrics
    finally:
        restore_torch()


def bad_items(data) -> dict[str, list[str]]:
    """The bad images and pairs the last evaluation of ``data`` left out, by set (``""``: the run's own data)."""
    own = [*getattr(data.zero_shot, "bad", []), *getattr(data.retrieval, "bad", [])]
    return {"": own, **{s.name: list(s.task.bad) for s in getattr(data, "eval_sets", ())}}


def format_metrics(metrics: dict[str, float]) -> str:
    """Evaluation metrics as short human-readable lines (percentages); named sets (``NAME/...``) each under
    their name."""
    own = {key: value for key, value in metrics.items() if "/" not in key}
    lines = [_format_set(own)] if own else []
    names = dict.fromkeys(key.split("/", 1)[0] for key in metrics if "/" in key)
    for name in names:
        prefix = f"{name}/"
        lines.append(f"  {name}:")
        lines.append(_format_set({k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}, "  "))
    return "\n".join(line for line in lines if line)


def _format_set(metrics: dict[str, float], indent: str = "") -> str:
    lines = []
    if "zero_shot_top1" in metrics:
        scored = f" ({metrics['zero_shot_images']} images)" if "zero_shot_images" in metrics else ""
        left_out = metrics.get("zero_shot_bad_images", 0)
        scored += f", {left_out} unreadable left out" if left_out else ""
        recall = metrics.get("zero_shot_mean_per_class_recall")
        recall = f"   mean per-class recall {100 * recall:.1f}%" if recall is not None else ""
        lines.append(f"  zero-shot top-1 {100 * metrics['zero_shot_top1']:.1f}%   "
                     f"top-5 {100 * metrics['zero_shot_top5']:.1f}%{recall}{scored}")
    # Class-captioned held-out data (the embedded datasets) repeat each caption for every image of its class:
    # index-exact recall cannot tell those pairs apart, so only class-level recall means something there.
    class_level = any("_class_R@" in key for key in metrics)
    level, infix = (" (class-level)", "class_") if class_level else ("", "")
    for direction in ("image_to_text", "text_to_image"):
        recalls = [f"R@{k} {100 * metrics[key]:.1f}%" for k in RECALL_KS
                   if (key := f"{direction}_{infix}R@{k}") in metrics]
        if recalls:
            lines.append(f"  retrieval {direction.replace('_', ' ')}{level}: " + "  ".join(recalls))
    if "retrieval_pairs" in metrics:
        why = ("; class-level because the captions repeat per class (a caption belongs to every image of its "
               "class, so index-level R@K, kept in metrics.jsonl, has a low ceiling)") if class_level else ""
        left_out = metrics.get("retrieval_bad_pairs", 0)
        why += f"; {left_out} bad pairs left out" if left_out else ""
        lines.append(f"  retrieval scored on {metrics['retrieval_pairs']} held-out pairs{why}")
    return "\n".join(indent + line for line in lines)
