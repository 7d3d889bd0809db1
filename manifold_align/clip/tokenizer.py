"""Tokenizer access and the one rule for cutting caption padding.

Captions come padded to the context length. The padding after a batch's longest caption is seen by
nothing the towers read out (causal caption attention; the ``k`` queries see positions before the
end-of-text token), so dropping it is exact and makes short captions cheap. :func:`caption_length` is
the only place that decides how much to keep; the trainer and :func:`manifold_align.clip.encode_texts`
cut their CPU batches with it before they move to a device (on a GPU tensor, reading the length would
be a host-device sync).
"""

from __future__ import annotations

import numpy as np
import open_clip
import torch

from .registry import ModelSpec, load_model_config

__all__ = ["caption_length", "get_tokenizer", "trim_padding"]


def get_tokenizer(model_name_or_cfg: ModelSpec) -> open_clip.tokenizer.SimpleTokenizer:
    """Offline BPE tokenizer (shipped with open_clip) at the config's ``context_length``.

    Returns
    -------
    open_clip.tokenizer.SimpleTokenizer
        ``tokenizer(list_of_str)`` -> LongTensor (N, context_length), padded with 0.
    """
    cfg = load_model_config(model_name_or_cfg)
    text_cfg = cfg["text_cfg"]
    if text_cfg.get("hf_tokenizer_name"):
        raise ValueError("`text_cfg.hf_tokenizer_name` needs a HuggingFace tokenizer; accepted: the BPE tokenizer")
    return open_clip.tokenizer.SimpleTokenizer(context_length=text_cfg.get("context_length", 77))


def caption_length(tokens: torch.Tensor, pad_id: int = 0) -> int:
    """Columns of ``tokens`` to keep: up to the last column that holds a non-pad id in some row.

    Every row ends with an end-of-text id (never ``pad_id``) followed by pads, so the columns dropped
    are pads after every row's end-of-text token.

    Parameters
    ----------
    tokens : torch.Tensor, shape (B, L), integer
        Token ids, B >= 1; on the CPU, where they are read through numpy without any tensor read (the
        trainer trims every batch it draws, before the batch moves to the device). On another device the
        read is a device sync.
    pad_id : int
        The tokenizer's padding id (0 for open_clip's BPE tokenizer).

    Returns
    -------
    int
        In ``[1, L]``.
    """
    if tokens.dim() != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0 or tokens.is_floating_point():
        raise ValueError(f"`tokens` must be integer token ids of shape (B, L) with B, L >= 1, got "
                         f"{tokens.dtype} of shape {tuple(tokens.shape)}")
    if tokens.device.type == "cpu":
        used = np.flatnonzero((tokens.numpy() != pad_id).any(axis=0))  # a view of the same memory
        return int(used[-1]) + 1 if used.size else 1
    used = (tokens != pad_id).any(dim=0).nonzero()
    return int(used.max()) + 1 if used.numel() else 1


def trim_padding(tokens: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """``tokens[:, :caption_length(tokens)]`` (a view): the same features, fewer positions to run."""
    return tokens[:, : caption_length(tokens, pad_id)]
