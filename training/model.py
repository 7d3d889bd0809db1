"""The multi-token CLIP model: open_clip towers emitting points of OB(d, k), and its factory.

:func:`create_model` builds a :class:`MultiTokenCLIP` from an open_clip model name (``"ViT-B-16"``), a
JSON file or a dict in open_clip's config format, with an optional ``"embed_cfg"`` key
(:class:`EmbedConfig`). The tiny configs in ``training/model_configs`` are registered with
``open_clip.add_model_config`` on import, so ``open_clip.get_model_config("tiny-vit-oblique")`` and
``open_clip.get_tokenizer("tiny-vit-oblique")`` work too.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import open_clip
import torch
from open_clip.model import CLIP
from torch import nn

from manifold_align.similarity import get_similarity
from manifold_align.temperature import get_temperature

from .embed_config import EmbedConfig
from .towers import build_text_tower, build_vision_tower

__all__ = [
    "CONFIG_DIR",
    "EmbedConfig",
    "MultiTokenCLIP",
    "create_model",
    "create_stock_model",
    "get_tokenizer",
    "load_model_config",
]

#: the shipped tiny configs (``tiny-vit-oblique``, ``tiny-vit-sphere``, ``tiny-vit-concat``, ``digits-tiny``,
#: the trainer's ``digits-fast``)
CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(CONFIG_DIR)

#: top-level keys of an open_clip config this model reads; ``custom_text`` only picks open_clip's state
#: dict layout and the multi-token text tower always lives under ``text.``
_CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "custom_text", "embed_cfg")

ModelSpec = Union[str, os.PathLike, Mapping[str, Any]]


def load_model_config(model_name_or_cfg: ModelSpec) -> dict[str, Any]:
    """Resolve a model spec to a fresh config dict in open_clip's format.

    Parameters
    ----------
    model_name_or_cfg : str, path or dict
        A registered name (open_clip's or a shipped tiny one), a path to a JSON file, or a config dict
        (copied, never modified).

    Returns
    -------
    dict
        With ``vision_cfg``, ``text_cfg`` and possibly ``embed_dim``, ``quick_gelu``, ``embed_cfg``.
    """
    if isinstance(model_name_or_cfg, Mapping):
        cfg = copy.deepcopy(dict(model_name_or_cfg))
    elif str(model_name_or_cfg).endswith(".json") or Path(model_name_or_cfg).is_file():
        with open(model_name_or_cfg, encoding="utf-8") as f:
            cfg = json.load(f)
    else:
        cfg = open_clip.get_model_config(str(model_name_or_cfg))
        if cfg is None:
            raise ValueError(
                f"unknown model {str(model_name_or_cfg)!r} for `model_name_or_cfg`; accepted: a JSON path, a "
                f"config dict, or one of {open_clip.list_models()}"
            )
    missing = [key for key in ("vision_cfg", "text_cfg") if key not in cfg]
    unknown = sorted(set(cfg) - set(_CONFIG_KEYS))
    if missing or unknown:
        raise ValueError(
            f"model config has missing keys {missing} / unsupported keys {unknown}; accepted keys: {list(_CONFIG_KEYS)}"
        )
    return cfg


class MultiTokenCLIP(nn.Module):
    """CLIP whose towers emit ``k`` tokens of ``d`` dims, projected onto the similarity's manifold.

    Parameters
    ----------
    vision_cfg : dict or open_clip.model.CLIPVisionCfg
        An open_clip ViT config (see :func:`training.towers.parse_vision_cfg` for what is refused).
    text_cfg : dict or open_clip.model.CLIPTextCfg
        An open_clip text transformer config.
    embed_cfg : EmbedConfig or dict, optional
        ``k``, ``d``, similarity, temperature, objective; defaults to ``EmbedConfig()`` (OB(32, 16)).
    quick_gelu : bool, keyword-only
        QuickGELU activations, as in open_clip.
    cast_dtype : torch.dtype, optional, keyword-only
        As open_clip's ``cast_dtype``: fp32 LayerNorms for half precision weights.

    Attributes
    ----------
    visual : training.towers.MultiTokenVisionTransformer
    text : training.towers.MultiTokenTextTransformer
    similarity : manifold_align.Similarity
    temperature : manifold_align.Temperature
    logit_bias : nn.Parameter (0-dim) or None
        Present for the sigmoid objective.
    embed_cfg : EmbedConfig
    """

    def __init__(
        self,
        vision_cfg: Any,
        text_cfg: Any,
        embed_cfg: Union[EmbedConfig, Mapping[str, Any], None] = None,
        *,
        quick_gelu: bool = False,
        cast_dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        self.embed_cfg = EmbedConfig.from_dict(embed_cfg)
        c, w = self.embed_cfg.tower_tokens, self.embed_cfg.tower_token_dim
        self.visual = build_vision_tower(vision_cfg, c, w, quick_gelu=quick_gelu, cast_dtype=cast_dtype)
        self.text = build_text_tower(text_cfg, c, w, quick_gelu=quick_gelu, cast_dtype=cast_dtype)
        self.context_length = self.text.context_length
        self.vocab_size = self.text.vocab_size
        self.similarity = get_similarity(self.embed_cfg.similarity)
        self.temperature = get_temperature(self.embed_cfg.temperature)
        if self.embed_cfg.objective == "sigmoid":
            self.logit_bias = nn.Parameter(torch.tensor(float(self.embed_cfg.bias_init)))
        else:
            self.logit_bias = None

    @property
    def n_tokens(self) -> int:
        """``k``."""
        return self.embed_cfg.n_tokens

    @property
    def token_dim(self) -> int:
        """``d``."""
        return self.embed_cfg.token_dim

    def _as_points(self, tower_output: torch.Tensor, normalize: bool) -> torch.Tensor:
        """Tower output (B, class_tokens, k * d / class_tokens) -> (B, k, d), on the similarity's manifold
        if ``normalize`` (cosine's flat output reshaped back)."""
        features = tower_output.reshape(tower_output.shape[0], self.n_tokens, self.token_dim)
        if not normalize:
            return features
        return self.similarity.project(features).reshape(features.shape)

    def encode_image(self, image: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Images (B, 3, H, W) -> features (B, k, d), projected with ``similarity.project`` if ``normalize``."""
        return self._as_points(self.visual(image), normalize)

    def encode_text(self, text: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Token ids (B, L), L <= context_length -> features (B, k, d), projected if ``normalize``."""
        return self._as_points(self.text(text), normalize)

    def trim_text(self, text: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) -> (B, L') without the padding columns after the last end-of-text token.

        Exact; call it on the CPU batch before moving it to a GPU (see
        :meth:`training.towers.MultiTokenTextTransformer.trim_tokens`).
        """
        return self.text.trim_tokens(text)

    def forward(self, image: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None) -> dict:
        """Encode both modalities, open_clip ``output_dict`` style.

        Returns
        -------
        dict
            ``image_features`` (B, k, d) or None, ``text_features`` (B, k, d) or None, ``logit_scale``
            (0-dim, ``temperature.scale()``) and, for the sigmoid objective, ``logit_bias`` (0-dim).
        """
        out = {
            "image_features": self.encode_image(image) if image is not None else None,
            "text_features": self.encode_text(text) if text is not None else None,
            "logit_scale": self.temperature.scale(),
        }
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        """Freeze the image tower (LiT) but its last ``unlocked_groups`` groups; open_clip's ``lock``."""
        self.visual.lock(unlocked_groups=unlocked_groups, freeze_bn_stats=freeze_bn_stats)

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """Freeze the text tower but its last ``unlocked_layers`` groups; open_clip's ``lock_text_tower``."""
        self.text.lock(unlocked_layers=unlocked_layers, freeze_layer_norm=freeze_layer_norm)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of every transformer block in both towers."""
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Full names of parameters exempt from weight decay.

        Class tokens, positional embeddings, every norm weight, every bias and other 1-d parameter, the
        temperature's parameters and ``logit_bias``.
        """
        names = {f"visual.{n}" for n in self.visual.no_weight_decay()}
        names |= {f"text.{n}" for n in self.text.no_weight_decay()}
        # norms, biases, the temperature's log-scale and logit_bias are all the 1-d (or 0-d) parameters
        return names | {name for name, param in self.named_parameters() if param.ndim < 2}


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
        config dict in open_clip's format, with an optional ``"embed_cfg"`` key.
    embed_cfg : EmbedConfig or dict, optional
        Overrides the config's ``"embed_cfg"``; with neither, ``EmbedConfig()``.
    pretrained : str or path, optional, keyword-only
        A LOCAL checkpoint: a multi-token state dict (as saved from this class) is loaded as is; a stock
        open_clip checkpoint is converted with :func:`training.pretrained.from_open_clip`.

    Returns
    -------
    MultiTokenCLIP
        In float32, on the CPU, in training mode.
    """
    cfg, embed = _split_config(model_name_or_cfg, embed_cfg)
    if pretrained is not None:
        from .pretrained import load_pretrained  # pretrained imports this module

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


def get_tokenizer(model_name_or_cfg: ModelSpec) -> open_clip.tokenizer.SimpleTokenizer:
    """Offline BPE tokenizer (shipped with open_clip) at the config's ``context_length``.

    Returns
    -------
    open_clip.tokenizer.SimpleTokenizer
        ``tokenizer(list_of_str)`` -> LongTensor (N, context_length).
    """
    cfg = load_model_config(model_name_or_cfg)
    text_cfg = cfg["text_cfg"]
    if text_cfg.get("hf_tokenizer_name"):
        raise ValueError("`text_cfg.hf_tokenizer_name` needs a HuggingFace tokenizer; accepted: the BPE tokenizer")
    return open_clip.tokenizer.SimpleTokenizer(context_length=text_cfg.get("context_length", 77))
