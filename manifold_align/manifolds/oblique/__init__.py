"""The oblique manifold OB(d, k): the product of k unit spheres S^(d-1), stored as rows.

A point is a tensor of shape ``(..., k, d)`` whose k rows have unit Euclidean norm (geoopt's
trailing-dims rule, ``ndim = 2``). Every operation acts on all k spheres at once through the last
axis; there is no Python loop over the factors. Formulas and numerical choices are in
``docs/geometry.md``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import geoopt
import torch
from geoopt.manifolds.base import Manifold, ScalingInfo
from geoopt.utils import broadcast_shapes

from ...dtypes import compute_dtype
from ...validation import check_broadcastable, check_finite, describe_shape
from ..rows import RowManifold, result_dtype, row_dot, row_norm, safe_sqrt, upcast
from . import math, steps
from .math import chord_row_angle, unit_rows

__all__ = ["Oblique", "ObliqueExact", "math", "steps"]


class Oblique(RowManifold):
    r"""Oblique manifold OB(d, k) = S^(d-1) x ... x S^(d-1) (k factors), points stored as rows.

    Parameters
    ----------
    k : int, optional
        Number of spheres (rows). ``None`` accepts any k >= 1.
    d : int, optional
        Ambient dimension of each sphere (columns). ``None`` accepts any d >= 2.

    Notes
    -----
    Points and tangent vectors have shape ``(..., k, d)``; leading dims are batch dims. The metric
    is the one induced by the Frobenius inner product, so ``dist = sqrt(sum_b theta_b^2)`` with
    ``theta_b`` the angle on sphere b. pymanopt and Manopt store the unit vectors as columns,
    shape ``(d, k)``: see :mod:`manifold_align.manifolds.conversions`.

    Shape checks (rank >= 2, d >= 2, fixed k and d) run in every public operation and cost
    only Python time. Finiteness is checked where raw data enters the manifold: :meth:`projx`,
    :meth:`check_point` / :meth:`assert_check_point` and the ``check_*_on_*`` helpers, not in the
    hot ``dist``/``expmap``/``logmap``/``retr`` path (that check needs a reduction and, on a GPU,
    a device sync); there NaN or Inf in a row gives NaN results for that row, never a finite value.

    See Also
    --------
    :class:`ObliqueExact`
    """

    name = "Oblique"
    row_description = "k >= 1 spheres of dimension d >= 2"
    min_d = 2
    __scaling__ = Manifold.__scaling__.copy()

    def extra_repr(self) -> str:
        return f"k={self.k}, d={self.d}"

    # ------------------------------------------------------------------------------------------
    # checks
    # ------------------------------------------------------------------------------------------
    def _assert_pair(self, a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
        """Both valid, with the same (k, d) and broadcastable batch dims (checked only when the shapes differ)."""
        self._assert_shape(a, a_name)
        self._assert_shape(b, b_name)
        if a.shape != b.shape:
            self._assert_same_rows(a, a_name, b, b_name)
            check_broadcastable(a.shape[:-2], a_name, b.shape[:-2], b_name, "batch dims (...) of shape (..., k, d)")

    @staticmethod
    def _assert_same_rows(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
        if a.shape[-2:] != b.shape[-2:]:
            k, d = a.shape[-2:]
            raise ValueError(
                f"`{b_name}` must have the same (k, d) = ({k}, {d}) as `{a_name}` (shape {describe_shape(a.shape)}), "
                f"got shape {describe_shape(b.shape)}"
            )

    def _check_point_on_manifold(self, x: torch.Tensor, *, atol=1e-5, rtol=1e-5) -> Tuple[bool, Optional[str]]:
        if not x.is_floating_point():
            return False, f"`x` must be a floating-point tensor, got dtype {x.dtype}"
        if not bool(torch.isfinite(x).all()):
            return False, "`x` has non-finite values (NaN or Inf)"
        norms = row_norm(upcast(x)).squeeze(-1)
        ok = torch.allclose(norms, torch.ones_like(norms), atol=atol, rtol=rtol)
        if not ok:
            worst = float((norms - 1).abs().max())
            return False, f"rows of `x` must have unit norm, max |norm - 1| = {worst:.3g} (atol={atol}, rtol={rtol})"
        return True, None

    def _check_vector_on_tangent(
        self, x: torch.Tensor, u: torch.Tensor, *, atol=1e-5, rtol=1e-5
    ) -> Tuple[bool, Optional[str]]:
        if not bool(torch.isfinite(u).all()):
            return False, "`u` has non-finite values (NaN or Inf)"
        # per row: a sum over the k spheres could cancel
        dots = row_dot(upcast(x), upcast(u))
        ok = torch.allclose(dots, torch.zeros_like(dots), atol=atol, rtol=rtol)
        if not ok:
            worst = float(dots.abs().max())
            return False, f"rows of `u` must be orthogonal to rows of `x`, max |<x_b, u_b>| = {worst:.3g} (atol={atol})"
        return True, None

    # ------------------------------------------------------------------------------------------
    # projections and metric
    # ------------------------------------------------------------------------------------------
    def projx(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize each row onto its sphere.

        Parameters
        ----------
        x : torch.Tensor, shape (..., k, d)
            Any finite tensor.

        Returns
        -------
        torch.Tensor, shape (..., k, d)
            Unit rows, same dtype. A zero row maps to e_1 = (1, 0, ..., 0).

        Raises
        ------
        ValueError
            Wrong shape, or NaN / Inf in ``x``.
        """
        self._assert_shape(x, "x")
        xc = upcast(x)
        # dividing by the row's max |x_i| first keeps the squared norm from under/overflowing
        # (1e-30 or 1e30 entries in float32); the result is invariant to that scale, so detach it
        scale = xc.detach().abs().amax(dim=-1, keepdim=True)
        if not bool(torch.isfinite(scale).all()):  # k values per point, d times cheaper than x
            check_finite(x, "x")
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return unit_rows(xc / scale).to(x.dtype)

    def proju(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Project ``u`` onto the tangent space at ``x``: ``u_b - <x_b, u_b> x_b`` per row.

        Parameters
        ----------
        x : torch.Tensor, shape (..., k, d)
            Point on the manifold.
        u : torch.Tensor, shape (..., k, d)
            Any vector (broadcastable with ``x``).

        Returns
        -------
        torch.Tensor, shape (..., k, d)
        """
        self._assert_pair(x, "x", u, "u")
        return self._proju(x, u)

    @staticmethod
    def _proju(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return math.proju(upcast(x), upcast(u)).to(result_dtype(x, u))

    egrad2rgrad = proju

    def ehess2rhess(self, x: torch.Tensor, egrad: torch.Tensor, ehess: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        r"""Riemannian Hessian of f applied to ``u``, from the Euclidean gradient and Hessian-vector product.

        Per row (sphere b)::

            Hess f(x)[u]_b = P_x(ehess - <x_b, egrad_b> u_b)_b,   P_x(v)_b = v_b - <x_b, v_b> x_b

        the projection of the Euclidean Hessian-vector product plus the curvature (Weingarten) term
        of the unit sphere, whose normal is ``x_b`` itself; the same operator as pymanopt's and
        Manopt's ``obliquefactory`` (``u`` tangent, so projecting the ``u_b`` term changes nothing,
        but it keeps the result tangent to rounding). geoopt has no Hessians; pymanopt's second-order
        solvers (``TrustRegions``) need this.

        Parameters
        ----------
        x : torch.Tensor, shape (..., k, d)
            Point on the manifold.
        egrad : torch.Tensor, shape (..., k, d)
            Euclidean gradient of f at ``x``.
        ehess : torch.Tensor, shape (..., k, d)
            Euclidean Hessian of f at ``x`` applied to ``u``.
        u : torch.Tensor, shape (..., k, d)
            Tangent vector at ``x``.

        Returns
        -------
        torch.Tensor, shape (..., k, d)
            Tangent vector at ``x``; a self-adjoint linear function of ``u`` for the Riemannian metric.
        """
        self._assert_pair(x, "x", egrad, "egrad")
        self._assert_pair(x, "x", ehess, "ehess")
        self._assert_pair(x, "x", u, "u")
        xc, gc, hc, uc = upcast(x), upcast(egrad), upcast(ehess), upcast(u)
        return self._proju(xc, torch.addcmul(hc, uc, row_dot(xc, gc), value=-1)).to(
            result_dtype(x, egrad, ehess, u)
        )

    @property
    def dim(self) -> int:
        """Manifold dimension ``k (d - 1)`` (pymanopt's ``dim``): each sphere S^(d-1) has dimension d - 1.

        Raises
        ------
        ValueError
            When ``k`` or ``d`` was left None (the dimension is then unknown).
        """
        if self.k is None or self.d is None:
            raise ValueError(
                f"`dim` needs fixed sizes: construct Oblique(k=..., d=...), got k={self.k!r}, d={self.d!r}"
            )
        return self.k * (self.d - 1)

    def inner(
        self, x: torch.Tensor, u: torch.Tensor, v: Optional[torch.Tensor] = None, *, keepdim=False
    ) -> torch.Tensor:
        """Riemannian (Frobenius) inner product ``sum_b <u_b, v_b>``.

        Parameters
        ----------
        x : torch.Tensor, shape (..., k, d)
            Point on the manifold.
        u, v : torch.Tensor, shape (..., k, d)
            Tangent vectors at ``x``; ``v=None`` means ``v = u``.
        keepdim : bool
            Keep the two reduced dims as size 1.

        Returns
        -------
        torch.Tensor, shape (...) or (..., 1, 1)
        """
        self._assert_pair(x, "x", u, "u")
        if v is None:
            v = u
        else:
            self._assert_pair(x, "x", v, "v")
        out = (upcast(u) * upcast(v)).sum(dim=(-2, -1), keepdim=keepdim)
        target = broadcast_shapes(x.shape[:-2] + (1, 1) * keepdim, out.shape)
        return out.expand(target).to(result_dtype(u, v))

    def component_inner(self, x: torch.Tensor, u: torch.Tensor, v: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Inner product per sphere, broadcast over its row (what RiemannianAdam's second moment uses).

        Parameters
        ----------
        x : torch.Tensor, shape (..., k, d)
        u, v : torch.Tensor, shape (..., k, d)
            ``v=None`` means ``v = u``.

        Returns
        -------
        torch.Tensor, shape (..., k, d)
            ``<u_b, v_b>`` repeated along row b (an expanded view), like geoopt's ProductManifold of Spheres.
        """
        self._assert_pair(x, "x", u, "u")
        if v is None:
            v = u
        else:
            self._assert_pair(x, "x", v, "v")
        out = row_dot(upcast(u), upcast(v)).to(result_dtype(u, v))
        return out.expand(broadcast_shapes(x.shape, u.shape, v.shape))

    def norm(self, x: torch.Tensor, u: torch.Tensor, *, keepdim=False) -> torch.Tensor:
        """Riemannian norm ``sqrt(sum_b |u_b|^2)``; gradient 0 at ``u = 0``.

        Parameters
        ----------
        x : torch.Tensor, shape (..., k, d)
        u : torch.Tensor, shape (..., k, d)
        keepdim : bool

        Returns
        -------
        torch.Tensor, shape (...) or (..., 1, 1)
        """
        self._assert_pair(x, "x", u, "u")
        out = torch.linalg.vector_norm(upcast(u), dim=(-2, -1), keepdim=keepdim)
        target = broadcast_shapes(x.shape[:-2] + (1, 1) * keepdim, out.shape)
        return out.expand(target).to(u.dtype)

    # ------------------------------------------------------------------------------------------
    # maps
    # ------------------------------------------------------------------------------------------
    def retr(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Projection retraction ``(x_b + u_b) / |x_b + u_b|`` per row (second order).

        Parameters
        ----------
        x : torch.Tensor, shape (..., k, d)
        u : torch.Tensor, shape (..., k, d)
            Tangent vector at ``x``.

        Returns
        -------
        torch.Tensor, shape (..., k, d)
        """
        self._assert_pair(x, "x", u, "u")
        return unit_rows(upcast(x) + upcast(u)).to(result_dtype(x, u))

    def expmap(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        r"""Exponential map ``cos(|u_b|) x_b + sin(|u_b|) u_b / |u_b|`` per row.

        ``sin(t)/t`` is ``torch.sinc(t / pi)``, exact (= 1) and differentiable at ``t = 0``, so
        ``expmap(x, 0) = x`` with Jacobian identity, no small-norm branch.

        Parameters
        ----------
        x : torch.Tensor, shape (..., k, d)
        u : torch.Tensor, shape (..., k, d)
            Tangent vector at ``x``.

        Returns
        -------
        torch.Tensor, shape (..., k, d)
        """
        self._assert_pair(x, "x", u, "u")
        return math.expmap(upcast(x), upcast(u)).to(result_dtype(x, u))

    def logmap(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r"""Logarithmic map: per row, ``theta_b w_b / |w_b|`` with ``w_b`` the tangent part of ``y_b - x_b``.

        Parameters
        ----------
        x, y : torch.Tensor, shape (..., k, d)
            Points on the manifold.

        Returns
        -------
        torch.Tensor, shape (..., k, d)
            Tangent vector at ``x``. ``logmap(x, x) = 0`` exactly. For antipodal rows
            (``y_b = -x_b``, where the log is not unique) the row is finite: of length pi in the
            direction of the round-off residue of ``w_b``, or ``w_b`` itself (about 0) when that
            residue is below ``eps * pi``. Never NaN.
        """
        self._assert_pair(x, "x", y, "y")
        return math.logmap(upcast(x), upcast(y)).to(result_dtype(x, y))

    def dist2(self, x: torch.Tensor, y: torch.Tensor, *, keepdim=False) -> torch.Tensor:
        """Squared geodesic distance ``sum_b theta_b^2`` (smooth everywhere, no sqrt).

        Parameters
        ----------
        x, y : torch.Tensor, shape (..., k, d)
        keepdim : bool

        Returns
        -------
        torch.Tensor, shape (...) or (..., 1, 1)
        """
        self._assert_pair(x, "x", y, "y")
        out = chord_row_angle(upcast(x), upcast(y)).square().sum(dim=-1)
        return (out[..., None, None] if keepdim else out).to(result_dtype(x, y))

    def dist(self, x: torch.Tensor, y: torch.Tensor, *, keepdim=False) -> torch.Tensor:
        """Geodesic distance ``sqrt(sum_b theta_b^2)``, ``theta_b = 2 asin(|x_b - y_b| / 2)``.

        One temporary (``x - y``) and one reduction, like ``arccos`` of a dot product, but exact
        near 0. Measured float32 error (k = 16, d = 32): ~1e-8 rad for angles up to 0.1,
        <= 2e-6 rad up to 2.5, 2e-5 at 3.1 and ~2e-3 at exact antipodes, where
        ``|x + y|^2 = 4 - |x - y|^2`` cancels (see docs/geometry.md; for exact distances near pi
        use ``norm(x, logmap(x, y))``).
        ``dist(x, x)`` is exactly 0 and its gradient there is 0 (torch's norm backward; the true
        gradient does not exist at 0, 0 is a subgradient).

        Parameters
        ----------
        x, y : torch.Tensor, shape (..., k, d)
            Points on the manifold (broadcastable).
        keepdim : bool

        Returns
        -------
        torch.Tensor, shape (...) or (..., 1, 1)
            Values in [0, pi sqrt(k)].
        """
        self._assert_pair(x, "x", y, "y")
        out = torch.linalg.vector_norm(chord_row_angle(upcast(x), upcast(y)), dim=-1)
        return (out[..., None, None] if keepdim else out).to(result_dtype(x, y))

    @__scaling__(ScalingInfo(1))
    def cdist(self, x: torch.Tensor, y: torch.Tensor, *, precise: bool = True,
              sync_free: bool = False) -> torch.Tensor:
        r"""Pairwise geodesic distances without an ``n*m*k*d`` intermediate.

        The k cosine matrices ``C_b = X_b Y_b^T`` come from one batched matmul in the compute
        dtype (float32 for float32 and 16-bit inputs), shape (k, n, m), after renormalizing the
        rows once; ``theta = acos(c)``. A rounded cosine gives an angle error of about
        ``eps_c / sin(theta)``: small for ``|c| <= 0.95`` (~2e-6 rad in float32 at d = 32), up to
        ~7e-4 rad at ``c = +-1``. With ``precise=True`` the entries with ``|c| > 0.95`` are
        recomputed exactly as ``2 atan2(|u - v|, |u + v|)`` from their gathered rows.

        Parameters
        ----------
        x : torch.Tensor, shape (n, k, d)
        y : torch.Tensor, shape (m, k, d)
        precise : bool
            Recompute the near-coincident and near-antipodal entries (``|c| > 0.95``) exactly:
            every per-sphere angle then has float32 error ~2e-6 rad or better (d = 32), and
            ``cdist(x, x)`` has a diagonal of ~1e-7 instead of ~5e-4. The extra cost is a
            (k, n, m) min/max pass plus, for P such entries, a gather of ``2 P d`` values in chunks
            of ``2^20`` values (none for points in general position). On a GPU the check costs one
            device sync. ``False`` skips it.
        sync_free : bool, keyword-only
            Recompute only such entries that are the nearest of their row or column
            (:func:`~manifold_align.manifolds.rows.nearest_pairs`), without a device sync.

        Returns
        -------
        torch.Tensor, shape (n, m)
            Dtype of the inputs.
        """
        for t, name, dim in ((x, "x", "n"), (y, "y", "m")):
            self._assert_shape(t, name)
            if t.dim() != 3:
                raise ValueError(
                    f"`{name}` must have shape ({dim}, {self._expected_shape()[6:]}, got shape {describe_shape(t)}"
                )
        self._assert_same_rows(x, "x", y, "y")
        out_dtype = result_dtype(x, y)
        dtype = compute_dtype(out_dtype)
        # renormalized rows: |x|^2 = 1 +- 1e-7 alone would put a ~4e-4 rad floor under acos
        theta = math.angle_grid(unit_rows(x.to(dtype)), unit_rows(y.to(dtype)), precise=precise,
                                 sync_free=sync_free)
        return safe_sqrt(theta.square().sum(dim=0)).to(out_dtype)

    def transp(self, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Vector transport by projection onto the tangent space at ``y`` (as geoopt's Sphere).

        Parameters
        ----------
        x : torch.Tensor, shape (..., k, d)
            Start point (unused by the projection; kept for the geoopt signature).
        y : torch.Tensor, shape (..., k, d)
            End point.
        v : torch.Tensor, shape (..., k, d)
            Tangent vector at ``x``.

        Returns
        -------
        torch.Tensor, shape (..., k, d)
            Tangent vector at ``y``.
        """
        self._assert_pair(x, "x", y, "y")
        self._assert_pair(y, "y", v, "v")
        return self._proju(y, v)

    # ------------------------------------------------------------------------------------------
    # optimizer support
    # ------------------------------------------------------------------------------------------
    def inplace_steps(self, param: torch.Tensor) -> Optional[steps.InplaceSteps]:
        """The in-place optimizer steps for ``param`` on this manifold, or None for the generic path.

        :mod:`manifold_align.optim` asks every manifold parameter's manifold for these: the projection
        retraction and the transport by projection written out in place (:mod:`.steps`), with no
        parameter-sized temporaries. None when ``param`` does not suit them (16-bit, non-contiguous, a
        sparse gradient or one of another dtype or shape), or for a subclass that changes the retraction
        without overriding this (:class:`ObliqueExact` returns None: its retraction is the exponential map).

        Parameters
        ----------
        param : torch.Tensor, shape (..., k, d)
            A parameter on this manifold, with its gradient.

        Returns
        -------
        InplaceSteps or None
        """
        changed = type(self).retr is not Oblique.retr or type(self).transp is not Oblique.transp
        if changed or not steps.can_step_in_place(param):
            return None
        return steps.OBLIQUE_STEPS

    # ------------------------------------------------------------------------------------------
    # sampling
    # ------------------------------------------------------------------------------------------
    def random_uniform(self, *size, dtype=None, device=None) -> geoopt.ManifoldTensor:
        """Uniform sample on each sphere (normalized standard Gaussian rows).

        Parameters
        ----------
        size : int or tuple of int
            Shape ``(..., k, d)``.
        dtype, device : optional
            As in ``torch.randn``.

        Returns
        -------
        geoopt.ManifoldTensor, shape (..., k, d), ``manifold=self``
        """
        shape = self._checked_size(*size)
        x = torch.randn(*shape, dtype=dtype, device=device)
        return geoopt.ManifoldTensor(unit_rows(upcast(x)).to(x.dtype), manifold=self)

    random = random_uniform

    def origin(self, *size, dtype=None, device=None, seed: Optional[int] = None) -> geoopt.ManifoldTensor:
        """A deterministic point: e_1 on every sphere (or, with ``seed``, a seeded uniform sample).

        Parameters
        ----------
        size : int or tuple of int
            Shape ``(..., k, d)``.
        dtype, device : optional
        seed : int, optional
            If given, sample with :meth:`random` under this seed without touching the global RNG.

        Returns
        -------
        geoopt.ManifoldTensor, shape (..., k, d), ``manifold=self``
        """
        if seed is not None:
            return super().origin(*size, dtype=dtype, device=device, seed=seed)
        shape = self._checked_size(*size)
        x = torch.zeros(*shape, dtype=dtype, device=device)
        x[..., 0] = 1
        return geoopt.ManifoldTensor(x, manifold=self)


class ObliqueExact(Oblique):
    """:class:`Oblique` whose retraction is the exponential map (used by geoopt optimizers).

    Its ``expmap`` (hence ``retr``, ``retr_transp`` and ``transp_follow_retr``) divides the result
    by its row norms. ``cos(|u_b|) x_b + sinc(|u_b|) u_b`` has unit rows only as far as ``x`` has
    unit rows and ``u`` is tangent; under an optimizer every step's rounding, and a momentum buffer
    that is tangent only up to rounding (geoopt's first SGD buffer is not tangent at all), adds to
    the drift, which nothing undoes: 5e-3 off unit norm after 3000 float32 steps of geoopt's
    ``RiemannianSGD`` with momentum. Renormalized, the rows stay unit to rounding (~1e-7 in float32,
    ~1e-16 in float64); for a unit ``x`` and tangent ``u`` the division changes the result by
    rounding only. It costs one row-norm pass and one division over the result (measured +30% on
    the bare formula); :meth:`Oblique.expmap` keeps the bare formula, for callers that map once.

    See Also
    --------
    :class:`Oblique`
    """

    def expmap(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        r"""Exponential map with unit rows to rounding: ``e_b / |e_b|``, ``e_b = cos(|u_b|) x_b + sinc(|u_b|) u_b``.

        Parameters
        ----------
        x : torch.Tensor, shape (..., k, d)
        u : torch.Tensor, shape (..., k, d)
            Tangent vector at ``x``.

        Returns
        -------
        torch.Tensor, shape (..., k, d)
            Unit rows (NaN rows where ``x`` or ``u`` has NaN or Inf in that row).
        """
        self._assert_pair(x, "x", u, "u")
        out = math.expmap(upcast(x), upcast(u))
        # out of place: the norm's backward reads ``out``
        return (out / row_norm(out)).to(result_dtype(x, u))

    retr = expmap
    retr_transp = Oblique.expmap_transp
    transp_follow_retr = Oblique.transp_follow_expmap

    def extra_repr(self) -> str:
        return super().extra_repr() + ", exact"
