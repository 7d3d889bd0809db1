"""Row-wise building blocks shared by the manifolds whose points are k factors stored as rows.

A point of :class:`~manifold_align.manifolds.Oblique` or :class:`~manifold_align.manifolds.Hyperboloid`
(and a feature of any k-token geometry) is a tensor of shape ``(..., k, w)``: row ``b`` is factor ``b``.
What every such manifold needs once lives here:

* :func:`row_dot`, :func:`row_norm`: per-row inner product and norm, shape ``(..., k, 1)``;
* :func:`safe_sqrt`: the one square root with the one NaN rule (NaN in, NaN out; gradient 0, not inf,
  at 0);
* :func:`recompute_pairs`: the near-pair kernel of every ``cdist`` -- a fast (k, n, m) grid from one
  batched matmul, with the few entries the matmul cannot resolve replaced by an exact formula on their
  gathered rows;
* :class:`RowManifold`: the shape checks (``_check_shape`` / ``_assert_shape`` / ``check_point`` and
  ``assert_check_point``) of a geoopt manifold on ``(..., k, w)`` tensors.

Conventions: 16-bit inputs are computed in float32 (:func:`upcast`); reductions run out of autocast.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple, Union

import torch
from geoopt.manifolds.base import Manifold
from geoopt.utils import size2shape
from torch.utils.checkpoint import checkpoint

from ..dtypes import autocast_disabled, compute_dtype
from ..validation import check_finite, check_floating, describe_shape

__all__ = [
    "PAIR_CHUNK",
    "RowManifold",
    "clamped_acos",
    "clamped_asin",
    "flat_indices",
    "recompute_pairs",
    "result_dtype",
    "row_dot",
    "row_norm",
    "nearest_pairs",
    "safe_sqrt",
    "upcast",
]

#: values per chunk of gathered rows in :func:`recompute_pairs` (``PAIR_CHUNK // w`` pairs at a time)
PAIR_CHUNK = 2**20



# ----------------------------------------------------------------------------------------------
# dtypes
# ----------------------------------------------------------------------------------------------
def upcast(t: torch.Tensor) -> torch.Tensor:
    """``t`` in its compute dtype: float32 for 16-bit floats, else ``t`` itself (no copy)."""
    return t.to(compute_dtype(t.dtype))


def result_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The promoted dtype of any number of tensors (``torch.result_type`` takes two at most)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


# ----------------------------------------------------------------------------------------------
# row-wise formulas
# ----------------------------------------------------------------------------------------------
def row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row inner products without an ``(..., k, w)`` temporary.

    Parameters
    ----------
    a, b : torch.Tensor, shape (..., k, w)
        Broadcastable.

    Returns
    -------
    torch.Tensor, shape (..., k, 1)
        A batched matmul (einsum), kept out of autocast, which would run it in 16 bits.
    """
    with autocast_disabled(a.device):
        return torch.einsum("...d,...d->...", a, b).unsqueeze(-1)


def row_norm(a: torch.Tensor) -> torch.Tensor:
    """Per-row Euclidean norms, shape ``(..., k, 1)``; gradient 0 at a zero row (torch's norm backward)."""
    return torch.linalg.vector_norm(a, dim=-1, keepdim=True)


def safe_sqrt(t: torch.Tensor) -> torch.Tensor:
    """``sqrt(max(t, 0))`` for finite ``t``, with gradient 0 (not inf, which times 0 gives NaN) where ``t <= 0``.

    The one NaN rule of the manifolds: a non-finite input never comes out finite. NaN gives NaN (the mask
    is ``t <= 0``, False for NaN, never ``not t > 0``, which would score a NaN as 0), +Inf gives +Inf, and
    -Inf (an overflowed negative form, such as the Lorentz norm of a vector with an infinite time) gives
    NaN, as ``sqrt`` does, not 0.

    Parameters
    ----------
    t : torch.Tensor, any shape

    Returns
    -------
    torch.Tensor, same shape and dtype
    """
    zero = (t <= 0) & (t != -math.inf)
    return torch.where(zero, torch.zeros_like(t), torch.sqrt(torch.where(zero, torch.ones_like(t), t)))


class _ClampedArc(torch.autograd.Function):
    """``asin`` or ``acos`` of ``v`` clamped to [-1, 1]; gradient 0 (not inf) where ``|v| >= 1``."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, use_acos: bool) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(v)
        ctx.sign = -1.0 if use_acos else 1.0
        v = v.clamp(-1, 1)  # NaN passes through clamp, asin and acos
        return torch.acos(v) if use_acos else torch.asin(v)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        (v,) = ctx.saved_tensors
        h = 1 - v * v
        inside = h > 0
        return torch.where(inside, ctx.sign * grad * torch.rsqrt(torch.where(inside, h, torch.ones_like(h))), 0), None


def clamped_acos(v: torch.Tensor) -> torch.Tensor:
    """``acos(v)`` with ``v`` clamped to [-1, 1] (rounding past 1), gradient 0 (not inf) at ``|v| >= 1``; NaN
    stays NaN."""
    return _ClampedArc.apply(v, True)


def clamped_asin(v: torch.Tensor) -> torch.Tensor:
    """``asin(v)`` with ``v`` clamped to [-1, 1], gradient 0 (not inf) at ``|v| >= 1``; NaN stays NaN."""
    return _ClampedArc.apply(v, False)


# ----------------------------------------------------------------------------------------------
# the near-pair kernel of cdist
# ----------------------------------------------------------------------------------------------
def flat_indices(mask: torch.Tensor) -> Optional[torch.Tensor]:
    """Flat indices (int64, shape (P,)) of the True entries of ``mask``, or None when there are none.

    Flat indices (8 bytes per entry) instead of ``(P, 3)`` triples; one device sync (the count of P).
    """
    flat = torch.nonzero(mask.reshape(-1)).squeeze(1)
    return flat if flat.numel() else None


def nearest_pairs(key: torch.Tensor) -> torch.Tensor:
    """Flat indices of the nearest pairs of a (k, n, m) grid, without a device sync: for every row its nearest column
    and for every column its nearest row (smallest ``key``), each pair once (-1 where a column's nearest pair is
    already its row's), shape (k (n + m),).

    The candidates a sync-free ``cdist`` recomputes exactly (the caller marks those that are not near with -1 for
    :func:`recompute_pairs`): they hold the diagonal of ``cdist(x, x)`` and every pair that is the nearest of its row
    or column, where near pairs of embeddings are. A near pair that is neither keeps the matmul value (finite, with
    the fast formula's error); the manifolds' own ``cdist`` recompute every near pair instead, with one sync.
    """
    k, n, m = key.shape
    token = torch.arange(k, device=key.device)[:, None] * (n * m)
    nearest_row = key.argmin(1)  # (k, m)
    by_row = token + torch.arange(n, device=key.device) * m + key.argmin(2)  # (k, n)
    by_column = token + nearest_row * m + torch.arange(m, device=key.device)  # (k, m)
    # a pair nearest of both its row and its column once only (-1 the second time): a pair written twice by
    # recompute_pairs would get its gradient twice
    by_column = torch.where(by_row.gather(1, nearest_row) == by_column, -1, by_column)
    return torch.cat([by_row.reshape(-1), by_column.reshape(-1)])


def _gather_and_apply(pair_fn, x, y, part):
    n, m = x.shape[0], y.shape[0]
    b, i, j = part // (n * m), part // m % n, part % m
    return pair_fn(x[i, b], y[j, b])


def recompute_pairs(
    grid: torch.Tensor,
    flat: Optional[torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    pair_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    chunk: Optional[int] = None,
) -> torch.Tensor:
    """Replace entries of a (k, n, m) grid by an exact formula evaluated on their gathered rows.

    Entry ``(b, i, j)`` of ``grid`` belongs to rows ``x[i, b]`` and ``y[j, b]``. For each flat index
    ``p = b n m + i m + j`` in ``flat`` the entry becomes ``pair_fn(x[i, b], y[j, b])``. The rows are
    gathered in chunks of at most ``chunk`` values; under autograd each chunk is checkpointed (its rows
    are gathered again in backward, not stored), so the kernel's memory stays ``O(chunk)`` however many
    pairs it recomputes. ``grid`` is not modified; gradients flow into ``grid`` at the other entries and
    into ``x``, ``y`` (and anything ``pair_fn`` closes over, such as a learnable curvature) through the
    recomputed ones.

    Parameters
    ----------
    grid : torch.Tensor, shape (k, n, m)
        The fast values (for example angles or distances from one batched matmul).
    flat : torch.Tensor of int64, shape (P,), or None
        Flat indices into ``grid`` (:func:`flat_indices`); negative entries mark no pair (the sync-free
        candidates that are not near: they are computed on pair 0 and written nowhere); None or empty: ``grid`` is returned as is.
    x : torch.Tensor, shape (n, k, w)
    y : torch.Tensor, shape (m, k, w)
    pair_fn : callable ``(xr, yr) -> values``
        ``xr``, ``yr`` of shape (P', w), matched rows; returns shape (P',), in ``grid``'s dtype.
    chunk : int, optional, keyword-only
        Gathered values per chunk (``chunk // w`` pairs at a time); default :data:`PAIR_CHUNK`.

    Returns
    -------
    torch.Tensor, shape (k, n, m)
    """
    if flat is None or flat.numel() == 0:
        return grid
    per_chunk = max(1, (PAIR_CHUNK if chunk is None else chunk) // x.shape[-1])
    track = torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)
    # padding (-1) gathers pair 0, whose exact value has a finite gradient, and writes to a slot past the grid
    gather = flat.clamp(min=0)
    values = [
        checkpoint(_gather_and_apply, pair_fn, x, y, part, use_reentrant=False, preserve_rng_state=False)
        if track
        else _gather_and_apply(pair_fn, x, y, part)
        for part in gather.split(per_chunk)
    ]
    size = grid.numel()
    target = torch.where(flat < 0, size, flat)
    extended = torch.cat([grid.reshape(-1), grid.new_zeros(1)])
    return extended.index_put((target,), torch.cat(values))[:size].view_as(grid)


# ----------------------------------------------------------------------------------------------
# shape checks of a manifold on (..., k, w) tensors
# ----------------------------------------------------------------------------------------------
class RowManifold(Manifold):
    """A geoopt manifold whose points are ``(..., k, w)`` tensors, k factors as rows (``ndim = 2``).

    Subclasses set :attr:`row_width_name` (how ``w`` is written in messages, such as ``"d + 1"``),
    :attr:`min_d` and :attr:`row_offset` (``w = d + row_offset``), and describe a row in
    :attr:`row_description`. The shape checks then come in geoopt's pair: ``_check_shape(shape, name) ->
    (ok, reason)`` and ``_assert_shape(tensor, name)``, which raises with the reason; ``check_point`` and
    ``assert_check_point`` add finiteness.

    Parameters
    ----------
    k : int, optional
        Number of factors (rows). ``None`` accepts any k >= 1.
    d : int, optional
        Dimension parameter of each factor; rows have ``d + row_offset`` entries. ``None`` accepts any
        ``d >= min_d``.
    """

    ndim = 2
    reversible = False
    row_width_name = "d"
    row_offset = 0
    min_d = 1
    row_description = "rows"

    def __init__(self, k: Optional[int] = None, d: Optional[int] = None):
        super().__init__()
        self.k = self._validate_size(k, "k", 1)
        self.d = self._validate_size(d, "d", self.min_d)

    @staticmethod
    def _validate_size(value: Optional[int], name: str, minimum: int) -> Optional[int]:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"`{name}` must be None or an int >= {minimum}, got {value!r}")
        return value

    def _expected_shape(self) -> str:
        k = "k" if self.k is None else self.k
        width = self.row_width_name if self.d is None else self.d + self.row_offset
        return f"(..., {k}, {width})"

    def _check_shape(self, shape: Tuple[int, ...], name: str) -> Tuple[bool, Optional[str]]:
        shape = tuple(shape)
        ok = (
            len(shape) >= 2
            and shape[-1] >= self.min_d + self.row_offset
            and shape[-2] >= 1
            and (self.k is None or shape[-2] == self.k)
            and (self.d is None or shape[-1] == self.d + self.row_offset)
        )
        if ok:
            return True, None
        return False, (
            f"`{name}` must have shape {self._expected_shape()} ({self.row_description}), "
            f"got shape {describe_shape(shape)}"
        )

    def _assert_shape(self, tensor: torch.Tensor, name: str) -> None:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(
                f"`{name}` must be a torch.Tensor of shape {self._expected_shape()}, got {type(tensor).__name__}"
            )
        ok, reason = self._check_shape(tensor.shape, name)
        if not ok:
            raise ValueError(reason)
        check_floating(tensor, name)

    def _checked_size(self, *size) -> Tuple[int, ...]:
        """``size`` (ints or one tuple) as a shape, refused with the reason unless it is a point's shape."""
        shape = size2shape(*size)
        ok, reason = self._check_shape(shape, "size")
        if not ok:
            raise ValueError(reason)
        return shape

    def check_point(self, x: torch.Tensor, *, explain=False) -> Union[Tuple[bool, Optional[str]], bool]:
        """Check shape and finiteness of ``x`` (not the manifold's constraint; see ``check_point_on_manifold``)."""
        ok, reason = self._check_shape(x.shape, "x")
        if ok and not bool(torch.isfinite(x).all()):
            ok, reason = False, "`x` has non-finite values (NaN or Inf)"
        return (ok, reason) if explain else ok

    def assert_check_point(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` has the manifold's shape and finite values."""
        self._assert_shape(x, "x")
        check_finite(x, "x")
