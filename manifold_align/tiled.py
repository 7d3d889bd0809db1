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

With class ids (``class_ids``: same-class pairs left out of the negatives) each tile's mask is built from the
ids of its rows and columns, in the forward and again in the backward, so it costs no (N, N) memory either.

One forward and two score evaluations per tile: the result equals the materialized computation to rounding
(tests/test_tiled.py: 1e-5 relative in float32, 1e-10 in float64) for any score function.

The scores come from a :class:`~manifold_align.geometries.Geometry` (its ``_pairwise``, the tile formula, on
blocks of rows) or from any ``pairwise(a, b) -> (n, m)`` callable without parameters. A geometry's learnable
parameters get their gradient tile by tile, with respect to stand-ins for the parameters (non-leaf copies, so
that no per-use hook fires on a tile), summed and handed to the parameters once: a gradient rule on the
parameter's total (:func:`manifold_align.bounds.clamped`) sees the same total as in the materialized loss.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .dtypes import autocast_disabled
from .geometries import Geometry, scale_scores
from .validation import check_class_ids

__all__ = ["TiledLoss", "auto_tile_size", "tile_side", "tiled_sigmoid_loss", "tiled_softmax_loss"]

#: score entries of one tile (times the grid factor, see auto_tile_size); 2^21 float32 values are 8 MiB:
#: large enough that the tile's matmul runs at full speed, small enough to stay in a large cache
_TILE_BUDGET = 2**21
#: up to this many scores (times the grid factor) the materialized loss: no second evaluation of the
#: scores, and its (N, N) tensors are still small (2^24 float32 values are 64 MiB: oblique N = 4096, a
#: k = 16 lorentz grid at N = 1024)
_MATERIALIZE_UP_TO = 2**24


# --------------------------------------------------------------------------------------------------
# tile sizes and score sources
# --------------------------------------------------------------------------------------------------
def tile_side(grid_factor: int = 1) -> int:
    """The side T, a power of two >= 64, of square (T, T) tiles with at most 2^21 values times ``grid_factor``."""
    side = int(math.isqrt(_TILE_BUDGET // max(1, int(grid_factor))))
    return max(64, 1 << (side.bit_length() - 1))


def auto_tile_size(n_rows: int, n_cols: int, grid_factor: int = 1) -> Optional[int]:
    """The tile side for scoring ``n_rows`` against ``n_cols``, or None where the materialized loss is cheaper.

    Parameters
    ----------
    n_rows, n_cols : int
    grid_factor : int, default 1
        Values the score formula holds per score (:meth:`Geometry.score_grid`: ``k`` for a (k, n, m) grid
        such as ``lorentz``'s, 1 for a matmul).

    Returns
    -------
    int or None
        None when ``n_rows * n_cols * grid_factor`` is at most 2^24 (64 MiB of float32); else
        :func:`tile_side`.
    """
    if n_rows * n_cols * max(1, int(grid_factor)) <= _MATERIALIZE_UP_TO:
        return None
    return tile_side(grid_factor)


class _TileScores(nn.Module):
    """``geometry._pairwise`` as a module's forward, for ``torch.func.functional_call`` with stand-in parameters."""

    def __init__(self, geometry: Geometry) -> None:
        super().__init__()
        self.geometry = geometry

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.geometry._pairwise(a, b)


def _score_source(scores) -> tuple[Callable, tuple[torch.Tensor, ...]]:
    """``(fn(a, b, *params), params)`` of a Geometry (its trainable parameters) or a plain callable."""
    if isinstance(scores, Geometry):
        module = _TileScores(scores)
        named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
        names = tuple(name for name, _ in named)

        def fn(a, b, *params):
            if not params:
                return module(a, b)
            return torch.func.functional_call(module, dict(zip(names, params)), (a, b), strict=False)

        return fn, tuple(p for _, p in named)
    if not callable(scores):
        raise ValueError(f"`scores` must be a Geometry or a callable pairwise(a, b), got {type(scores).__name__}")
    return (lambda a, b: scores(a, b)), ()


def _grid_factor(scores, features: torch.Tensor) -> int:
    """A geometry's :meth:`~Geometry.score_grid`; for a plain callable k of the (N, k, d) features (safe for
    a per-token grid), 1 for (N, D)."""
    if isinstance(scores, Geometry):
        return scores.score_grid()
    return features.shape[1] if features.dim() == 3 else 1


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


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
    # the geometry's one logits formula, so that tiles round as the materialized loss does
    return scale_scores(s, scale, bias)


def _pos_values(logits: torch.Tensor, where) -> torch.Tensor:
    rows, cols, _ = where
    return torch.diagonal(logits[rows, cols])


def _dropped(term: _Term, ids, i0: int, i1: int, j0: int, j1: int, where) -> Optional[torch.Tensor]:
    """Boolean (i1 - i0, j1 - j0) mask of the tile's same-class pairs other than the positives (None without
    class ids): the pairs left out of the negatives."""
    if ids is None:
        return None
    same = ids[term.a][i0:i1, None] == ids[term.b][None, j0:j1]
    if where is not None:
        torch.diagonal(same[where[0], where[1]]).fill_(False)
    return same


class _TiledLoss(torch.autograd.Function):
    """Loss over tiles; backward recomputes every tile's scores (see the module docstring).

    Returns the loss and, without gradient, ``(sum of scores, sum of positive scores)`` of the first term (the
    image rows against their columns), for the diagnostics.
    """

    @staticmethod
    def forward(ctx, fn, terms, tile, n_features, ids, scale, bias, *tensors):  # noqa: D102
        features, params = tensors[:n_features], tensors[n_features:]
        scale_v = scale.detach().reshape(())
        bias_v = None if bias is None else bias.detach().reshape(())
        pairwise = lambda a, b: fn(a, b, *params)  # noqa: E731
        with torch.no_grad(), autocast_disabled(features[0].device):
            total, saved, stats = None, [], None
            for term in terms:
                value, lse_r, lse_c, sums = _forward_term(pairwise, term, features, ids, tile, scale_v, bias_v)
                total = value if total is None else total + value
                stats = sums if stats is None else stats
                saved += [lse_r, lse_c]
        # the class ids are integer inputs without gradient: an attribute, like the terms
        ctx.fn, ctx.terms, ctx.tile, ctx.n_features, ctx.ids = fn, terms, tile, n_features, ids
        ctx.has_bias = bias is not None
        ctx.save_for_backward(scale, *([bias] if bias is not None else []), *features, *params, *saved)
        ctx.mark_non_differentiable(stats)
        return total, stats

    @staticmethod
    def backward(ctx, grad_out, _grad_stats):  # noqa: D102
        saved = ctx.saved_tensors
        scale, rest = saved[0], saved[1:]
        bias = None
        if ctx.has_bias:
            bias, rest = rest[0], rest[1:]
        n_feat, n_terms = ctx.n_features, len(ctx.terms)
        features = rest[:n_feat]
        params = rest[n_feat: len(rest) - 2 * n_terms]
        lses = rest[len(rest) - 2 * n_terms:]
        needs = ctx.needs_input_grad[7:]
        need_feat, need_param = needs[:n_feat], needs[n_feat:]
        device = features[0].device
        compute = torch.promote_types(_upcast(features[0]).dtype, scale.dtype)
        grad_feat = [torch.zeros_like(f, dtype=_upcast(f).dtype) if need else None
                     for f, need in zip(features, need_feat)]
        # leaves standing in for the parameters, read through non-leaf views: a hook on a parameter (the clamp
        # rule of manifold_align.bounds) must see the sum over the tiles, not fire on every tile
        leaves = [p.detach().requires_grad_(need) for p, need in zip(params, need_param)]
        with torch.enable_grad():  # backward runs without grad mode: the views must record their origin
            standins = [leaf.view_as(leaf) for leaf in leaves]
        # float64 sums over the tiles: a parameter's gradient adds up every score's, with cancellation
        grad_param = [torch.zeros_like(p, dtype=torch.float64) if need else None for p, need in zip(params, need_param)]
        grad_scale = torch.zeros((), dtype=torch.float64, device=device)
        grad_bias = torch.zeros((), dtype=torch.float64, device=device)
        scale_v = scale.detach().reshape(())
        bias_v = None if bias is None else bias.detach().reshape(())
        g = grad_out.detach().reshape(()).to(compute)
        pairwise = lambda a, b: ctx.fn(a, b, *standins)  # noqa: E731
        wanted = [leaf for leaf, need in zip(leaves, need_param) if need]
        with autocast_disabled(device):
            for index, term in enumerate(ctx.terms):
                _backward_term(pairwise, term, features, ctx.ids, wanted, lses[2 * index], lses[2 * index + 1],
                               ctx.tile, scale_v, bias_v, g, grad_feat, [gp for gp in grad_param if gp is not None],
                               grad_scale, grad_bias)
        out_feat = [None if gf is None else gf.to(f.dtype) for gf, f in zip(grad_feat, features)]
        return (None, None, None, None, None,
                grad_scale.to(scale.dtype).reshape(scale.shape) if ctx.needs_input_grad[5] else None,
                grad_bias.to(bias.dtype).reshape(bias.shape) if ctx.has_bias and ctx.needs_input_grad[6] else None,
                *out_feat, *(None if gp is None else gp.to(p.dtype) for gp, p in zip(grad_param, params)))


def _forward_term(pairwise, term, features, ids, tile, scale, bias):
    """One term without a graph: (loss contribution, row log-sum-exps or None, column log-sum-exps or None,
    (sum of scores, sum of positive scores, sum and count of the scores of dropped same-class pairs)).

    ``ids``: one class-id vector per entry of ``features``, or None; a dropped pair's logit is left out of
    the log-sum-exps (``-inf``) and its sigmoid term out of the sum."""
    a, b = features[term.a], features[term.b]
    n, m = a.shape[0], b.shape[0]
    rows = term.kind in ("row", "both")
    cols = term.kind in ("col", "both")
    lse_r = lse_c = partial = pos_logits = pos_scores = score_sum = None
    for i0, i1 in _tiles(n, tile):
        a_t = _upcast(a[i0:i1])
        row_acc = None
        for j0, j1 in _tiles(m, tile):
            s = _upcast(pairwise(a_t, _upcast(b[j0:j1])))
            logits = _logits(s, scale, bias)
            if pos_logits is None:  # the dtypes are known once the first tile is scored
                new = lambda size, fill: torch.full((size,), fill, dtype=logits.dtype, device=logits.device)  # noqa: E731
                lse_r = new(n, -math.inf) if rows else None
                lse_c = new(m, -math.inf) if cols else None
                partial = new(n, 0.0) if term.kind == "sigmoid" else None  # per-row sums of softplus(logits)
                pos_logits, pos_scores = new(term.n_pos, 0.0), new(term.n_pos, 0.0)
                score_sum = torch.zeros((), dtype=torch.float64, device=logits.device)
                dropped_sum = torch.zeros((), dtype=torch.float64, device=logits.device)
                dropped_count = torch.zeros((), dtype=torch.float64, device=logits.device)
            score_sum += s.sum(dtype=torch.float64)
            where = _positives(term, i0, i1, j0, j1)
            if where is not None:
                pos_logits[where[2]] = _pos_values(logits, where)
                pos_scores[where[2]] = _pos_values(s, where)
            drop = _dropped(term, ids, i0, i1, j0, j1, where)
            if drop is not None:
                dropped_sum += torch.where(drop, s, 0.0).sum(dtype=torch.float64)
                dropped_count += drop.sum()
                # -inf: exp(-inf) = 0 in the log-sum-exps; softplus(-inf) = 0 in the sigmoid sum
                logits = logits.masked_fill(drop, -math.inf)
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
    sums = torch.stack([score_sum, pos_scores.sum(dtype=torch.float64), dropped_sum, dropped_count])
    if term.kind == "sigmoid":
        # -log sigmoid(y l) = softplus(-y l): softplus(l) for the negatives, softplus(-l) = softplus(l) - l for
        # the positives
        return (partial.sum() - pos_logits.sum()) * term.weight, None, None, sums
    value = 0.0
    if rows:
        value = value + (lse_r[term.row_offset: term.row_offset + term.n_pos] - pos_logits).sum()
    if cols:
        value = value + (lse_c[term.col_offset: term.col_offset + term.n_pos] - pos_logits).sum()
    return value * term.weight, lse_r, lse_c, sums


def _backward_term(pairwise, term, features, ids, leaves, lse_r, lse_c, tile, scale, bias, g, grad_feat,
                   grad_leaves, grad_scale, grad_bias):
    """Accumulate one term's gradients into ``grad_feat``, ``grad_leaves`` (one per entry of ``leaves``, the
    parameter stand-ins ``pairwise`` reads), ``grad_scale`` and ``grad_bias``; the dropped same-class pairs
    (``ids``, as in :func:`_forward_term`) get none, their mask recomputed per tile."""
    a, b = features[term.a], features[term.b]
    need_a, need_b = grad_feat[term.a] is not None, grad_feat[term.b] is not None
    n, m = a.shape[0], b.shape[0]
    w = term.weight
    n_dirs = 2 if term.kind == "both" else 1
    for i0, i1 in _tiles(n, tile):
        a_t = _upcast(a[i0:i1].detach()).requires_grad_(need_a)
        for j0, j1 in _tiles(m, tile):
            b_t = _upcast(b[j0:j1].detach()).requires_grad_(need_b)
            inputs = ([a_t] if need_a else []) + ([b_t] if need_b else []) + list(leaves)
            with torch.set_grad_enabled(bool(inputs)):
                s = _upcast(pairwise(a_t, b_t))
            with torch.no_grad():
                sd = s.detach()
                logits = _logits(sd, scale, bias)
                # d loss / d logits: the softmaxes (or sigmoids) minus the labels, times the term's weight
                if term.kind == "sigmoid":
                    grad = torch.sigmoid(logits).mul_(w)
                else:
                    grad = torch.zeros_like(logits)
                    if lse_r is not None:
                        grad.add_(torch.exp(logits - lse_r[i0:i1, None]), alpha=w)
                    if lse_c is not None:
                        grad.add_(torch.exp(logits - lse_c[None, j0:j1]), alpha=w)
                where = _positives(term, i0, i1, j0, j1)
                drop = _dropped(term, ids, i0, i1, j0, j1, where)
                if drop is not None:
                    grad.masked_fill_(drop, 0.0)
                if where is not None:
                    torch.diagonal(grad[where[0], where[1]]).sub_(w * n_dirs)
                grad.mul_(g)
                grad_scale.add_((grad * sd).sum(dtype=torch.float64))
                if bias is not None:
                    grad_bias.add_(grad.sum(dtype=torch.float64))
            if not inputs or s.grad_fn is None:
                continue
            grads = torch.autograd.grad(s, inputs, grad_outputs=grad.mul_(scale), allow_unused=True)
            k = 0
            if need_a:
                grad_feat[term.a][i0:i1] += grads[k]
                k += 1
            if need_b:
                grad_feat[term.b][j0:j1] += grads[k]
                k += 1
            for acc, gp in zip(grad_leaves, grads[k:]):
                if gp is not None:
                    acc += gp


# --------------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------------
class TiledLoss(NamedTuple):
    """Result of the tiled losses: the loss and, without gradient, the diagnostics of the materialized loss.

    Attributes
    ----------
    loss : torch.Tensor, 0-dim
    positive_similarity, negative_similarity : torch.Tensor, 0-dim
        Mean score of matched and unmatched pairs over the image rows scored (NaN without unmatched pairs).
    """

    loss: torch.Tensor
    positive_similarity: torch.Tensor
    negative_similarity: torch.Tensor


def _resolve_tile(tile_size, scores, features: torch.Tensor) -> int:
    if tile_size == "auto":
        return tile_side(_grid_factor(scores, features))
    if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 1:
        raise ValueError(f"`tile_size` must be 'auto' or an int >= 1, got {tile_size!r}")
    return tile_size


def _check_args(image, text, logit_scale, offset, n_cols, name_cols, *, same_rows=False):
    for t, name in ((image, "image_features"), (text, "text_features")):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() < 2 or t.shape[0] < 1:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"`{name}` must be a floating-point tensor of shape (N, ...) with N >= 1, got {shape}")
    if same_rows and image.shape[0] != text.shape[0]:
        raise ValueError(f"`image_features` and `text_features` must have the same number of rows, got "
                         f"{image.shape[0]} and {text.shape[0]}")
    if not (isinstance(logit_scale, torch.Tensor) and logit_scale.numel() == 1):
        raise ValueError(f"`logit_scale` must be a one-element tensor, got {logit_scale!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"`offset` must be an int >= 0, got {offset!r}")
    if offset + image.shape[0] > n_cols:
        raise ValueError(f"the positives at offset {offset} need {offset + image.shape[0]} rows in `{name_cols}`, "
                         f"got {n_cols}")


def _result(out, n_rows: int, n_cols: int) -> TiledLoss:
    loss, (score_sum, positive_sum, dropped_sum, dropped_count) = out
    n_negative = (n_rows * n_cols - n_rows) - dropped_count  # a tensor: no host read
    dtype = loss.dtype
    negative = torch.where(n_negative > 0, (score_sum - positive_sum - dropped_sum) / n_negative.clamp(min=1),
                           torch.full_like(score_sum, math.nan))
    return TiledLoss(loss, (positive_sum / n_rows).to(dtype), negative.to(dtype))


def _class_ids(class_ids, class_ids_all, n: int, n_all: Optional[int], device):
    """The checked class ids of the rows and of the gathered rows (``class_ids_all`` needed iff ``n_all``)."""
    if class_ids is None:
        if class_ids_all is not None:
            raise ValueError("`class_ids_all` goes with `class_ids`, got it without `class_ids`")
        return None, None
    check_class_ids(class_ids, n, device)
    if n_all is None:
        if class_ids_all is not None:
            raise ValueError("`class_ids_all` is only used with gathered features (local_loss), got it without")
        return class_ids, None
    if class_ids_all is None:
        raise ValueError("`class_ids_all` (the gathered rows' class ids) is required with `class_ids` and gathered "
                         "features, got None")
    check_class_ids(class_ids_all, n_all, device, "class_ids_all")
    return class_ids, class_ids_all


def tiled_softmax_loss(image: torch.Tensor, text: torch.Tensor, scores, *, logit_scale: torch.Tensor,
                       image_all: Optional[torch.Tensor] = None, text_all: Optional[torch.Tensor] = None,
                       offset: int = 0, tile_size="auto", class_ids: Optional[torch.Tensor] = None,
                       class_ids_all: Optional[torch.Tensor] = None) -> TiledLoss:
    """Symmetric InfoNCE (open_clip's ``ClipLoss``) tile by tile.

    Parameters
    ----------
    image, text : torch.Tensor, shape (n, k, d)
        Projected features, row i of each a matched pair.
    scores : Geometry or callable
        The geometry that scores them (its ``_pairwise`` per tile, its parameters' gradients returned), or a
        ``pairwise(a, b) -> (n_a, n_b)`` callable without parameters. Called with autocast off and 16-bit inputs
        upcast to float32.
    logit_scale : torch.Tensor, one element, keyword-only
        Logits are ``logit_scale * scores``; its gradient is returned.
    image_all, text_all : torch.Tensor, shape (M, k, d), optional, keyword-only
        ``local_loss`` with gathered features (both or neither): ``image`` scored against ``text_all`` (the image
        direction) and ``image_all`` against ``text`` (the text direction), the positives of row i at column
        ``offset + i``; ``image`` and ``text`` are then this rank's rows. Without them the loss is the full (n, n)
        one (pass gathered features as ``image`` and ``text`` for the non-local loss).
    offset : int, default 0, keyword-only
        ``rank * n`` with ``image_all``.
    tile_size : int or "auto", default "auto", keyword-only
        The side of the square tiles; ``"auto"``: :func:`tile_side` of the geometry's ``score_grid()``.
    class_ids : torch.Tensor, shape (n,), integer, optional, keyword-only
        Class of each pair of ``image`` / ``text``: a pair of different rows with equal ids is left out of the
        negatives in both directions (its logit out of the log-sum-exp); a row's own pair stays its positive.
    class_ids_all : torch.Tensor, shape (M,), integer, optional, keyword-only
        With ``image_all`` and ``class_ids``: the gathered rows' class ids.

    Returns
    -------
    TiledLoss
        The loss in nats, float32 (float64 for float64 inputs), also under autocast, and the diagnostics
        (unmatched pairs: those counted as negatives).
    """
    if (image_all is None) != (text_all is None):
        raise ValueError("`image_all` and `text_all` go together (local_loss), got only one of them")
    local = image_all is not None
    _check_args(image, text, logit_scale, offset if local else 0, text_all.shape[0] if local else text.shape[0],
                "text_all" if local else "text_features", same_rows=True)
    ids, ids_all = _class_ids(class_ids, class_ids_all, image.shape[0], image_all.shape[0] if local else None,
                              image.device)
    fn, params = _score_source(scores)
    tile = _resolve_tile(tile_size, scores, image)
    n = image.shape[0]
    w = 1.0 / (2 * n)
    if local:
        features = (image, text_all, image_all, text)
        ids = None if ids is None else (ids, ids_all, ids_all, ids)
        terms = (_Term(0, 1, 0, offset, n, "row", w), _Term(2, 3, offset, 0, n, "col", w))
    else:
        features = (image, text)
        ids = None if ids is None else (ids, ids)
        terms = (_Term(0, 1, 0, 0, n, "both", w),)
    out = _TiledLoss.apply(fn, terms, tile, len(features), ids, logit_scale, None, *features, *params)
    return _result(out, n, features[1].shape[0])


def tiled_sigmoid_loss(image: torch.Tensor, text: torch.Tensor, scores, *, logit_scale: torch.Tensor,
                       logit_bias: torch.Tensor, offset: int = 0, tile_size="auto",
                       class_ids: Optional[torch.Tensor] = None,
                       class_ids_all: Optional[torch.Tensor] = None) -> TiledLoss:
    """SigLIP's pairwise sigmoid loss (open_clip's ``SigLipLoss``) tile by tile.

    Parameters
    ----------
    image : torch.Tensor, shape (n, k, d)
        This rank's projected image features.
    text : torch.Tensor, shape (M, k, d)
        Text features, all ranks' (gathered) under DDP; the positive of image row i is text row ``offset + i``.
    scores, tile_size
        As in :func:`tiled_softmax_loss`.
    logit_scale, logit_bias : torch.Tensor, one element each, keyword-only
        Logits are ``logit_scale * scores + logit_bias``.
    offset : int, default 0, keyword-only
        ``rank * n`` under DDP.
    class_ids : torch.Tensor, shape (n,), integer, optional, keyword-only
        Class of each image row: an image and a caption of different pairs with equal ids contribute no term
        (neither negative nor positive).
    class_ids_all : torch.Tensor, shape (M,), integer, optional, keyword-only
        With ``class_ids``: the class of each ``text`` row. Optional when M = n (then ``class_ids``).

    Returns
    -------
    TiledLoss
        ``-sum log sigmoid(y * logits) / n`` over the pairs kept, float32 (float64 for float64 inputs), and the
        diagnostics.
    """
    _check_args(image, text, logit_scale, offset, text.shape[0], "text_features")
    if not (isinstance(logit_bias, torch.Tensor) and logit_bias.numel() == 1):
        raise ValueError(f"`logit_bias` must be a one-element tensor, got {logit_bias!r}")
    gathered = text.shape[0] != image.shape[0] or class_ids_all is not None
    ids, ids_all = _class_ids(class_ids, class_ids_all, image.shape[0], text.shape[0] if gathered else None,
                              image.device)
    fn, params = _score_source(scores)
    tile = _resolve_tile(tile_size, scores, image)
    n = image.shape[0]
    terms = (_Term(0, 1, 0, offset, n, "sigmoid", 1.0 / n),)
    ids = None if ids is None else (ids, ids if ids_all is None else ids_all)
    out = _TiledLoss.apply(fn, terms, tile, 2, ids, logit_scale, logit_bias, image, text, *params)
    return _result(out, n, text.shape[0])
