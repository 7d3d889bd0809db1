"""Held-out evaluation of a model: zero-shot classification and image-text retrieval.

The scoring itself is :mod:`manifold_align.clip`'s; this module feeds it a run's held-out data (a
``manifold_align_train.data`` bundle), evaluates checkpoints and formats the metrics for people.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from manifold_align.clip import (
    build_zero_shot_classifier,
    encode_images,
    encode_texts,
    retrieval_metrics,
    zero_shot_accuracy,
)

from .builders import autocast_for, build_data_bundle, build_model, configure_torch
from .config import RunConfig
from .data.batch import all_bad_error
from .data.held_out import held_out_batches
from .distributed_env import init_distributed

__all__ = ["evaluate", "evaluate_checkpoint", "format_metrics"]

RECALL_KS = (1, 5, 10)


def evaluate(model, tokenizer, data, *, batch_size: int, workers: int = 0,
             autocast=nullcontext) -> dict[str, float]:
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
        Its ``zero_shot`` (ZeroShotTask or None) and ``retrieval`` (RetrievalTask or None); the bad pairs
        met are left out and named in ``data.retrieval.bad``.
    batch_size : int, keyword-only
        Images or captions encoded per forward pass, and read per batch.
    workers : int, keyword-only
        Loader worker processes reading the held-out data (0: this process).
    autocast : callable, keyword-only
        Factory of the context each forward pass runs in (:func:`manifold_align_train.builders.autocast_for`).

    Returns
    -------
    dict
        ``zero_shot_top1``, ``zero_shot_top5`` (fractions in [0, 1]) when ``data.zero_shot`` exists;
        ``image_to_text_R@{1,5,10}``, ``text_to_image_R@{1,5,10}`` when ``data.retrieval`` exists, and
        the class-level ``image_to_text_class_R@K``, ``text_to_image_class_R@K`` when its pairs have
        ``labels``; ``zero_shot_images`` and ``retrieval_pairs``: how many were scored.
    """
    metrics: dict[str, float] = {}
    if data.zero_shot is not None:
        metrics.update(_zero_shot(model, tokenizer, data.zero_shot, batch_size, workers, autocast))
    if data.retrieval is not None:
        metrics.update(_retrieval(model, data.retrieval, batch_size, workers, autocast))
    return metrics


def _zero_shot(model, tokenizer, task, batch_size: int, workers: int, autocast) -> dict[str, float]:
    classifier = build_zero_shot_classifier(model, tokenizer, task.classnames, task.templates,
                                            batch_size=batch_size, autocast=autocast)
    images = (batch.images for batch in held_out_batches(task.images, batch_size, workers=workers))
    accuracy = zero_shot_accuracy(model, images, task.labels, classifier, batch_size=batch_size,
                                  autocast=autocast)
    return {"zero_shot_top1": accuracy["top1"], "zero_shot_top5": accuracy["top5"],
            "zero_shot_images": len(task.labels)}


def _retrieval(model, task, batch_size: int, workers: int, autocast) -> dict[str, float]:
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
        raise all_bad_error("all held-out pairs of `data.val_data`", task.bad)
    labels = None if task.labels is None else task.labels[torch.cat(index)]
    image_features, text_features = torch.cat(image_parts), torch.cat(text_parts)
    with torch.no_grad():
        metrics = retrieval_metrics(model, image_features, text_features, labels=labels, ks=RECALL_KS)
    return {**metrics, "retrieval_pairs": len(image_features)}


def evaluate_checkpoint(cfg: RunConfig, state: dict[str, Any]) -> dict[str, float]:
    """Evaluate the model weights of a checkpoint on its configuration's held-out data."""
    env = init_distributed(cfg.train.device)
    if env.distributed:
        raise RuntimeError("`manifold-align eval` runs in one process; launch it without torchrun")
    restore_torch = configure_torch(cfg, env)
    try:
        model, tokenizer, transforms = build_model(cfg, env.device)
        model.load_state_dict(state["model"])
        data = build_data_bundle(cfg, env, tokenizer, transforms)
        return evaluate(model, tokenizer, data, batch_size=cfg.eval.batch_size, workers=cfg.data.workers,
                        autocast=autocast_for(cfg.train.precision, env.device))
    finally:
        restore_torch()


def format_metrics(metrics: dict[str, float]) -> str:
    """Evaluation metrics as short human-readable lines (percentages)."""
    lines = []
    if "zero_shot_top1" in metrics:
        scored = f" ({metrics['zero_shot_images']} images)" if "zero_shot_images" in metrics else ""
        lines.append(f"  zero-shot top-1 {100 * metrics['zero_shot_top1']:.1f}%   "
                     f"top-5 {100 * metrics['zero_shot_top5']:.1f}%{scored}")
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
        lines.append(f"  retrieval scored on {metrics['retrieval_pairs']} held-out pairs{why}")
    return "\n".join(lines)
