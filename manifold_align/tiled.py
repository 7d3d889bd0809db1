"""Contrastive losses computed tile by tile: memory linear in the batch size, for any pairwise score.

The materialized InfoNCE of N pairs holds the (N, N) scores, their logits and two softmaxes for the
backward (a geometry such as ``lorentz`` also a (k, N, N) grid); at N = 32768 that is tens of GiB. Here the
scores exist one (T, T) tile at a time (Inf-CL, Cheng et al. 2024, arXiv 2410.17243):

* **forward**: every tile is scored once, without a graph; each row's (and, for the text direction, each
  column's) log-sum-exp is accumulated online across the tiles, and the positives are read off the tiles
  they fall in. Kept for the backward: the features, the parameters and two log-sum-exp vectors.
* **backward**: every tile is scored again, this time with a graph on tile-sized leaves (a slice of each
  side and the tensors the score reads, such as a curvature); the gradient of the loss with respect to the
  tile's logits is written out from the saved log-sum-exps (softmax minus the one-hot labels, or SigLIP's
  sigmoid minus the labels), and ``torch.autograd.grad`` takes it back to the feature slices and the
  parameters. The logit scale's and bias's gradients are the sums ``sum(G * S)`` and ``sum(G)``.

One forward and two score evaluations per tile: the result equals the materialized computation to rounding
(tests/test_tiled.py: 1e-5 relative in float32, 1e-10 in float64) for any score function.

The score function is any ``pairwise(a, b) -> (n, m)`` (float32 or float64); ``params`` lists every tensor
with a gradient that it reads besides its two arguments (the tensors it closes over: a geometry's
``nn.Parameter`` objects, or a tensor derived from them once, such as the clamped curvature). Gradients are
taken with respect to exactly those tensors, tile by tile, and summed; pass a derived tensor rather than the
parameter behind it when the derivation has a gradient rule that is not linear in its incoming gradient
(the inward clamp of :class:`~manifold_align.geometries.LorentzGeometry`): the rule then sees the total.
:func:`pairwise_for` builds the pair for a similarity and its geometry.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .dtypes import autocast_disabled
from .manifolds.lorentz import space_cdist

__all__ = [
    "Pairwise",
    "auto_tile_size",
    "materialized_sigmoid_loss",
    "materialized_softmax_loss",
    "pairwise_for",
    "tiled_sigmoid_loss",
    "tiled_softmax_loss",
]

#: ``pairwise(a, b) -> (n, m)`` scores of every row of ``a`` against every row of ``b``
Pairwise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: score entries of one tile (times the grid factor, see auto_tile_size); 2^21 float32 values are 8 MiB:
#: large enough that the tile's matmul runs at full speed, small enough to stay in a large cache
_TILE_BUDGET = 2**21
#: up to this many scores (times the grid factor) the materialized loss: no second evaluation of the
#: scores, and its (N, N) tensors are still small (2^24 float32 values are 64 MiB: oblique N = 4096, a
#: k = 16 lorentz grid at N = 1024)
_MATERIALIZE_UP_TO = 2**24


# --------------------------------------------------------------------------------------------------
# score functions
# --------------------------------------------------------------------------------------------------
def pairwise_for(similarity, geometry: Optional[nn.Module] = None) -> tuple[Pairwise, tuple[torch.Tensor, ...]]:
    """The ``(pairwise, params)`` pair of a similarity and its learnable geometry, for the tiled losses.

    Parameters
    ----------
    similarity : Similarity
        A :class:`~manifold_align.similarity.Similarity`.
    geometry : nn.Module, optional
        Its learnable geometry (``similarity.make_geometry``), None for similarities without one.

    Returns
    -------
    pairwise : callable
        ``pairwise(a, b) -> (n, m)``, the similarity's own formula (validation, upcast, autocast off).
    params : tuple of torch.Tensor
        The tensors ``pairwise`` reads that take a gradient. For the hyperboloid, the clamped curvature
        computed here once (so that its clamp rule sees the summed gradient of all tiles) and a formula
        that reads it; otherwise the geometry's trainable parameters.
    """
    if geometry is None:
        if similarity.name in _MATMUL_SCORES and getattr(similarity, "squared", True):
            return _with_grid_factor(similarity.pairwise, 1), ()
        return similarity.pairwise, ()
    curvature = getattr(geometry, "curvature", None)
    if similarity.name == "lorentz" and callable(curvature):
        c = curvature()
        precise = similarity.precise

        def lorentz(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            # the similarity's formula with c fixed: -sum_b d_b, space_cdist's one (n, m) pass for the sum
            return -space_cdist(a, b, c, precise=precise, sum_factors=True)

        return lorentz, (c,)
    params = tuple(p for p in geometry.parameters() if p.requires_grad)
    return (lambda a, b: similarity.pairwise(a, b, geometry=geometry)), params


#: built-in similarities whose scores are one matmul of the flattened features (no per-token grid); for
#: ``euclidean`` only its squared form
_MATMUL_SCORES = ("cosine", "oblique", "chordal", "euclidean")


def _with_grid_factor(pairwise: Pairwise, grid_factor: int) -> Pairwise:
    """``pairwise`` declaring how many values it holds per score (see :func:`auto_tile_size`)."""

    def declared(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return pairwise(a, b)

    declared.grid_factor = grid_factor
    return declared


def auto_tile_size(n_rows: int, n_cols: int, grid_factor: int = 1) -> Optional[int]:
    """The tile side for scoring ``n_rows`` against ``n_cols``, or None where the materialized loss is cheaper.

    Parameters
    ----------
    n_rows, n_cols : int
    grid_factor : int, default 1
        Values the score function holds per score (``k`` for a geometry with a (k, n, m) grid such as
        ``lorentz``; 1 for a matmul).

    Returns
    -------
    int or None
        None when ``n_rows * n_cols * grid_factor`` is at most 2^24 (64 MiB of float32); else the side T,
        a power of two, of a (T, T) tile with at most 2^21 values (times the grid factor).
    """
    g = max(1, int(grid_factor))
    if n_rows * n_cols * g <= _MATERIALIZE_UP_TO:
        return None
    side = int(math.isqrt(_TILE_BUDGET // g))
    return max(64, 1 << (side.bit_length() - 1))


def _grid_factor(pairwise: Pairwise, features: torch.Tensor) -> int:
    """The values ``pairwise`` holds per score: its ``grid_factor`` attribute where it declares one, else k of
    (N, k, d) features (a score may hold a (k, n, m) grid, as ``lorentz`` does), 1 for (N, D)."""
    declared = getattr(pairwise, "grid_factor", None)
    if declared is not None:
        return int(declared)
    return features.shape[1] if features.dim() == 3 else 1


# --------------------------------------------------------------------------------------------------
# materialized losses (the reference formulas, and the path below the tiling threshold)
# --------------------------------------------------------------------------------------------------
def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _scores(pairwise: Pairwise, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    with autocast_disabled(a.device):
        return _upcast(pairwise(_upcast(a), _upcast(b)))


def materialized_softmax_loss(image: torch.Tensor, text: torch.Tensor, pairwise: Pairwise, *,
                              logit_scale: torch.Tensor, image_all: Optional[torch.Tensor] = None,
                              text_all: Optional[torch.Tensor] = None, offset: int = 0) -> torch.Tensor:
    """Symmetric InfoNCE with the whole score matrix (arguments as :func:`tiled_softmax_loss`)."""
    scale = logit_scale.reshape(())
    if image_all is None:
        sim = _scores(pairwise, image, text)
        per_image, per_text = sim, sim.T
    else:
        per_image = _scores(pairwise, image, text_all)
        per_text = _scores(pairwise, image_all, text).T
    labels = torch.arange(per_image.shape[0], device=per_image.device) + offset
    return (F.cross_entropy(scale * per_image, labels) + F.cross_entropy(scale * per_text, labels)) / 2


def materialized_sigmoid_loss(image: torch.Tensor, text: torch.Tensor, pairwise: Pairwise, *,
                              logit_scale: torch.Tensor, logit_bias: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """SigLIP's loss with the whole score matrix (arguments as :func:`tiled_sigmoid_loss`)."""
    sim = _scores(pairwise, image, text)
    logits = logit_scale.reshape(()) * sim + logit_bias.reshape(())
    n = image.shape[0]
    labels = -torch.ones_like(logits)
    labels[torch.arange(n, device=logits.device), torch.arange(n, device=logits.device) + offset] = 1.0
    return -F.logsigmoid(labels * logits).sum() / n


# --------------------------------------------------------------------------------------------------
# the tiled computation
# --------------------------------------------------------------------------------------------------
class _Term(NamedTuple):
    """One score matrix ``pairwise(features[a], features[b])`` and what the loss takes from it.

    Positives sit at ``(row_offset + t, col_offset + t)``, ``t < n_pos``. ``kind``: ``"row"`` (softmax over
    each row), ``"col"`` (over each column), ``"both"``, or ``"sigmoid"``; ``weight`` multiplies each
    direction's sum over its positives (1 / (2 n) for InfoNCE, 1 / n for SigLIP).
    """

    a: int
    b: int
    row_offset: int
    col_offset: int
    n_pos: int
    kind: str
    weight: float


def _tiles(n: int, size: int):
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def _positives(term: _Term, i0: int, i1: int, j0: int, j1: int):
    """(local rows, local cols, t) of the positives inside the tile [i0, i1) x [j0, j1), or None."""
    lo = max(i0 - term.row_offset, j0 - term.col_offset, 0)
    hi = min(i1 - term.row_offset, j1 - term.col_offset, term.n_pos)
    if lo >= hi:
        return None
    return (slice(term.row_offset + lo - i0, term.row_offset + hi - i0),
            slice(term.col_offset + lo - j0, term.col_offset + hi - j0), slice(lo, hi))


def _logits(s: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    # the materialized formula's order of operations, so both round alike
    logits = scale * s
    return logits if bias is None else logits + bias


def _pos_values(logits: torch.Tensor, where) -> torch.Tensor:
    rows, cols, _ = where
    return torch.diagonal(logits[rows, cols])


class _TiledLoss(torch.autograd.Function):
    """Loss over tiles; backward recomputes every tile's scores (see the module docstring)."""

    @staticmethod
    def forward(ctx, pairwise, terms, tile, n_features, scale, bias, *tensors):  # noqa: D102
        features, params = tensors[:n_features], tensors[n_features:]
        scale_v = scale.detach().reshape(())
        bias_v = None if bias is None else bias.detach().reshape(())
        device = features[0].device
        with torch.no_grad(), autocast_disabled(device):
            total, saved = None, []
            for term in terms:
                value, lse_r, lse_c = _forward_term(pairwise, term, features, tile, scale_v, bias_v)
                total = value if total is None else total + value
                saved += [lse_r, lse_c]
        ctx.pairwise, ctx.terms, ctx.tile, ctx.n_features = pairwise, terms, tile, n_features
        ctx.has_bias = bias is not None
        ctx.save_for_backward(scale, *([bias] if bias is not None else []), *features, *params, *saved)
        return total

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        saved = ctx.saved_tensors
        scale, rest = saved[0], saved[1:]
        bias = None
        if ctx.has_bias:
            bias, rest = rest[0], rest[1:]
        n_feat, n_terms = ctx.n_features, len(ctx.terms)
        features = rest[:n_feat]
        params = rest[n_feat: len(rest) - 2 * n_terms]
        lses = rest[len(rest) - 2 * n_terms:]
        needs = ctx.needs_input_grad[6:]
        need_feat, need_param = needs[:n_feat], needs[n_feat:]
        device = features[0].device
        compute = torch.promote_types(_upcast(features[0]).dtype, scale.dtype)
        grad_feat = [torch.zeros_like(f, dtype=_upcast(f).dtype) if need else None
                     for f, need in zip(features, need_feat)]
        # float64 sums over the tiles: a parameter's gradient adds up every score's, with cancellation
        grad_param = [torch.zeros_like(p, dtype=torch.float64) if need else None for p, need in zip(params, need_param)]
        grad_scale = torch.zeros((), dtype=torch.float64, device=device)
        grad_bias = torch.zeros((), dtype=torch.float64, device=device)
        scale_v = scale.detach().reshape(())
        bias_v = None if bias is None else bias.detach().reshape(())
        g = grad_out.detach().reshape(()).to(compute)
        with autocast_disabled(device):
            for index, term in enumerate(ctx.terms):
                _backward_term(ctx.pairwise, term, features, params, lses[2 * index], lses[2 * index + 1],
                               ctx.tile, scale_v, bias_v, g, grad_feat, grad_param, need_param,
                               grad_scale, grad_bias)
        out_feat = [None if gf is None else gf.to(f.dtype) for gf, f in zip(grad_feat, features)]
        return (None, None, None, None,
                grad_scale.to(scale.dtype).reshape(scale.shape) if ctx.needs_input_grad[4] else None,
                grad_bias.to(bias.dtype).reshape(bias.shape) if ctx.has_bias and ctx.needs_input_grad[5] else None,
                *out_feat, *(None if gp is None else gp.to(p.dtype) for gp, p in zip(grad_param, params)))


def _forward_term(pairwise, term, features, tile, scale, bias):
    """(loss contribution, row log-sum-exps or None, column log-sum-exps or None) of one term, no graph."""
    a, b = features[term.a], features[term.b]
    n, m = a.shape[0], b.shape[0]
    rows = term.kind in ("row", "both")
    cols = term.kind in ("col", "both")
    lse_r = lse_c = None
    pos_sum = None
    partial = None  # sigmoid: per-row sums of softplus(logits)
    for i0, i1 in _tiles(n, tile):
        a_t = _upcast(a[i0:i1])
        row_acc = None
        for j0, j1 in _tiles(m, tile):
            s = _upcast(pairwise(a_t, _upcast(b[j0:j1])))
            logits = _logits(s, scale, bias)
            if lse_r is None and lse_c is None and partial is None:
                if rows:
                    lse_r = torch.full((n,), -math.inf, dtype=logits.dtype, device=logits.device)
                if cols:
                    lse_c = torch.full((m,), -math.inf, dtype=logits.dtype, device=logits.device)
                if term.kind == "sigmoid":
                    partial = torch.zeros(n, dtype=logits.dtype, device=logits.device)
                pos_sum = torch.zeros(term.n_pos, dtype=logits.dtype, device=logits.device)
            where = _positives(term, i0, i1, j0, j1)
            if where is not None:
                pos_sum[where[2]] = _pos_values(logits, where)
            if term.kind == "sigmoid":
                tile_sum = F.softplus(logits).sum(1)
                row_acc = tile_sum if row_acc is None else row_acc + tile_sum
                continue
            if rows:
                tile_lse = torch.logsumexp(logits, dim=1)
                row_acc = tile_lse if row_acc is None else torch.logaddexp(row_acc, tile_lse)
            if cols:
                lse_c[j0:j1] = torch.logaddexp(lse_c[j0:j1], torch.logsumexp(logits, dim=0))
        if term.kind == "sigmoid":
            partial[i0:i1] = row_acc
        elif rows:
            lse_r[i0:i1] = row_acc
    if term.kind == "sigmoid":
        # -log sigmoid(y l) = softplus(-y l): softplus(l) for the negatives, softplus(-l) = softplus(l) - l
        # for the positives
        return (partial.sum() - pos_sum.sum()) * term.weight, None, None
    value = 0.0
    if rows:
        value = value + (lse_r[term.row_offset: term.row_offset + term.n_pos] - pos_sum).sum()
    if cols:
        value = value + (lse_c[term.col_offset: term.col_offset + term.n_pos] - pos_sum).sum()
    return value * term.weight, lse_r, lse_c


def _backward_term(pairwise, term, features, params, lse_r, lse_c, tile, scale, bias, g, grad_feat,
                   grad_param, need_param, grad_scale, grad_bias):
    """Accumulate one term's gradients into ``grad_feat``, ``grad_param``, ``grad_scale``, ``grad_bias``."""
    a, b = features[term.a], features[term.b]
    need_a, need_b = grad_feat[term.a] is not None, grad_feat[term.b] is not None
    wanted_params = [p for p, need in zip(params, need_param) if need]
    n, m = a.shape[0], b.shape[0]
    w = term.weight
    for i0, i1 in _tiles(n, tile):
        a_t = _upcast(a[i0:i1].detach()).requires_grad_(need_a)
        for j0, j1 in _tiles(m, tile):
            b_t = _upcast(b[j0:j1].detach()).requires_grad_(need_b)
            inputs = ([a_t] if need_a else []) + ([b_t] if need_b else []) + wanted_params
            with torch.set_grad_enabled(bool(inputs)):
                s = _upcast(pairwise(a_t, b_t))
            with torch.no_grad():
                sd = s.detach()
                logits = _logits(sd, scale, bias)
                if term.kind == "sigmoid":
                    grad = torch.sigmoid(logits).mul_(w)
                else:
                    grad = torch.zeros_like(logits)
                    if lse_r is not None:
                        grad.add_(torch.exp(logits - lse_r[i0:i1, None]), alpha=w)
                    if lse_c is not None:
                        grad.add_(torch.exp(logits - lse_c[None, j0:j1]), alpha=w)
                where = _positives(term, i0, i1, j0, j1)
                if where is not None:
                    n_dirs = 1 if term.kind in ("row", "col", "sigmoid") else 2
                    torch.diagonal(grad[where[0], where[1]]).sub_(w * n_dirs)
                grad.mul_(g)
                grad_scale.add_((grad * sd).sum(dtype=torch.float64))
                if bias is not None:
                    grad_bias.add_(grad.sum(dtype=torch.float64))
            if not inputs:
                continue
            grads = torch.autograd.grad(s, inputs, grad_outputs=grad.mul_(scale), allow_unused=True)
            k = 0
            if need_a:
                grad_feat[term.a][i0:i1] += grads[k]
                k += 1
            if need_b:
                grad_feat[term.b][j0:j1] += grads[k]
                k += 1
            p_iter = iter(grads[k:])
            for index, need in enumerate(need_param):
                if need:
                    gp = next(p_iter)
                    if gp is not None:
                        grad_param[index] += gp


# --------------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------------
def _resolve_tile(tile_size, n_rows: int, n_cols: int, pairwise: Pairwise, features: torch.Tensor) -> Optional[int]:
    if tile_size is None or tile_size == "auto":
        return auto_tile_size(n_rows, n_cols, _grid_factor(pairwise, features))
    if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 1:
        raise ValueError(f"`tile_size` must be None, 'auto' or an int >= 1, got {tile_size!r}")
    return tile_size


def _check_args(image, text, logit_scale, params, offset, n_cols, name_cols, *, same_rows=False):
    for t, name in ((image, "image_features"), (text, "text_features")):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() < 2 or t.shape[0] < 1:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"`{name}` must be a floating-point tensor of shape (N, ...) with N >= 1, got {shape}")
    if same_rows and image.shape[0] != text.shape[0]:
        raise ValueError(f"`image_features` and `text_features` must have the same number of rows, got "
                         f"{image.shape[0]} and {text.shape[0]}")
    if not (isinstance(logit_scale, torch.Tensor) and logit_scale.numel() == 1):
        raise ValueError(f"`logit_scale` must be a one-element tensor, got {logit_scale!r}")
    for p in params:
        if not isinstance(p, torch.Tensor):
            raise ValueError(f"`params` must hold tensors, got {type(p).__name__}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"`offset` must be an int >= 0, got {offset!r}")
    if offset + image.shape[0] > n_cols:
        raise ValueError(f"the positives at offset {offset} need {offset + image.shape[0]} rows in `{name_cols}`, "
                         f"got {n_cols}")


def tiled_softmax_loss(image: torch.Tensor, text: torch.Tensor, pairwise: Pairwise, *,
                       logit_scale: torch.Tensor, params: Sequence[torch.Tensor] = (),
                       image_all: Optional[torch.Tensor] = None, text_all: Optional[torch.Tensor] = None,
                       offset: int = 0, tile_size=None) -> torch.Tensor:
    """Symmetric InfoNCE (open_clip's ``ClipLoss``) on ``pairwise`` scores, tile by tile.

    Parameters
    ----------
    image, text : torch.Tensor, shape (n, ...)
        Projected features, row i of each a matched pair.
    pairwise : callable
        ``pairwise(a, b) -> (n_a, n_b)`` scores, float32 or float64 (it is called with autocast off and
        16-bit inputs upcast to float32); see the module docstring.
    logit_scale : torch.Tensor, one element, keyword-only
        Logits are ``logit_scale * scores``; its gradient is returned.
    params : sequence of torch.Tensor, keyword-only
        Every tensor with a gradient that ``pairwise`` reads besides its arguments (:func:`pairwise_for`).
    image_all, text_all : torch.Tensor, shape (M, ...), optional, keyword-only
        ``local_loss`` with gathered features (both or neither): ``image`` scored against ``text_all`` (the
        image direction) and ``image_all`` against ``text`` (the text direction), the positives of row i at
        column ``offset + i``; ``image`` and ``text`` are then this rank's rows. Without them the loss is
        the full (n, n) one (pass gathered features as ``image`` and ``text`` for the non-local loss).
    offset : int, default 0, keyword-only
        ``rank * n`` with ``image_all``.
    tile_size : int, "auto" or None, keyword-only
        The side of the square tiles; None or ``"auto"``: :func:`auto_tile_size` (the materialized loss
        where that is cheaper). An int at least the batch size gives one tile (still recomputed).

    Returns
    -------
    torch.Tensor, 0-dim
        The loss in nats, float32 (float64 for float64 inputs), also under autocast.
    """
    if (image_all is None) != (text_all is None):
        raise ValueError("`image_all` and `text_all` go together (local_loss), got only one of them")
    local = image_all is not None
    _check_args(image, text, logit_scale, params, offset if local else 0,
                text_all.shape[0] if local else text.shape[0], "text_all" if local else "text_features",
                same_rows=True)
    n = image.shape[0]
    n_cols = text_all.shape[0] if local else n
    tile = _resolve_tile(tile_size, n, n_cols, pairwise, image)
    if tile is None:
        return materialized_softmax_loss(image, text, pairwise, logit_scale=logit_scale, image_all=image_all,
                                         text_all=text_all, offset=offset)
    w = 1.0 / (2 * n)
    if local:
        features = (image, text_all, image_all, text)
        terms = (_Term(0, 1, 0, offset, n, "row", w), _Term(2, 3, offset, 0, n, "col", w))
    else:
        features = (image, text)
        terms = (_Term(0, 1, 0, 0, n, "both", w),)
    return _TiledLoss.apply(pairwise, terms, tile, len(features), logit_scale, None, *features, *params)


def tiled_sigmoid_loss(image: torch.Tensor, text: torch.Tensor, pairwise: Pairwise, *,
                       logit_scale: torch.Tensor, logit_bias: torch.Tensor, params: Sequence[torch.Tensor] = (),
                       offset: int = 0, tile_size=None) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss (open_clip's ``SigLipLoss``) on ``pairwise`` scores, tile by tile.

    Parameters
    ----------
    image : torch.Tensor, shape (n, ...)
        This rank's projected image features.
    text : torch.Tensor, shape (M, ...)
        Text features, all ranks' (gathered) under DDP; the positive of image row i is text row ``offset + i``.
    pairwise, params, tile_size
        As in :func:`tiled_softmax_loss`.
    logit_scale, logit_bias : torch.Tensor, one element each, keyword-only
        Logits are ``logit_scale * scores + logit_bias``.
    offset : int, default 0, keyword-only
        ``rank * n`` under DDP.

    Returns
    -------
    torch.Tensor, 0-dim
        ``-sum log sigmoid(y * logits) / n``, float32 (float64 for float64 inputs).
    """
    _check_args(image, text, logit_scale, params, offset, text.shape[0], "text_features")
    if not (isinstance(logit_bias, torch.Tensor) and logit_bias.numel() == 1):
        raise ValueError(f"`logit_bias` must be a one-element tensor, got {logit_bias!r}")
    n = image.shape[0]
    tile = _resolve_tile(tile_size, n, text.shape[0], pairwise, image)
    if tile is None:
        return materialized_sigmoid_loss(image, text, pairwise, logit_scale=logit_scale, logit_bias=logit_bias,
                                         offset=offset)
    terms = (_Term(0, 1, 0, offset, n, "sigmoid", 1.0 / n),)
    return _TiledLoss.apply(pairwise, terms, tile, 2, logit_scale, logit_bias, image, text, *params)
