"""Turn a stock open_clip CLIP (a model, or a LOCAL checkpoint file) into a :class:`MultiTokenCLIP`.

Every stock weight is copied. The ``k`` image class tokens start as the stock class token (token 0
exactly, tokens ``1..k-1`` plus Gaussian noise of std ``noise_std``), their positional rows as the stock
class row; the text query offsets start at 0 (query 0) and at noise (the others). The ``k`` per-token
projections are the ``k`` column blocks of the stock ``(width, embed_dim)`` projection, which needs
``k * d == embed_dim``. With ``noise_std = 0`` the converted model's token ``b`` is therefore exactly
block ``b`` of the stock (unnormalized) embedding, for images and for captions, so the oblique
embedding at step 0 is the stock embedding normalized per block (see ``docs/model.md``).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Union

import torch
from open_clip.factory import load_state_dict
from open_clip.transformer import CustomResidualAttentionBlock, LayerScale, QuickGELU
from torch import nn

from .embed_config import EmbedConfig
from .model import MultiTokenCLIP
from .registry import ModelSpec, load_model_config

__all__ = ["convert_stock_state_dict", "from_open_clip", "load_pretrained", "stock_config_from_model"]

# stock CLIP keeps the text tower at the top level; these prefixes move under ``text.``
_TEXT_PREFIXES = ("text_projection", "positional_embedding", "token_embedding", "transformer", "ln_final")
# stock keys that have no counterpart (the temperature comes from the EmbedConfig)
_DROPPED_KEYS = ("logit_scale", "logit_bias")


def _read_checkpoint(path: Union[str, os.PathLike]) -> dict[str, torch.Tensor]:
    """A local state dict (``torch.save`` or safetensors, optionally under ``"state_dict"``, DDP ``module.``
    prefixes removed), read by open_clip's own :func:`open_clip.factory.load_state_dict`."""
    if os.path.isdir(path):  # a save_pretrained / open_clip local-dir directory: its weights file
        from open_clip.constants import HF_SAFE_WEIGHTS_NAME

        path = os.path.join(path, HF_SAFE_WEIGHTS_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`model_or_checkpoint_path`: no checkpoint file at {str(path)!r}")
    state_dict = load_state_dict(str(path))
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{str(path)!r} holds a {type(state_dict).__name__}, expected a state dict")
    return dict(state_dict)


def _nested_text_layout(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stock CLIP layout (text tower at top level) -> ``text.``-prefixed layout; others unchanged.

    Not open_clip's ``convert_to_custom_text_state_dict``: that one only converts when a plain
    ``text_projection`` key exists, so it misses towers with a biased (``nn.Linear``) projection.
    """
    return {
        (f"text.{key}" if key.startswith(_TEXT_PREFIXES) else key): value for key, value in state_dict.items()
    }


def convert_stock_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    n_tokens: int,
    token_dim: int,
    *,
    noise_std: float = 0.02,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Map a stock open_clip CLIP state dict onto the multi-token layout.

    Parameters
    ----------
    state_dict : mapping
        Stock ``CLIP`` (text at top level) or ``CustomTextCLIP`` (``text.`` prefix) keys, ViT image tower.
    n_tokens, token_dim : int
        ``k`` and ``d``; ``k * d`` must equal the stock embedding width.
    noise_std : float, keyword-only
        Std of the noise added to class tokens ``1..k-1`` and text query offsets ``1..k-1``.
    seed : int, keyword-only
        Seed of that noise (a private generator; global RNG untouched).

    Returns
    -------
    dict
        Keys of :class:`MultiTokenCLIP` except the temperature's and ``logit_bias``.
    """
    sd = {key: value for key, value in _nested_text_layout(state_dict).items() if key not in _DROPPED_KEYS}
    if "visual.class_embedding" not in sd or "visual.proj" not in sd:
        raise ValueError("the stock state dict has no ViT image tower (`visual.class_embedding`, `visual.proj`)")
    embed_dim = sd["visual.proj"].shape[1]
    if n_tokens * token_dim != embed_dim:
        raise ValueError(
            f"`embed_cfg`: n_tokens * token_dim = {n_tokens} * {token_dim} = {n_tokens * token_dim} must equal "
            f"the stock embedding width {embed_dim} (the k projections are its k column blocks)"
        )
    generator = torch.Generator().manual_seed(seed)

    def noisy_copies(row: torch.Tensor) -> torch.Tensor:
        noise = torch.randn((n_tokens - 1, row.shape[-1]), generator=generator, dtype=torch.float32)
        return torch.cat([row[None], row[None] + (noise_std * noise).to(row.dtype)])

    cls = sd["visual.class_embedding"]
    sd["visual.class_embedding"] = noisy_copies(cls)
    pos = sd["visual.positional_embedding"]
    sd["visual.positional_embedding"] = torch.cat([pos[:1].expand(n_tokens, -1), pos[1:]]).clone()
    if n_tokens > 1:
        sd["text.class_tokens"] = noisy_copies(torch.zeros_like(cls))
    return sd


def _text_module(model: nn.Module) -> nn.Module:
    return model.text if hasattr(model, "text") else model


def stock_config_from_model(model: nn.Module) -> dict[str, Any]:
    """Read an open_clip config dict off a stock CLIP instance (standard ViT blocks).

    Raises
    ------
    ValueError
        For towers it cannot read (custom attention blocks, non-ViT image towers): pass ``model_name``.
    """
    visual, text = model.visual, _text_module(model)
    if not hasattr(visual, "conv1") or not hasattr(text, "token_embedding"):
        raise ValueError("cannot read the config off this model (not an open_clip ViT CLIP); pass `model_name`")
    blocks = [*visual.transformer.resblocks, *text.transformer.resblocks]
    if any(isinstance(block, CustomResidualAttentionBlock) for block in blocks):
        raise ValueError("custom attention blocks: pass `model_name` with the model's config")
    vblock, tblock = visual.transformer.resblocks[0], text.transformer.resblocks[0]
    width = visual.conv1.out_channels
    patch_dropout = getattr(visual.patch_dropout, "prob", 0.0)
    image_size, patch_size = visual.image_size, visual.patch_size
    vision_cfg = {
        "image_size": image_size[0] if image_size[0] == image_size[1] else list(image_size),
        "patch_size": patch_size[0],
        "width": width,
        "layers": len(visual.transformer.resblocks),
        "head_width": width // vblock.attn.num_heads,
        "mlp_ratio": vblock.mlp.c_fc.out_features / width,
        "ls_init_value": 1e-5 if isinstance(vblock.ls_1, LayerScale) else None,
        "patch_dropout": patch_dropout,
        "no_ln_pre": isinstance(visual.ln_pre, nn.Identity),
        "final_ln_after_pool": visual.final_ln_after_pool,
        "pool_type": visual.pool_type,
        "attentional_pool": visual.attn_pool is not None,
        "pos_embed_type": "learnable" if visual.positional_embedding.requires_grad else "sin_cos_2d",
    }
    projection = text.text_projection
    text_cfg = {
        "context_length": text.positional_embedding.shape[0],
        "vocab_size": text.token_embedding.num_embeddings,
        "width": text.token_embedding.embedding_dim,
        "heads": tblock.attn.num_heads,
        "layers": len(text.transformer.resblocks),
        "mlp_ratio": tblock.mlp.c_fc.out_features / text.token_embedding.embedding_dim,
        "ls_init_value": 1e-5 if isinstance(tblock.ls_1, LayerScale) else None,
        "pool_type": getattr(model, "text_pool_type", getattr(text, "pool_type", "argmax")),
        "eos_id": getattr(model, "text_eos_id", getattr(text, "eos_id", 2)),
        "proj_bias": isinstance(projection, nn.Linear) and projection.bias is not None,
        "no_causal_mask": getattr(model, "attn_mask", getattr(text, "attn_mask", None)) is None,
    }
    return {
        "embed_dim": visual.proj.shape[1],
        "vision_cfg": vision_cfg,
        "text_cfg": text_cfg,
        "quick_gelu": isinstance(vblock.mlp.gelu, QuickGELU),
    }


def _build_and_load(
    cfg: Mapping[str, Any], embed: EmbedConfig, state_dict: Mapping[str, torch.Tensor]
) -> MultiTokenCLIP:
    model = MultiTokenCLIP(cfg["vision_cfg"], cfg["text_cfg"], embed, quick_gelu=cfg.get("quick_gelu", False))
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    own = ("temperature.", "logit_bias", "geometry.")  # from embed_cfg when the checkpoint has none
    missing = [key for key in missing if not key.startswith(own)]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match the model config: missing keys {missing[:8]}, unexpected keys {unexpected[:8]}"
        )
    return model


def from_open_clip(
    model_or_checkpoint_path: Union[nn.Module, str, os.PathLike],
    embed_cfg: Union[EmbedConfig, Mapping[str, Any]],
    *,
    model_name: Optional[ModelSpec] = None,
    noise_std: float = 0.02,
    seed: int = 0,
) -> MultiTokenCLIP:
    """A :class:`MultiTokenCLIP` initialized from a stock open_clip CLIP, offline.

    Parameters
    ----------
    model_or_checkpoint_path : nn.Module, str or path
        A stock open_clip ``CLIP``/``CustomTextCLIP`` with a ViT image tower, or a LOCAL file holding its
        state dict (``torch.save(model.state_dict(), path)``) or an open_clip checkpoint dict with a
        ``"state_dict"`` key (``module.`` prefixes are stripped).
    embed_cfg : EmbedConfig or dict
        ``n_tokens * token_dim`` must equal the stock embedding width.
    model_name : str, path or dict, optional, keyword-only
        The stock model's config (name, JSON path or dict). Required for a checkpoint file; for a model
        instance it is read off the modules when omitted.
    noise_std : float, keyword-only
        Symmetry-breaking noise on class tokens ``1..k-1`` (0 gives the exact step-0 embedding).
    seed : int, keyword-only
        Seed of that noise.

    Returns
    -------
    MultiTokenCLIP
        float32, CPU, training mode. Its temperature, geometry and ``logit_bias`` come from ``embed_cfg``.

    Raises
    ------
    ValueError
        ``k * d`` differs from the stock width, the config is refused, or the weights do not match it.
    """
    embed = EmbedConfig.from_dict(embed_cfg)
    if isinstance(model_or_checkpoint_path, nn.Module):
        stock = model_or_checkpoint_path
        cfg = load_model_config(model_name) if model_name is not None else stock_config_from_model(stock)
        state_dict = {key: value.detach().float().cpu() for key, value in stock.state_dict().items()}
    else:
        if model_name is None:
            raise ValueError(
                "`model_name` is required with a checkpoint file (its open_clip config name, JSON or dict)"
            )
        cfg = load_model_config(model_name)
        state_dict = _read_checkpoint(model_or_checkpoint_path)
    cfg.pop("embed_cfg", None)
    mapped = convert_stock_state_dict(
        state_dict, embed.tower_tokens, embed.tower_token_dim, noise_std=noise_std, seed=seed
    )
    return _build_and_load(cfg, embed, mapped)


def load_pretrained(path: Union[str, os.PathLike], cfg: Mapping[str, Any], embed: EmbedConfig) -> MultiTokenCLIP:
    """Load a local checkpoint for :func:`manifold_align.clip.create_model`: multi-token as is, stock converted.

    A multi-token state dict is recognised by its 2-d ``visual.class_embedding`` (stock: 1-d).
    """
    state_dict = _read_checkpoint(path)
    cls = state_dict.get("visual.class_embedding")
    if cls is None or cls.ndim != 2:  # stock: convert the weights already read
        state_dict = convert_stock_state_dict(state_dict, embed.tower_tokens, embed.tower_token_dim)
    return _build_and_load(dict(cfg), embed, state_dict)
