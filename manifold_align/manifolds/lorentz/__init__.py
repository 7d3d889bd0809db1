"""The hyperboloid of curvature -c, k factors at once: H(d, k, c) = H^d_c x ... x H^d_c.

Two representations of a point, both with the k factors as rows:

* **full coordinates**, shape ``(..., k, d + 1)``, time first: ``x = (x_0, x_s)`` with
  ``<x, x>_L = -x_0^2 + |x_s|^2 = -1/c`` and ``x_0 > 0``. This is what :class:`Hyperboloid` (a
  ``geoopt.Manifold``) stores; it agrees with ``geoopt.Lorentz(k=1/c)`` row by row.
* **space components**, shape ``(..., k, d)``: ``x_s`` alone, the time derived when needed (MERU's
  representation). The functions of :mod:`.math` (``space_dist``, ``space_cdist``, ``space_expmap0``,
  ...) work on it and take ``c`` as a float or a 0-dim tensor (a learnable curvature); MERU's entailment
  cone is in :mod:`.cone`.

Accuracy and the distance formula are in :mod:`.math`.
"""

from __future__ import annotations

import math as _pymath
from typing import Optional

import geoopt
import torch
from geoopt.manifolds.base import Manifold, ScalingInfo

from ...dtypes import compute_dtype
from ...validation import check_finite
from ..rows import RowManifold, safe_sqrt, upcast
from . import cone, math
from .math import (
    as_curvature,
    asinhc,
    check_curvature,
    check_space,
    half_sinh2,
    lorentz_inner,
    sinhc,
    space_cdist,
    space_dist,
    space_dist0,
    space_expmap0,
    space_logmap0,
    time_of,
)

__all__ = [
    "Hyperboloid",
    "HyperboloidExact",
    "cone",
    "lorentz_inner",
    "math",
    "space_cdist",
    "space_dist",
    "space_dist0",
    "space_expmap0",
    "space_logmap0",
]


def _space(x: torch.Tensor) -> torch.Tensor:
    """Space components of full coordinates, with a NaN or Inf time carried into its row (``+ 0 * x_0``):
    the manifold re-derives the time, and a bad time must not vanish from the result."""
    return x[..., 1:] + 0 * x[..., :1]


class Hyperboloid(RowManifold):
    r"""k hyperboloids of curvature -c, points stored as rows of full coordinates, time first.

    ``H(d, k, c) = {x in R^(k x (d+1)): -x_{b0}^2 + |x_{bs}|^2 = -1/c, x_{b0} > 0 for every row b}``,
    with the product metric: ``dist = sqrt(sum_b d_b^2)``, ``d_b = acosh(-c <x_b, y_b>_L) / sqrt(c)``.

    Parameters
    ----------
    k : int, optional
        Number of factors (rows). ``None`` accepts any k >= 1.
    d : int, optional
        Dimension of each hyperboloid; rows have ``d + 1`` coordinates. ``None`` accepts any d >= 1.
    c : float, default 1.0
        Minus the curvature, > 0. ``geoopt.Lorentz(k=1/c)`` is the same manifold for k = 1 (geoopt's
        ``k`` is ``1/c``, not a number of factors).

    Notes
    -----
    Every operation acts on all k rows at once through the last axis. Distances, ``logmap`` and the
    time components use the space components (``x[..., 1:]``) and re-derive the time from them, which
    keeps them exact near the diagonal (module docstring). 16-bit inputs are computed in float32 and
    returned in their dtype. Like :class:`Oblique`, finiteness is checked where data enters
    (:meth:`projx`, :meth:`check_point`), not on the hot path.

    For a learnable curvature use the ``space_*`` functions of :mod:`.math`, which take ``c`` as a tensor
    (the ``lorentz`` geometry does). See ``docs/geometries.md``.
    """

    name = "Hyperboloid"
    row_width_name = "d + 1"
    row_offset = 1
    row_description = "k >= 1 rows of time and d >= 1 space coordinates"
    __scaling__ = Manifold.__scaling__.copy()

    def __init__(self, k: Optional[int] = None, d: Optional[int] = None, c: float = 1.0):
        super().__init__(k, d)
        if isinstance(c, torch.Tensor):
            raise ValueError("`c` must be a Python number here; for a learnable curvature use the space_* "
                             "functions with a tensor c")
        check_curvature(c)
        self.c = float(c)

    def extra_repr(self) -> str:  # noqa: D102
        return f"k={self.k}, d={self.d}, c={self.c:g}"

    # ------------------------------------------------------------------------------------------
    # checks
    # ------------------------------------------------------------------------------------------
    def _check_point_on_manifold(self, x: torch.Tensor, *, atol=1e-5, rtol=1e-5):
        if not bool(torch.isfinite(x).all()):
            return False, "`x` has non-finite values (NaN or Inf)"
        xc = upcast(x)
        if not bool((xc[..., 0] > 0).all()):
            return False, "rows of `x` must have a positive time component x[..., 0] (upper sheet)"
        # c <x, x>_L = -1 up to rounding, which scales with c x_0^2
        form = self.c * lorentz_inner(xc, xc)
        scale = self.c * xc[..., 0] ** 2
        err = (form + 1).abs()
        if bool((err <= atol + rtol * scale).all()):
            return True, None
        return False, (f"rows of `x` must satisfy c <x, x>_L = -1 (c = {self.c:g}), "
                       f"max |c <x, x>_L + 1| = {float(err.max()):.3g} (atol={atol}, rtol={rtol} * c x_0^2)")

    def _check_vector_on_tangent(self, x: torch.Tensor, u: torch.Tensor, *, atol=1e-5, rtol=1e-5):
        if not bool(torch.isfinite(u).all()):
            return False, "`u` has non-finite values (NaN or Inf)"
        xc, uc = upcast(x), upcast(u)
        dots = lorentz_inner(xc, uc).abs()
        scale = xc.abs().amax(-1) * uc.abs().amax(-1) * xc.shape[-1]
        if bool((dots <= atol + rtol * scale).all()):
            return True, None
        return False, f"rows of `u` must be Lorentz-orthogonal to rows of `x`, max |<x_b, u_b>_L| = {float(dots.max()):.3g}"

    # ------------------------------------------------------------------------------------------
    # conversions between the representations
    # ------------------------------------------------------------------------------------------
    def lift(self, xs: torch.Tensor) -> torch.Tensor:
        """Full coordinates from space components: ``(sqrt(1/c + |x_s|^2), x_s)``.

        Parameters
        ----------
        xs : torch.Tensor, shape (..., k, d)

        Returns
        -------
        torch.Tensor, shape (..., k, d + 1), same dtype.
        """
        check_space(xs, "xs")
        xc = upcast(xs)
        return torch.cat([time_of(xc, as_curvature(self.c, xc)), xc], dim=-1).to(xs.dtype)

    # ------------------------------------------------------------------------------------------
    # projections and metric
    # ------------------------------------------------------------------------------------------
    def projx(self, x: torch.Tensor) -> torch.Tensor:
        """Keep the space components and recompute the time: the point of the upper sheet above ``x_s``.

        Parameters
        ----------
        x : torch.Tensor, shape (..., k, d + 1)
            Any finite tensor.

        Returns
        -------
        torch.Tensor, shape (..., k, d + 1), same dtype.

        Raises
        ------
        ValueError
            Wrong shape, or NaN / Inf in ``x``.
        """
        self._assert_shape(x, "x")
        check_finite(x, "x")
        return self.lift(_space(x))

    def proju(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Project ``u`` onto the tangent space at ``x``: ``u + c <x, u>_L x`` per row.

        Parameters
        ----------
        x : torch.Tensor, shape (..., k, d + 1)
        u : torch.Tensor, shape (..., k, d + 1)

        Returns
        -------
        torch.Tensor, shape (..., k, d + 1)
        """
        self._assert_shape(x, "x")
        self._assert_shape(u, "u")
        xc, uc = upcast(x), upcast(u)
        return torch.addcmul(uc, xc, self.c * lorentz_inner(xc, uc, keepdim=True)).to(torch.result_type(x, u))

    def egrad2rgrad(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Riemannian gradient: flip the sign of the time component (inverse Minkowski metric), then project.

        Parameters
        ----------
        x : torch.Tensor, shape (..., k, d + 1)
        u : torch.Tensor, shape (..., k, d + 1)
            Euclidean gradient.

        Returns
        -------
        torch.Tensor, shape (..., k, d + 1)
        """
        self._assert_shape(u, "u")
        flipped = torch.cat([-u[..., :1], u[..., 1:]], dim=-1)
        return self.proju(x, flipped)

    def inner(self, x: torch.Tensor, u: torch.Tensor, v: Optional[torch.Tensor] = None, *, keepdim=False):
        """Riemannian inner product ``sum_b <u_b, v_b>_L`` (positive on tangent vectors).

        Parameters
        ----------
        x : torch.Tensor, shape (..., k, d + 1)
        u, v : torch.Tensor, shape (..., k, d + 1)
            Tangent vectors at ``x``; ``v=None`` means ``v = u``.
        keepdim : bool

        Returns
        -------
        torch.Tensor, shape (...) or (..., 1, 1)
        """
        self._assert_shape(x, "x")
        self._assert_shape(u, "u")
        v = u if v is None else v
        self._assert_shape(v, "v")
        out = lorentz_inner(u, v).sum(-1)
        out = out.expand(torch.broadcast_shapes(x.shape[:-2], out.shape))
        return (out[..., None, None] if keepdim else out).to(torch.result_type(u, v))

    def norm(self, x: torch.Tensor, u: torch.Tensor, *, keepdim=False) -> torch.Tensor:
        """Riemannian norm ``sqrt(sum_b <u_b, u_b>_L)``, gradient 0 at ``u = 0``; shape (...) or (..., 1, 1)."""
        return safe_sqrt(self.inner(x, u, keepdim=keepdim).to(compute_dtype(u.dtype))).to(u.dtype)

    # ------------------------------------------------------------------------------------------
    # maps
    # ------------------------------------------------------------------------------------------
    def expmap(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        r"""Exponential map ``cosh(sqrt(c) |u_b|) x_b + sinh(sqrt(c) |u_b|) / (sqrt(c) |u_b|) u_b`` per row.

        The time of the result is re-derived from its space components (:meth:`projx`), which
        keeps it on the manifold despite rounding.

        Parameters
        ----------
        x : torch.Tensor, shape (..., k, d + 1)
        u : torch.Tensor, shape (..., k, d + 1)
            Tangent vector at ``x``.

        Returns
        -------
        torch.Tensor, shape (..., k, d + 1)
        """
        self._assert_shape(x, "x")
        self._assert_shape(u, "u")
        xc, uc = upcast(x), upcast(u)
        r = _pymath.sqrt(self.c) * safe_sqrt(lorentz_inner(uc, uc, keepdim=True))
        out = torch.addcmul(xc * torch.cosh(r), uc, sinhc(r))
        return self.lift(_space(out)).to(torch.result_type(x, u))

    def logmap(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r"""Logarithmic map, per row ``d_b w_b / |w_b|_L`` with ``w_b = y_b + c <x_b, y_b>_L x_b``.

        Written with ``s^2 = sinh^2(sqrt(c) d_b / 2)`` (:func:`.math.half_sinh2`; ``z = -c <x, y>_L = 1 + 2 s^2``) as
        ``asinh(s) / (s sqrt(1 + s^2)) ((y - x) - 2 s^2 x)``: exact near ``y = x``, and
        ``logmap(x, x) = 0`` exactly.

        Parameters
        ----------
        x, y : torch.Tensor, shape (..., k, d + 1)

        Returns
        -------
        torch.Tensor, shape (..., k, d + 1): a tangent vector at ``x``.
        """
        self._assert_shape(x, "x")
        self._assert_shape(y, "y")
        xc, yc = upcast(x), upcast(y)
        cc = as_curvature(self.c, xc)
        s2 = half_sinh2(_space(xc), _space(yc), cc).unsqueeze(-1)
        s = safe_sqrt(s2)
        factor = asinhc(s) * torch.rsqrt(1 + s2)
        w = torch.addcmul(yc - xc, xc, s2, value=-2)
        return (w * factor).to(torch.result_type(x, y))

    def dist(self, x: torch.Tensor, y: torch.Tensor, *, keepdim=False) -> torch.Tensor:
        """Product-metric distance ``sqrt(sum_b d_b^2)``; exactly 0 with gradient 0 at ``x = y``.

        Parameters
        ----------
        x, y : torch.Tensor, shape (..., k, d + 1)
        keepdim : bool

        Returns
        -------
        torch.Tensor, shape (...) or (..., 1, 1)
        """
        self._assert_shape(x, "x")
        self._assert_shape(y, "y")
        out = torch.linalg.vector_norm(space_dist(_space(x), _space(y), self.c), dim=-1)
        return (out[..., None, None] if keepdim else out).to(torch.result_type(x, y))

    def dist2(self, x: torch.Tensor, y: torch.Tensor, *, keepdim=False) -> torch.Tensor:
        """Squared product-metric distance ``sum_b d_b^2``; shape (...) or (..., 1, 1)."""
        self._assert_shape(x, "x")
        self._assert_shape(y, "y")
        out = space_dist(_space(x), _space(y), self.c).square().sum(-1)
        return (out[..., None, None] if keepdim else out).to(torch.result_type(x, y))

    @__scaling__(ScalingInfo(1))
    def cdist(self, x: torch.Tensor, y: torch.Tensor, *, precise: bool = True) -> torch.Tensor:
        """Pairwise product-metric distances, shape (n, m), without an ``n*m*k*d`` intermediate.

        Parameters
        ----------
        x : torch.Tensor, shape (n, k, d + 1)
        y : torch.Tensor, shape (m, k, d + 1)
        precise : bool
            See :func:`space_cdist`.

        Returns
        -------
        torch.Tensor, shape (n, m), dtype of the inputs.
        """
        self._assert_shape(x, "x")
        self._assert_shape(y, "y")
        per_factor = space_cdist(_space(x), _space(y), self.c, precise=precise)
        return safe_sqrt(per_factor.square().sum(0)).to(torch.result_type(x, y))

    def expmap0(self, u: torch.Tensor) -> torch.Tensor:
        """Exponential map at the origin; ``u`` shape (..., k, d + 1) (time component ignored: it is 0
        for tangent vectors at the origin). Returns full coordinates, same shape and dtype."""
        self._assert_shape(u, "u")
        return self.lift(space_expmap0(_space(u), self.c)).to(u.dtype)

    def logmap0(self, x: torch.Tensor) -> torch.Tensor:
        """Logarithmic map at the origin; shape (..., k, d + 1), time component 0."""
        self._assert_shape(x, "x")
        v = space_logmap0(_space(x), self.c)
        return torch.cat([torch.zeros_like(v[..., :1]), v], dim=-1).to(x.dtype)

    def dist0(self, x: torch.Tensor) -> torch.Tensor:
        """Distance of each row to the origin, shape (..., k)."""
        self._assert_shape(x, "x")
        return space_dist0(_space(x), self.c).to(x.dtype)

    def retr(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """First-order retraction: lift ``x_s + u_s`` (the space part of ``x + u``) back onto the sheet.

        Parameters
        ----------
        x, u : torch.Tensor, shape (..., k, d + 1)

        Returns
        -------
        torch.Tensor, shape (..., k, d + 1)
        """
        self._assert_shape(x, "x")
        self._assert_shape(u, "u")
        return self.lift(upcast(_space(x)) + upcast(_space(u))).to(torch.result_type(x, u))

    def transp(self, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Vector transport by projection onto the tangent space at ``y``; shape (..., k, d + 1)."""
        self._assert_shape(x, "x")
        return self.proju(y, v)

    # ------------------------------------------------------------------------------------------
    # sampling
    # ------------------------------------------------------------------------------------------
    def random_normal(self, *size, std: float = 1.0, dtype=None, device=None) -> geoopt.ManifoldTensor:
        """``expmap0`` of a Gaussian tangent vector at the origin (space std ``std``).

        Parameters
        ----------
        size : int or tuple of int
            Shape ``(..., k, d + 1)``.
        std : float, keyword-only
        dtype, device : optional

        Returns
        -------
        geoopt.ManifoldTensor, shape (..., k, d + 1), ``manifold=self``
        """
        shape = self._checked_size(*size)
        u = std * torch.randn(*shape[:-1], shape[-1] - 1, dtype=dtype, device=device)
        return geoopt.ManifoldTensor(self.lift(space_expmap0(u, self.c)).to(u.dtype), manifold=self)

    random = random_normal

    def origin(self, *size, dtype=None, device=None, seed: Optional[int] = None) -> geoopt.ManifoldTensor:
        """The origin ``(1/sqrt(c), 0, ..., 0)`` on every row (or, with ``seed``, a seeded random point).

        Returns
        -------
        geoopt.ManifoldTensor, shape (..., k, d + 1), ``manifold=self``
        """
        if seed is not None:
            return super().origin(*size, dtype=dtype, device=device, seed=seed)
        shape = self._checked_size(*size)
        x = torch.zeros(*shape, dtype=dtype, device=device)
        x[..., 0] = 1 / _pymath.sqrt(self.c)
        return geoopt.ManifoldTensor(x, manifold=self)


class HyperboloidExact(Hyperboloid):
    """:class:`Hyperboloid` whose retraction is the exponential map."""

    retr = Hyperboloid.expmap
    retr_transp = Hyperboloid.expmap_transp
    transp_follow_retr = Hyperboloid.transp_follow_expmap

    def extra_repr(self) -> str:  # noqa: D102
        return super().extra_repr() + ", exact"
