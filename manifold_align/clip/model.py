"""The multi-token CLIP model: open_clip towers emitting ``k`` points, one per factor of the embedding manifold.

Construction lives in :mod:`manifold_align.clip.factory` (``create_model``) and
:mod:`manifold_align.clip.pretrained` (``from_open_clip``); this module only defines the model class.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from manifold_align.temperature import get_temperature

from .embed_config import EmbedConfig
from .towers import build_text_tower, build_vision_tower

__all__ = ["MultiTokenCLIP"]


class MultiTokenCLIP(nn.Module):
    """CLIP whose towers emit ``k`` tokens of ``d`` dims, projected by the model's geometry.

    Parameters
    ----------
    vision_cfg : dict or open_clip.model.CLIPVisionCfg
        An open_clip ViT config (see :func:`manifold_align.clip.towers.parse_vision_cfg` for what is refused).
    text_cfg : dict or open_clip.model.CLIPTextCfg
        An open_clip text transformer config.
    embed_cfg : EmbedConfig or dict, optional
        ``k``, ``d``, geometry, temperature, objective; defaults to ``EmbedConfig()`` (OB(32, 16)).
    quick_gelu : bool, keyword-only
        QuickGELU activations, as in open_clip.
    cast_dtype : torch.dtype, optional, keyword-only
        As open_clip's ``cast_dtype``: fp32 LayerNorms for half precision weights.

    Attributes
    ----------
    visual : manifold_align.clip.towers.MultiTokenVisionTransformer
    text : manifold_align.clip.towers.MultiTokenTextTransformer
    geometry : manifold_align.Geometry
        The one geometry of the model (``embed_cfg.make_geometry()``): it projects the towers' features, scores
        them (the loss is built from it) and holds its learnable parameters (lorentz: curvature and modality
        scales), saved with the weights.
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
        self.geometry = self.embed_cfg.make_geometry()
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

    def _as_points(self, tower_output: torch.Tensor, normalize: bool, modality: str) -> torch.Tensor:
        """Tower output (B, class_tokens, k * d / class_tokens) -> (B, k, d), projected by the geometry if
        ``normalize``."""
        features = tower_output.reshape(tower_output.shape[0], self.n_tokens, self.token_dim)
        return self.geometry.project(features, modality=modality) if normalize else features

    def encode_image(self, image: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Images (B, 3, H, W) -> features (B, k, d), projected by :attr:`geometry` if ``normalize``."""
        return self._as_points(self.visual(image), normalize, "image")

    def encode_text(self, text: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Token ids (B, L), L <= context_length -> features (B, k, d), projected if ``normalize``."""
        return self._as_points(self.text(text), normalize, "text")

    def forward(self, image: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None) -> dict:
        """Encode both modalities, open_clip ``output_dict`` style.

        Returns
        -------
        dict
            ``image_features`` (B, k, d) or None, ``text_features`` (B, k, d) or None, ``logit_scale`` (0-dim,
            ``temperature.scale()``) and, for the sigmoid objective, ``logit_bias`` (0-dim): the arguments of
            :class:`~manifold_align.ContrastiveLoss` built from :attr:`geometry`.
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

    @torch.no_grad()
    def clamp_(self) -> "MultiTokenCLIP":
        """Project the temperature's and the geometry's parameters into their ranges, in place.

        Call after ``optimizer.step()`` so the optimizer's view of them stays in range (their accessors clamp
        anyway); each clamp lives with its parameter (``Temperature.clamp_``, ``Geometry.clamp_``).
        """
        self.temperature.clamp_()
        self.geometry.clamp_()
        return self

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Full names of parameters exempt from weight decay.

        Class tokens, positional embeddings, every norm weight, every bias and other 1-d parameter, the
        temperature's parameters, the geometry's (curvature and scales are 0-dim) and ``logit_bias``.
        """
        names = {f"visual.{n}" for n in self.visual.no_weight_decay()}
        names |= {f"text.{n}" for n in self.text.no_weight_decay()}
        # norms, biases, the temperature's log-scale and logit_bias are all the 1-d (or 0-d) parameters
        names |= {name for name, param in self.named_parameters() if param.ndim < 2}
        # a user geometry may hold matrices; none of its parameters is a weight to shrink towards 0
        names |= {f"geometry.{n}" for n, _ in self.geometry.named_parameters()}
        return names
