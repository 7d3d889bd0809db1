"""The oblique manifold OB(d, k): the product of k unit spheres S^(d-1), stored as rows.

A point is a tensor of shape ``(..., k, d)`` whose k rows have unit Euclidean norm (geoopt's
trailing-dims rule, ``ndim = 2``). Every operation acts on all k spheres at once through the last
axis; there is no Python loop over the factors. Formulas and numerical choices are in
``docs/geometry.md``.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import geoopt
import torch
from geoopt.manifolds.base import Manifold, ScalingInfo
from geoopt.utils import broadcast_shapes, size2shape
from torch.utils.checkpoint import checkpoint

from ..dtypes import autocast_disabled
from ..dtypes import compute_dtype as _compute_dtype
from ..validation import check_broadcastable, check_finite, check_floating, describe_shape

__all__ = ["Oblique", "ObliqueExact"]


# ----------------------------------------------------------------------------------------------
# helpers (one formula each)
# ----------------------------------------------------------------------------------------------
def _up(t: torch.Tensor) -> torch.Tensor:
    return t.to(_compute_dtype(t.dtype))


def _result_dtype(*tensors: torch.Tensor) -> torch.dtype:
    if len(tensors) == 2:
        return torch.result_type(*tensors)
    dtype = tensors[0].dtype  # torch.result_type takes two tensors at most
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _safe_sqrt(t: torch.Tensor) -> torch.Tensor:
    """sqrt with gradient 0 (instead of inf, which times 0 gives NaN) where ``t <= 0``; NaN stays NaN."""
    # the mask is ``t <= 0``, not ``not t > 0``: a NaN (from NaN input) must not become 0
    zero = t <= 0
    return torch.where(zero, torch.zeros_like(t), torch.sqrt(torch.where(zero, torch.ones_like(t), t)))


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., k, d), (..., k, d) -> (..., k, 1) row inner products, without an (..., k, d) temporary.

    A batched matmul (einsum), kept out of autocast, which would run it in 16 bits.
    """
    with autocast_disabled(a.device):
        return torch.einsum("...d,...d->...", a, b).unsqueeze(-1)


def _row_norm(a: torch.Tensor) -> torch.Tensor:
    # torch's norm backward masks the zero vector to gradient 0, so no NaN at a = 0
    return torch.linalg.vector_norm(a, dim=-1, keepdim=True)


def _first_basis_vector(like: torch.Tensor) -> torch.Tensor:
    e1 = torch.zeros(like.shape[-1], dtype=like.dtype, device=like.device)
    e1[0] = 1
    return e1


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Normalize each row; a zero row becomes e_1 = (1, 0, ..., 0) instead of 0/0 = NaN.

    A row with NaN or Inf comes out with NaN (``n == 0`` is False for a NaN norm): replacing it by
    e_1 would turn bad input into a plausible point.
    """
    n = _row_norm(x)
    zero = n == 0
    unit = x / torch.where(zero, torch.ones_like(n), n)
    return torch.where(zero, _first_basis_vector(x), unit)


def _row_angle(x: torch.Tensor, y: torch.Tensor, y_minus_x: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Angle between matching rows, 2 atan2(|x - y|, |x + y|): relative accuracy ~eps on all of [0, pi].

    ``y_minus_x``, when the caller has it, saves computing the chord again.
    """
    chord = y - x if y_minus_x is None else y_minus_x
    return 2 * torch.atan2(
        torch.linalg.vector_norm(chord, dim=-1), torch.linalg.vector_norm(x + y, dim=-1)
    )


class _ChordAngle(torch.autograd.Function):
    """Angle from chord length on the unit sphere, ``2 asin(a / 2)``, gradient 0 at ``a >= 2``.

    ``a = |x - y|`` for unit rows. The derivative ``2 / sqrt(4 - a^2) = 2 / |x + y|`` is infinite
    at antipodes, where the distance has a kink anyway; the backward returns 0 there instead of
    ``inf`` (which times 0 would give NaN), like torch's norm backward at the zero vector.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a)
        # The clamp absorbs rounding (a slightly above 2) but would turn an Inf chord, from Inf
        # input, into a plausible pi; adding 0 * a (alpha=0, fused in one pass) puts NaN back there
        # (0 * Inf = NaN) and adds exactly 0 elsewhere. NaN passes through clamp and asin by itself.
        # In place: one temporary instead of five (measured as fast as the plain clamp-and-asin).
        return (0.5 * a).clamp_(max=1).asin_().mul_(2).add_(a, alpha=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (a,) = ctx.saved_tensors
        h = 4 - a * a
        inside = h > 0
        return torch.where(inside, 2 * grad * torch.rsqrt(torch.where(inside, h, torch.ones_like(h))), 0)


def _chord_row_angle(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Angle between matching unit rows from ``|x - y|`` alone: one temporary and one reduction.

    Uses ``|x + y|^2 = 4 - |x - y|^2`` (unit rows): exact near 0, but near antipodes the rounding
    of ``|x - y|`` and of the unit norms (~eps) becomes an absolute floor of ~sqrt(eps) rad at
    theta = pi (~1e-3 in float32, ~3e-8 in float64, per sphere).
    """
    return _ChordAngle.apply(torch.linalg.vector_norm(x - y, dim=-1))


class _CosineAngle(torch.autograd.Function):
    """``acos(c)`` with ``c`` clamped to [-1, 1]; gradient 0 (not inf) where ``|c| >= 1``."""

    @staticmethod
    def forward(ctx, c: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(c)
        return torch.acos(c.clamp(-1, 1))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (c,) = ctx.saved_tensors
        h = 1 - c * c
        inside = h > 0
        return torch.where(inside, -grad * torch.rsqrt(torch.where(inside, h, torch.ones_like(h))), 0)


# |c| above this is recomputed from the rows: acos of a rounded cosine has error ~eps_c / sin(theta)
_NEAR_COSINE = 0.95
# values per chunk of gathered rows in cdist's exact recomputation (2^20 / d pairs)
_PAIR_CHUNK = 2**20


def _gathered_angles(xu: torch.Tensor, yu: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """Exact angles for flat indices into a (k, n, m) grid: rows ``xu[i, b]`` and ``yu[j, b]``."""
    n, m = xu.shape[0], yu.shape[0]
    b, i, j = flat // (n * m), flat // m % n, flat % m
    return _row_angle(xu[i, b], yu[j, b])


def _near_pair_angles(xu: torch.Tensor, yu: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """Exact angles for the entries ``flat`` (flat indices into (k, n, m)), shape (P,) -> (P,).

    Chunked so that at most ``_PAIR_CHUNK`` gathered values exist at a time; under autograd each
    chunk is checkpointed (its rows are gathered again in backward, not stored).
    """
    chunk = max(1, _PAIR_CHUNK // xu.shape[-1])
    track = torch.is_grad_enabled() and (xu.requires_grad or yu.requires_grad)
    out = [
        checkpoint(_gathered_angles, xu, yu, part, use_reentrant=False, preserve_rng_state=False)
        if track
        else _gathered_angles(xu, yu, part)
        for part in flat.split(chunk)
    ]
    return torch.cat(out)


class Oblique(Manifold):
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

    ndim = 2
    name = "Oblique"
    reversible = False
    __scaling__ = Manifold.__scaling__.copy()

    def __init__(self, k: Optional[int] = None, d: Optional[int] = None):
        super().__init__()
        self.k = self._validate_size(k, "k", 1)
        self.d = self._validate_size(d, "d", 2)

    @staticmethod
    def _validate_size(value: Optional[int], name: str, minimum: int) -> Optional[int]:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"`{name}` must be None or an int >= {minimum}, got {value!r}")
        return value

    def extra_repr(self) -> str:
        return f"k={self.k}, d={self.d}"

    # ------------------------------------------------------------------------------------------
    # checks
    # ------------------------------------------------------------------------------------------
    def _expected_shape(self) -> str:
        return "(..., {}, {})".format("k" if self.k is None else self.k, "d" if self.d is None else self.d)

    def _check_shape(self, shape: Tuple[int, ...], name: str) -> Tuple[bool, Optional[str]]:
        shape = tuple(shape)
        ok = (
            len(shape) >= 2
            and shape[-1] >= 2
            and shape[-2] >= 1
            and (self.k is None or shape[-2] == self.k)
            and (self.d is None or shape[-1] == self.d)
        )
        if ok:
            return True, None
        return False, (
            f"`{name}` must have shape {self._expected_shape()} (k >= 1 spheres of dimension d >= 2), "
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

    def check_point(self, x: torch.Tensor, *, explain=False) -> Union[Tuple[bool, Optional[str]], bool]:
        """Check shape and finiteness of ``x``, shape ``(..., k, d)`` (not the unit norms)."""
        ok, reason = self._check_shape(x.shape, "x")
        if ok and not bool(torch.isfinite(x).all()):
            ok, reason = False, "`x` has non-finite values (NaN or Inf)"
        return (ok, reason) if explain else ok

    def assert_check_point(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` has shape ``(..., k, d)`` and finite values."""
        self._assert_shape(x, "x")
        check_finite(x, "x")

    def _check_point_on_manifold(self, x: torch.Tensor, *, atol=1e-5, rtol=1e-5) -> Tuple[bool, Optional[str]]:
        if not x.is_floating_point():
            return False, f"`x` must be a floating-point tensor, got dtype {x.dtype}"
        if not bool(torch.isfinite(x).all()):
            return False, "`x` has non-finite values (NaN or Inf)"
        norms = _row_norm(_up(x)).squeeze(-1)
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
        dots = _row_dot(_up(x), _up(u))
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
        xc = _up(x)
        # dividing by the row's max |x_i| first keeps the squared norm from under/overflowing
        # (1e-30 or 1e30 entries in float32); the result is invariant to that scale, so detach it
        scale = xc.detach().abs().amax(dim=-1, keepdim=True)
        if not bool(torch.isfinite(scale).all()):  # k values per point, d times cheaper than x
            check_finite(x, "x")
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return _unit_rows(xc / scale).to(x.dtype)

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
        xc, uc = _up(x), _up(u)
        return torch.addcmul(uc, xc, _row_dot(xc, uc), value=-1).to(_result_dtype(x, u))

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
        xc, gc, hc, uc = _up(x), _up(egrad), _up(ehess), _up(u)
        return self._proju(xc, torch.addcmul(hc, uc, _row_dot(xc, gc), value=-1)).to(
            _result_dtype(x, egrad, ehess, u)
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
        out = (_up(u) * _up(v)).sum(dim=(-2, -1), keepdim=keepdim)
        target = broadcast_shapes(x.shape[:-2] + (1, 1) * keepdim, out.shape)
        return out.expand(target).to(_result_dtype(u, v))

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
        out = _row_dot(_up(u), _up(v)).to(_result_dtype(u, v))
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
        out = torch.linalg.vector_norm(_up(u), dim=(-2, -1), keepdim=keepdim)
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
        return _unit_rows(_up(x) + _up(u)).to(_result_dtype(x, u))

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
        return self._expmap(_up(x), _up(u)).to(_result_dtype(x, u))

    @staticmethod
    def _expmap(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        n = _row_norm(u)
        # one parameter-sized result, updated in place (the product's backward does not need it)
        out = x * torch.cos(n)
        return out.addcmul_(u, torch.sinc(n / math.pi))

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
        xc, yc = _up(x), _up(y)
        diff = yc - xc
        # (y - x) - <x, y - x> x, not y - <x, y> x: relative accuracy eps even for nearby points
        w = torch.addcmul(diff, xc, _row_dot(xc, diff), value=-1)
        wn = _row_norm(w)
        theta = _row_angle(xc, yc, diff).unsqueeze(-1)
        # |w| = sin(theta) up to round-off; the ratio -> 1 as theta -> 0
        regular = wn > torch.finfo(wn.dtype).eps * theta
        factor = torch.where(regular, theta / torch.where(regular, wn, torch.ones_like(wn)), torch.ones_like(wn))
        return (w * factor).to(_result_dtype(x, y))

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
        return self._dist2(_up(x), _up(y), keepdim=keepdim).to(_result_dtype(x, y))

    @staticmethod
    def _dist2(x: torch.Tensor, y: torch.Tensor, *, keepdim: bool) -> torch.Tensor:
        out = _chord_row_angle(x, y).square().sum(dim=-1)
        return out[..., None, None] if keepdim else out

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
        out = torch.linalg.vector_norm(_chord_row_angle(_up(x), _up(y)), dim=-1)
        return (out[..., None, None] if keepdim else out).to(_result_dtype(x, y))

    @__scaling__(ScalingInfo(1))
    def cdist(self, x: torch.Tensor, y: torch.Tensor, *, precise: bool = True) -> torch.Tensor:
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
        out_dtype = _result_dtype(x, y)
        dtype = _compute_dtype(out_dtype)
        # autocast would run the matmul in 16 bits: cosines with ~3 significant digits
        with autocast_disabled(x.device):
            # renormalized rows: |x|^2 = 1 +- 1e-7 alone would put a ~4e-4 rad floor under acos
            xu, yu = _unit_rows(x.to(dtype)), _unit_rows(y.to(dtype))
            cos = torch.bmm(xu.transpose(0, 1), yu.permute(1, 2, 0))  # (k, n, m)
        theta = _CosineAngle.apply(cos)
        if precise:
            theta = self._recompute_near_pairs(theta, cos, xu, yu)
        return _safe_sqrt(theta.square().sum(dim=0)).to(out_dtype)

    @staticmethod
    def _recompute_near_pairs(
        theta: torch.Tensor, cos: torch.Tensor, xu: torch.Tensor, yu: torch.Tensor
    ) -> torch.Tensor:
        """Replace ``theta`` (k, n, m) where ``|cos| > _NEAR_COSINE`` by exact angles of the rows."""
        low, high = torch.aminmax(cos.detach())  # one pass, no temporary: usually nothing to do
        if max(-float(low), float(high)) <= _NEAR_COSINE:
            return theta
        # flat indices (8 bytes per near entry), not (P, 3) triples
        flat = torch.nonzero(cos.detach().abs().view(-1) > _NEAR_COSINE).squeeze(1)
        return theta.reshape(-1).index_put((flat,), _near_pair_angles(xu, yu, flat)).view_as(theta)

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
        shape = size2shape(*size)
        ok, reason = self._check_shape(shape, "size")
        if not ok:
            raise ValueError(reason)
        x = torch.randn(*shape, dtype=dtype, device=device)
        return geoopt.ManifoldTensor(_unit_rows(_up(x)).to(x.dtype), manifold=self)

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
        shape = size2shape(*size)
        ok, reason = self._check_shape(shape, "size")
        if not ok:
            raise ValueError(reason)
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
        out = self._expmap(_up(x), _up(u))
        # out of place: the norm's backward reads ``out``
        return (out / _row_norm(out)).to(_result_dtype(x, u))

    retr = expmap
    retr_transp = Oblique.expmap_transp
    transp_follow_retr = Oblique.transp_follow_expmap

    def extra_repr(self) -> str:
        return super().extra_repr() + ", exact"
