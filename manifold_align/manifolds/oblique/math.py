"""The functional math of the oblique manifold OB(d, k): k unit spheres S^(d-1) as the rows of ``(..., k, d)``.

No checks and no dtype handling here: the functions take tensors already in their compute dtype
(:func:`~manifold_align.manifolds.rows.upcast`) and broadcast over the leading dims.
:class:`~manifold_align.manifolds.Oblique` validates its arguments and calls them. Formulas and numerical
choices are in ``docs/geometry.md``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ...dtypes import autocast_disabled
from ..rows import clamped_acos, flat_indices, nearest_pairs, recompute_pairs, row_dot, row_norm

__all__ = [
    "NEAR_COSINE",
    "angle_grid",
    "chord_row_angle",
    "expmap",
    "logmap",
    "proju",
    "row_angle",
    "unit_rows",
]

#: ``|cos|`` above this is recomputed from the rows in :func:`angle_grid`: ``acos`` of a rounded cosine
#: has an error of about ``eps / sin(theta)``
NEAR_COSINE = 0.95


def _first_basis_vector(like: torch.Tensor) -> torch.Tensor:
    e1 = torch.zeros(like.shape[-1], dtype=like.dtype, device=like.device)
    e1[0] = 1
    return e1


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Normalize each row; a zero row becomes e_1 = (1, 0, ..., 0) instead of 0/0 = NaN.

    A row with NaN or Inf comes out with NaN (``n == 0`` is False for a NaN norm): replacing it by
    e_1 would turn bad input into a plausible point.

    Parameters
    ----------
    x : torch.Tensor, shape (..., k, d)

    Returns
    -------
    torch.Tensor, shape (..., k, d)
    """
    n = row_norm(x)
    zero = n == 0
    unit = x / torch.where(zero, torch.ones_like(n), n)
    return torch.where(zero, _first_basis_vector(x), unit)


def row_angle(x: torch.Tensor, y: torch.Tensor, y_minus_x: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Angle between matching unit rows, ``2 atan2(|x - y|, |x + y|)``: relative accuracy ~eps on all of [0, pi].

    Parameters
    ----------
    x, y : torch.Tensor, shape (..., k, d)
    y_minus_x : torch.Tensor, optional
        ``y - x`` when the caller has it (saves computing the chord again).

    Returns
    -------
    torch.Tensor, shape (..., k)
    """
    chord = y - x if y_minus_x is None else y_minus_x
    return 2 * torch.atan2(torch.linalg.vector_norm(chord, dim=-1), torch.linalg.vector_norm(x + y, dim=-1))


class _ChordAngle(torch.autograd.Function):
    """Angle from chord length on the unit sphere, ``2 asin(a / 2)``, gradient 0 at ``a >= 2``.

    ``a = |x - y|`` for unit rows. The derivative ``2 / sqrt(4 - a^2) = 2 / |x + y|`` is infinite
    at antipodes, where the distance has a kink anyway; the backward returns 0 there instead of
    ``inf`` (which times 0 would give NaN), like torch's norm backward at the zero vector.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(a)
        # The clamp absorbs rounding (a slightly above 2) but would turn an Inf chord, from Inf
        # input, into a plausible pi; adding 0 * a (alpha=0, fused in one pass) puts NaN back there
        # (0 * Inf = NaN) and adds exactly 0 elsewhere. NaN passes through clamp and asin by itself.
        # In place: one temporary instead of five (measured as fast as the plain clamp-and-asin).
        return (0.5 * a).clamp_(max=1).asin_().mul_(2).add_(a, alpha=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        (a,) = ctx.saved_tensors
        h = 4 - a * a
        inside = h > 0
        return torch.where(inside, 2 * grad * torch.rsqrt(torch.where(inside, h, torch.ones_like(h))), 0)


def chord_row_angle(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Angle between matching unit rows from ``|x - y|`` alone: one temporary and one reduction.

    Uses ``|x + y|^2 = 4 - |x - y|^2`` (unit rows): exact near 0, but near antipodes the rounding
    of ``|x - y|`` and of the unit norms (~eps) becomes an absolute floor of ~sqrt(eps) rad at
    theta = pi (~1e-3 in float32, ~3e-8 in float64, per sphere).

    Parameters
    ----------
    x, y : torch.Tensor, shape (..., k, d)

    Returns
    -------
    torch.Tensor, shape (..., k)
    """
    return _ChordAngle.apply(torch.linalg.vector_norm(x - y, dim=-1))


def _row_angle_pair(xr: torch.Tensor, yr: torch.Tensor) -> torch.Tensor:
    # (P, d), (P, d) -> (P,): the exact formula for recompute_pairs
    return row_angle(xr, yr)


def angle_grid(xu: torch.Tensor, yu: torch.Tensor, *, precise: bool = True,
               sync_free: bool = False) -> torch.Tensor:
    """Per-sphere angles of all pairs, shape (k, n, m), from one batched matmul.

    ``theta = acos(x_b . y_b)``; a rounded cosine gives an angle error of about ``eps / sin(theta)``,
    so with ``precise`` the entries with ``|cos| > NEAR_COSINE`` are recomputed exactly by
    :func:`row_angle` from their gathered rows (:func:`~manifold_align.manifolds.rows.recompute_pairs`).

    Parameters
    ----------
    xu : torch.Tensor, shape (n, k, d)
        Unit rows (:func:`unit_rows`).
    yu : torch.Tensor, shape (m, k, d)
    precise : bool, keyword-only

    Returns
    -------
    torch.Tensor, shape (k, n, m)
    """
    # autocast would run the matmul in 16 bits: cosines with ~3 significant digits
    with autocast_disabled(xu.device):
        cos = torch.bmm(xu.transpose(0, 1), yu.permute(1, 2, 0))  # (k, n, m)
    theta = clamped_acos(cos)
    if not precise or cos.device.type == "meta":
        return theta
    magnitude = cos.detach().abs()
    if sync_free:  # the geometries' scores: the nearest pairs of every row and column, no device sync
        flat = nearest_pairs(-magnitude)
        near = torch.where(magnitude.reshape(-1)[flat] > NEAR_COSINE, flat, -1)
    else:
        near = flat_indices(magnitude > NEAR_COSINE)
    return recompute_pairs(theta, near, xu, yu, _row_angle_pair)


def proju(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Tangent projection ``u_b - <x_b, u_b> x_b`` per row, shape (..., k, d)."""
    return torch.addcmul(u, x, row_dot(x, u), value=-1)


def expmap(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Exponential map ``cos(|u_b|) x_b + sinc(|u_b|) u_b`` per row, shape (..., k, d).

    ``sin(t)/t`` is ``torch.sinc(t / pi)``, exact (= 1) and differentiable at ``t = 0``.
    """
    n = row_norm(u)
    # one parameter-sized result, updated in place (the product's backward does not need it)
    out = x * torch.cos(n)
    return out.addcmul_(u, torch.sinc(n / math.pi))


def logmap(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Logarithmic map ``theta_b w_b / |w_b|`` per row, ``w_b`` the tangent part of ``y_b - x_b``.

    See :meth:`manifold_align.manifolds.Oblique.logmap` for the antipodal case.
    """
    diff = y - x
    # (y - x) - <x, y - x> x, not y - <x, y> x: relative accuracy eps even for nearby points
    w = torch.addcmul(diff, x, row_dot(x, diff), value=-1)
    wn = row_norm(w)
    theta = row_angle(x, y, diff).unsqueeze(-1)
    # |w| = sin(theta) up to round-off; the ratio -> 1 as theta -> 0
    regular = wn > torch.finfo(wn.dtype).eps * theta
    factor = torch.where(regular, theta / torch.where(regular, wn, torch.ones_like(wn)), torch.ones_like(wn))
    return w * factor
