"""Multi-token image and text towers built from open_clip's own transformer modules.

Each tower emits ``k`` vectors of ``d`` dims, shape ``(B, k, d)``, unnormalized; the model projects them
by the model's geometry. Both towers are open_clip modules (:class:`open_clip.transformer.
VisionTransformer` and :class:`open_clip.transformer.TextTransformer`) subclassed to carry ``k`` class
tokens; their blocks, norms and parameter names are open_clip's, so a stock checkpoint maps onto them
(:mod:`manifold_align.clip.pretrained`).

Design (see ``docs/model.md``):

- ``k`` class tokens form one *group*. Every query sees the group's keys with an additive attention bias
  of ``-log k``. When the ``k`` tokens coincide, the group then weighs exactly what the single stock class
  token weighs, so a tower whose ``k`` tokens are copies of the stock one computes the stock features
  exactly (this is what makes :func:`manifold_align.clip.from_open_clip` exact at step 0). With ``k = 1``
  the bias is 0 and no mask is built: the towers are the stock ones.
- Image: ``k`` learned class tokens in front of the patches, the positional embedding extended by
  ``k - 1`` rows, patch dropout that keeps the ``k`` leading tokens.
- Text, ``k > 1``: the caption runs causally as in stock CLIP (it never sees the class tokens). ``k``
  query tokens are appended; query ``b`` starts as the caption's end-of-text input plus a learned offset
  ``class_tokens[b]`` and attends to the caption tokens before the end-of-text token and to the query
  group. Pad tokens (after end-of-text) are seen by nobody that is read out, so padding leaves the
  features unchanged. With ``k = 1`` the stock end-of-text pooling is used.
- Text, any ``k``: the tower runs the positions it is given. The positions after the batch's last
  end-of-text token are pads that nothing read out attends to, so a caller that cuts them (on the CPU,
  with :func:`manifold_align.clip.trim_padding`; reading the length off a GPU tensor would be a
  host-device sync) gets the same features for less work; the trainer does.
  With ``k > 1`` the last column is never read (the queries see positions before end-of-text, and
  end-of-text is at most the last position), so it is dropped whatever the data.
- Projection: a ``(width, k * d)`` matrix whose column block ``b`` maps pooled token ``b`` to its ``d``
  output dims: ``out[:, b] = pooled[:, b] @ proj[:, b * d:(b + 1) * d]``.
"""

from __future__ import annotations

import math
from dataclasses import fields
from functools import partial
from typing import Any, Mapping, Optional

import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from open_clip.transformer import (
    LayerNorm,
    LayerNormFp32,
    PatchDropout,
    QuickGELU,
    TextTransformer,
    VisionTransformer,
)
from torch import nn

__all__ = [
    "MultiTokenTextTransformer",
    "MultiTokenVisionTransformer",
    "PrefixPatchDropout",
    "block_project",
    "build_text_tower",
    "build_vision_tower",
    "group_bias",
    "parse_text_cfg",
    "parse_vision_cfg",
]


# ----------------------------------------------------------------------------------------------------
# shared pieces


def group_bias(n_tokens: int) -> float:
    """Additive attention bias on each key of the ``k``-token group: ``-log k`` (0 for ``k = 1``)."""
    return -math.log(n_tokens)


def block_project(pooled: torch.Tensor, proj: torch.Tensor | nn.Linear, token_dim: int) -> torch.Tensor:
    """Project ``k`` pooled tokens, token ``b`` with column block ``b`` of the projection.

    Parameters
    ----------
    pooled : torch.Tensor, shape (B, k, width)
    proj : torch.Tensor, shape (width, k * d), or nn.Linear(width, k * d)
        A ``Linear`` stores the transposed matrix, ``weight`` of shape ``(k * d, width)``; its row block
        ``b`` (and bias block ``b``) serves token ``b``.
    token_dim : int
        ``d``.

    Returns
    -------
    torch.Tensor, shape (B, k, d)
    """
    k = pooled.shape[1]
    if isinstance(proj, nn.Linear):
        weight = proj.weight.view(k, token_dim, -1)  # (k, d, width)
        out = torch.einsum("bkw,kdw->bkd", pooled, weight)
        return out if proj.bias is None else out + proj.bias.view(k, token_dim)
    if k == 1:  # the stock matmul, bit for bit
        return (pooled[:, 0] @ proj).unsqueeze(1)
    return torch.einsum("bkw,wkd->bkd", pooled, proj.view(proj.shape[0], k, token_dim))


def _config_error(field: str, value: Any, accepted: str, why: str = "") -> ValueError:
    reason = f" ({why})" if why else ""
    return ValueError(f"`{field}` = {value!r} is not supported by the multi-token towers{reason}; accepted: {accepted}")


def _dataclass_from_dict(cls, cfg: Mapping[str, Any] | Any, prefix: str):
    if isinstance(cfg, cls):
        return cfg
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown keys in `{prefix}`: {unknown}; accepted keys: {sorted(known)}")
    return cls(**cfg)


def _block_kwargs(cfg: CLIPVisionCfg | CLIPTextCfg, quick_gelu: bool, cast_dtype: Optional[torch.dtype]) -> dict:
    """The transformer-block arguments both towers take, chosen exactly as open_clip's builders do.

    Norm and activation classes (``LayerNormFp32`` for half-precision weights, ``QuickGELU`` on request,
    with the config's keyword arguments) and the block options that the vision and text configs share.
    """
    act_layer = QuickGELU if quick_gelu else nn.GELU
    norm_layer = LayerNormFp32 if cast_dtype in (torch.float16, torch.bfloat16) else LayerNorm
    if cfg.norm_kwargs:
        norm_layer = partial(norm_layer, **cfg.norm_kwargs)
    if cfg.act_kwargs is not None:
        act_layer = partial(act_layer, **cfg.act_kwargs)
    return dict(
        act_layer=act_layer,
        norm_layer=norm_layer,
        block_type=cfg.block_type,
        qk_norm=cfg.qk_norm,
        scaled_cosine_attn=cfg.scaled_cosine_attn,
        scale_heads=cfg.scale_heads,
        scale_attn_inner=cfg.scale_attn_inner,
        scale_attn=cfg.scale_attn,
        scale_fc=cfg.scale_fc,
    )


# ----------------------------------------------------------------------------------------------------
# image tower


class PrefixPatchDropout(PatchDropout):
    """open_clip's :class:`~open_clip.transformer.PatchDropout` keeping the ``num_prefix_tokens`` leading
    tokens (the ``k`` class tokens) and dropping only patches.

    Parameters
    ----------
    prob : float
        Fraction of patches dropped in training, in ``[0, 1)``.
    num_prefix_tokens : int
        Leading tokens always kept.
    """

    def __init__(self, prob: float, num_prefix_tokens: int):
        super().__init__(prob, exclude_first_token=True)
        self.num_prefix_tokens = num_prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x : (B, n_prefix + n_patches, width) -> (B, n_prefix + n_kept, width)."""
        if not self.training or self.prob == 0.0:
            return x
        prefix, patches = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        batch, n_patches = patches.shape[:2]
        n_keep = max(1, int(n_patches * (1 - self.prob)))
        keep = torch.randn(batch, n_patches, device=x.device).topk(n_keep, dim=-1).indices
        patches = patches[torch.arange(batch, device=x.device)[:, None], keep]
        return torch.cat([prefix, patches], dim=1)


def parse_vision_cfg(vision_cfg: Mapping[str, Any] | CLIPVisionCfg) -> CLIPVisionCfg:
    """Validate an open_clip ``vision_cfg`` for the multi-token image tower.

    Raises
    ------
    ValueError
        Naming the field and its accepted values for towers that cannot carry ``k`` class tokens
        (timm or ResNet towers, attentional pooling, pooling other than ``'tok'``, ``output_tokens``).
    """
    cfg = _dataclass_from_dict(CLIPVisionCfg, vision_cfg, "vision_cfg")
    if cfg.timm_model_name:
        raise _config_error("vision_cfg.timm_model_name", cfg.timm_model_name, "None (an open_clip ViT)",
                            "only open_clip VisionTransformer towers can carry k class tokens")
    if isinstance(cfg.layers, (tuple, list)):
        raise _config_error("vision_cfg.layers", cfg.layers, "an int (ViT depth)",
                            "a tuple of layers builds a ModifiedResNet, which has no class token")
    if cfg.attentional_pool:
        raise _config_error("vision_cfg.attentional_pool", cfg.attentional_pool, "False",
                            "the k class tokens are the pooling")
    if cfg.pool_type != "tok":
        raise _config_error("vision_cfg.pool_type", cfg.pool_type, "'tok'", "the k class tokens are read out")
    if cfg.output_tokens:
        raise _config_error("vision_cfg.output_tokens", cfg.output_tokens, "False")
    return cfg


class MultiTokenVisionTransformer(VisionTransformer):
    """open_clip :class:`~open_clip.transformer.VisionTransformer` with ``k`` learned class tokens.

    Parameters are open_clip's with these shapes: ``class_embedding`` ``(k, width)``,
    ``positional_embedding`` ``(k + n_patches, width)`` (rows ``0..k-1`` for the class tokens),
    ``proj`` ``(width, k * d)``. ``conv1``, ``ln_pre``, ``transformer``, ``ln_post``, ``lock`` and
    ``set_grad_checkpointing`` are inherited unchanged.

    Parameters
    ----------
    n_tokens : int
        ``k >= 1``.
    token_dim : int
        ``d >= 2``.
    **vit_kwargs
        :class:`~open_clip.transformer.VisionTransformer` arguments except ``output_dim``.
    """

    def __init__(self, n_tokens: int, token_dim: int, **vit_kwargs):
        super().__init__(output_dim=n_tokens * token_dim, **vit_kwargs)
        self.n_tokens, self.token_dim = n_tokens, token_dim
        width = self.class_embedding.shape[0]
        scale = width**-0.5
        # k = 1 keeps the stock values; more tokens are drawn like the stock one
        cls = torch.cat([self.class_embedding.data[None], scale * torch.randn(n_tokens - 1, width)])
        self.class_embedding = nn.Parameter(cls)
        pos = self.positional_embedding
        # extra class rows copy the stock class row (zeros for the fixed sin-cos table)
        extra = pos.data[:1].expand(n_tokens - 1, -1)
        self.positional_embedding = nn.Parameter(torch.cat([pos.data[:1], extra, pos.data[1:]]),
                                                 requires_grad=pos.requires_grad)
        if n_tokens > 1 and isinstance(self.patch_dropout, PatchDropout):  # k = 1: stock's own keeps the token
            self.patch_dropout = PrefixPatchDropout(self.patch_dropout.prob, n_tokens)

    def _embeds(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> token sequence (B, k + n_patches, width) after ln_pre."""
        x = self.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B, n_patches, width)
        cls = self.class_embedding.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.patch_dropout(x)
        return self.ln_pre(x)

    def _attn_mask(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """(L, L) additive mask: ``-log k`` on the class-token keys; None for k = 1.

        Built per call: about 16 us for ViT-B-16 on CPU against seconds per step, so not cached (a cache
        would also have to follow patch dropout's changing ``L``, dtype and device). On CPU the float mask
        costs nothing measurable in attention (fwd + bwd, ViT-B-16, 1 thread: 0.99x of no mask); on CUDA
        a float mask rules out the flash SDPA kernel (memory-efficient or cuDNN kernels take it).
        """
        if self.n_tokens == 1:
            return None
        mask = torch.zeros(x.shape[1], x.shape[1], dtype=x.dtype, device=x.device)
        mask[:, : self.n_tokens] = group_bias(self.n_tokens)
        return mask

    def _pool_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Transformer output (B, L, width) -> the k class tokens after ln_post, (B, k, width)."""
        if self.final_ln_after_pool:
            return self.ln_post(x[:, : self.n_tokens])
        return self.ln_post(x)[:, : self.n_tokens]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> unnormalized token features (B, k, d)."""
        x = self._embeds(x)
        x = self.transformer(x, attn_mask=self._attn_mask(x))
        return block_project(self._pool_tokens(x), self.proj, self.token_dim)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Names (relative to this tower) of the class tokens and positional embedding."""
        return {"class_embedding", "positional_embedding"}


def build_vision_tower(
    vision_cfg: Mapping[str, Any] | CLIPVisionCfg,
    n_tokens: int,
    token_dim: int,
    *,
    quick_gelu: bool = False,
    cast_dtype: Optional[torch.dtype] = None,
) -> MultiTokenVisionTransformer:
    """Build the image tower from an open_clip ``vision_cfg`` the way open_clip builds its ViT."""
    cfg = parse_vision_cfg(vision_cfg)
    return MultiTokenVisionTransformer(
        n_tokens,
        token_dim,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        width=cfg.width,
        layers=cfg.layers,
        heads=cfg.width // cfg.head_width,
        mlp_ratio=cfg.mlp_ratio,
        ls_init_value=cfg.ls_init_value,
        patch_dropout=cfg.patch_dropout,
        pos_embed_type=cfg.pos_embed_type,
        no_ln_pre=cfg.no_ln_pre,
        final_ln_after_pool=cfg.final_ln_after_pool,
        pool_type=cfg.pool_type,
        **_block_kwargs(cfg, quick_gelu, cast_dtype),
    )


# ----------------------------------------------------------------------------------------------------
# text tower


def parse_text_cfg(text_cfg: Mapping[str, Any] | CLIPTextCfg) -> CLIPTextCfg:
    """Validate an open_clip ``text_cfg`` for the multi-token text tower.

    Raises
    ------
    ValueError
        Naming the field and its accepted values (HF towers, CoCa class token, bidirectional mask,
        pooling other than end-of-text, no projection).
    """
    cfg = _dataclass_from_dict(CLIPTextCfg, text_cfg, "text_cfg")
    if cfg.hf_model_name:
        raise _config_error("text_cfg.hf_model_name", cfg.hf_model_name, "None (an open_clip TextTransformer)")
    if cfg.embed_cls:
        raise _config_error("text_cfg.embed_cls", cfg.embed_cls, "False", "the k class tokens replace it")
    if cfg.no_causal_mask:
        raise _config_error("text_cfg.no_causal_mask", cfg.no_causal_mask, "False",
                            "the class tokens stand in for the causal end-of-text token")
    if cfg.pool_type not in ("argmax", "eos"):
        raise _config_error("text_cfg.pool_type", cfg.pool_type, "'argmax' or 'eos' (end-of-text pooling)")
    if cfg.proj_type != "linear":
        raise _config_error("text_cfg.proj_type", cfg.proj_type, "'linear'")
    if cfg.output_tokens:
        raise _config_error("text_cfg.output_tokens", cfg.output_tokens, "False")
    return cfg


class MultiTokenTextTransformer(TextTransformer):
    """open_clip :class:`~open_clip.transformer.TextTransformer` emitting ``k`` tokens per caption.

    ``k = 1``: the stock causal transformer pooled at the end-of-text token. ``k > 1``: ``k`` query
    tokens appended after the caption; query ``b`` starts as the end-of-text input plus the learned
    offset ``class_tokens[b]`` (shape ``(k, width)``), sees the caption tokens before end-of-text and the
    query group (bias ``-log k``), and is read out through column block ``b`` of ``text_projection``
    (``(width, k * d)``). The caption itself stays causal and never sees the queries.

    Parameters
    ----------
    n_tokens : int
        ``k >= 1``.
    token_dim : int
        ``d >= 2``.
    **text_kwargs
        :class:`~open_clip.transformer.TextTransformer` arguments except ``output_dim``.
    """

    def __init__(self, n_tokens: int, token_dim: int, **text_kwargs):
        super().__init__(output_dim=n_tokens * token_dim, **text_kwargs)
        self.n_tokens, self.token_dim = n_tokens, token_dim
        if n_tokens > 1:
            # offsets from the end-of-text input; small, like the stock embeddings' init
            self.class_tokens = nn.Parameter(0.01 * torch.randn(n_tokens, self.width))
        else:
            self.register_parameter("class_tokens", None)

    def _eot_index(self, text: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B,) position of the end-of-text token, as stock pooling finds it."""
        if self.pool_type == "eos":
            return (text == self.eos_id).int().argmax(dim=-1)
        return text.argmax(dim=-1)

    def _caption_embeds(self, text: torch.Tensor) -> torch.Tensor:
        """(B, L) ids, L <= context_length -> (B, L, width) token + positional embeddings."""
        if text.shape[1] > self.num_pos:
            raise ValueError(f"`text` has {text.shape[1]} positions, the tower's context_length is {self.num_pos}")
        cast_dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(text).to(cast_dtype)
        return x + self.positional_embedding[: text.shape[1]].to(cast_dtype)

    def _query_mask(self, eot: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask (B * heads, L + k, L + k) for the caption plus the k queries."""
        k, total = self.n_tokens, length + self.n_tokens
        device = eot.device
        neg_inf = torch.finfo(dtype).min if dtype in (torch.float16, torch.bfloat16) else float("-inf")
        mask = torch.zeros(eot.shape[0], total, total, dtype=dtype, device=device)
        # caption rows: stock causal mask, blind to the queries
        mask[:, :length, :] = torch.full((length, total), neg_inf, dtype=dtype, device=device).triu_(1)
        # query rows: caption tokens strictly before end-of-text, and the query group
        before_eot = torch.arange(length, device=device)[None, :] < eot[:, None]  # (B, L)
        query_rows = torch.zeros(eot.shape[0], length, dtype=dtype, device=device)
        query_rows.masked_fill_(~before_eot, neg_inf)
        mask[:, length:, :length] = query_rows[:, None, :]
        mask[:, length:, length:] = group_bias(k)
        return mask.repeat_interleave(self.heads, dim=0)

    def _pool_tokens(self, text: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, k, width) pooled tokens after ln_final."""
        x = self._caption_embeds(text)
        eot = self._eot_index(text)
        # k > 1: the queries read positions < eot <= L - 1, never the last column
        length = x.shape[1] if self.n_tokens == 1 else max(1, x.shape[1] - 1)
        if self.n_tokens == 1:
            mask = self.attn_mask[:length, :length] if self.attn_mask is not None else None
            x = self.ln_final(self.transformer(x[:, :length], attn_mask=mask))
            return x[torch.arange(x.shape[0], device=x.device), eot].unsqueeze(1)
        rows = torch.arange(x.shape[0], device=x.device)
        queries = x[rows, eot].unsqueeze(1) + self.class_tokens.to(x.dtype)  # (B, k, width)
        x = torch.cat([x[:, :length], queries], dim=1)
        x = self.transformer(x, attn_mask=self._query_mask(eot, length, x.dtype))
        return self.ln_final(x[:, length:])

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L), L <= context_length -> unnormalized token features (B, k, d)."""
        return block_project(self._pool_tokens(text), self.text_projection, self.token_dim)

    def lock(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """open_clip's LiT text lock; the query offsets follow the token embedding's state.

        ``freeze_layer_norm=False`` leaves the LayerNorms of the locked layers trainable, as open_clip's
        Hugging Face text towers do (its own ``TextTransformer.lock`` refuses False).
        """
        super().lock(unlocked_layers, True)
        if self.class_tokens is not None:
            self.class_tokens.requires_grad = self.token_embedding.weight.requires_grad
        if not freeze_layer_norm:
            for module in self.modules():
                if isinstance(module, nn.LayerNorm):
                    module.requires_grad_(True)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Names (relative to this tower) of the positional embedding and the query offsets."""
        return {"positional_embedding"} | ({"class_tokens"} if self.class_tokens is not None else set())


def build_text_tower(
    text_cfg: Mapping[str, Any] | CLIPTextCfg,
    n_tokens: int,
    token_dim: int,
    *,
    quick_gelu: bool = False,
    cast_dtype: Optional[torch.dtype] = None,
) -> MultiTokenTextTransformer:
    """Build the text tower from an open_clip ``text_cfg`` the way open_clip builds its TextTransformer."""
    cfg = parse_text_cfg(text_cfg)
    return MultiTokenTextTransformer(
        n_tokens,
        token_dim,
        context_length=cfg.context_length,
        vocab_size=cfg.vocab_size,
        width=cfg.width,
        heads=cfg.heads,
        layers=cfg.layers,
        mlp_ratio=cfg.mlp_ratio,
        ls_init_value=cfg.ls_init_value,
        embed_cls=False,
        no_causal_mask=False,
        pad_id=cfg.pad_id,
        eos_id=cfg.eos_id,
        pool_type=cfg.pool_type,
        proj_type=cfg.proj_type,
        proj_bias=cfg.proj_bias,
        **_block_kwargs(cfg, quick_gelu, cast_dtype),
    )
