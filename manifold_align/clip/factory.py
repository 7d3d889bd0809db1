"""Building models: :func:`create_model` (multi-token) and :func:`create_stock_model` (open_clip's CLIP).

As in open_clip, the factory imports the model classes and never the other way round.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Union

from open_clip.model import CLIP

from .embed_config import EmbedConfig
from .export import is_export_dir, load_pretrained_dir
from .model import MultiTokenCLIP
from .pretrained import load_pretrained
from .registry import ModelSpec, load_model_config

__all__ = ["create_model", "create_stock_model"]


def _split_config(model_name_or_cfg: ModelSpec, embed_cfg) -> tuple[dict, EmbedConfig]:
    cfg = load_model_config(model_name_or_cfg)
    file_embed = cfg.pop("embed_cfg", None)
    return cfg, EmbedConfig.from_dict(embed_cfg if embed_cfg is not None else file_embed)


def create_model(
    model_name_or_cfg: ModelSpec,
    embed_cfg: Union[EmbedConfig, Mapping[str, Any], None] = None,
    *,
    pretrained: Optional[Union[str, os.PathLike]] = None,
) -> MultiTokenCLIP:
    """Build a :class:`MultiTokenCLIP`.

    Parameters
    ----------
    model_name_or_cfg : str, path or dict
        open_clip model name (``"ViT-B-16"``), shipped tiny name (``"tiny-vit-oblique"``), JSON path or
        config dict in open_clip's format, with an optional ``"embed_cfg"`` key; or a directory written by
        :func:`manifold_align.clip.save_pretrained` (optionally ``"local-dir:"``-prefixed), loaded with its
        stored geometry and weights.
    embed_cfg : EmbedConfig or dict, optional
        Overrides the config's ``"embed_cfg"``; with neither, ``EmbedConfig()``.
    pretrained : str or path, optional, keyword-only
        A LOCAL checkpoint: a multi-token state dict (as saved from this class) is loaded as is; a stock
        open_clip checkpoint is converted with :func:`manifold_align.clip.from_open_clip`. An exported
        directory's weights are read likewise, into ``embed_cfg``'s geometry.

    Returns
    -------
    MultiTokenCLIP
        In float32, on the CPU, in training mode.
    """
    if is_export_dir(model_name_or_cfg):  # a directory of save_pretrained: its config and weights together
        if pretrained is not None:
            raise ValueError("`pretrained` must be None when `model_name_or_cfg` is an exported model directory")
        return load_pretrained_dir(model_name_or_cfg, embed_cfg)
    cfg, embed = _split_config(model_name_or_cfg, embed_cfg)
    if pretrained is not None:
        return load_pretrained(pretrained, cfg, embed)
    return MultiTokenCLIP(cfg["vision_cfg"], cfg["text_cfg"], embed, quick_gelu=cfg.get("quick_gelu", False))


def create_stock_model(model_name_or_cfg: ModelSpec, **clip_kwargs: Any) -> CLIP:
    """The stock open_clip :class:`~open_clip.model.CLIP` of the same config (``embed_cfg`` key dropped).

    The sphere baseline and the reference of the ``k = 1`` equivalence. ``clip_kwargs`` go to
    ``open_clip.model.CLIP`` (``output_dict=True``, ``init_logit_bias=...``).
    """
    cfg = load_model_config(model_name_or_cfg)
    cfg.pop("embed_cfg", None)
    cfg.pop("custom_text", None)
    if "embed_dim" not in cfg:
        raise ValueError("a stock open_clip model needs `embed_dim` in the config")
    return CLIP(**cfg, **clip_kwargs)
