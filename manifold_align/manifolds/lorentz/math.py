"""The functional math of the hyperboloid of curvature -c, k factors as rows, on space components.

Points are given by their **space components** ``x_s``, shape ``(..., k, d)`` (MERU's representation):
the time ``x_0 = sqrt(1/c + |x_s|^2)`` is derived when needed, and every ``x_s`` in R^d is a point.
``c`` is a float or a 0-dim tensor (a learnable curvature). :class:`~manifold_align.manifolds.Hyperboloid`
(full coordinates) and the ``lorentz`` geometry build on these functions.

Accuracy. With ``X = sqrt(c) x_s`` (so ``|X| = sinh r``, r the scaled distance to the origin) and
theta the angle between ``X`` and ``Y`` at the origin, the hyperbolic law of cosines gives, with
``s = sinh(sqrt(c) d / 2)``::

    s^2 = sinh^2((r_x - r_y) / 2) + |X| |Y| sin^2(theta / 2)

a sum of two non-negative terms, each computed without cancellation (:func:`half_sinh2`):
``sinh(r_x - r_y) = <X - Y, X + Y> / (|X| Y_0 + |Y| X_0)``, and the angular term from the directions or
from the Euclidean chord, whichever rounds less. The distance ``2 asinh(s) / sqrt(c)`` keeps float32 accuracy
(measured within 1e-7 relative of 40-digit references, tests/manifolds/test_lorentz.py) near the diagonal
(exactly 0 with gradient 0 at ``x = y``), for points far apart and between a point near the origin and
one far out, where the Minkowski chord ``|x_s - y_s|^2 - (x_0 - y_0)^2`` cancels (it put the distance 8.5e-5
off at radii 0.3 and 11). Two far points on almost the same ray are ill-conditioned in float32 whatever the
formula: rounding the direction of a point at radius r by eps moves it by ~eps sinh(r). The pairwise
:func:`space_cdist` takes the fast matmul route, ``acosh(-c <x, y>_L)``, which is accurate away from the
diagonal, and recomputes the pairs it cannot resolve with this formula
(:func:`~manifold_align.manifolds.rows.recompute_pairs`).

NaN or Inf in a row gives NaN (or Inf) for that row in every function here, never a finite value.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch

from ...dtypes import autocast_disabled, compute_dtype
from ...validation import describe_shape
from ..rows import flat_indices, nearest_pairs, recompute_pairs, row_dot, safe_sqrt, upcast

__all__ = [
    "NEAR",
    "Curvature",
    "as_curvature",
    "asinhc",
    "check_curvature",
    "check_space",
    "half_sinh2",
    "lorentz_inner",
    "scaled_cdist",
    "sinhc",
    "space_cdist",
    "space_dist",
    "space_dist0",
    "space_expmap0",
    "space_logmap0",
    "time_of",
]

Curvature = Union[float, torch.Tensor]

#: An entry of the (k, n, m) grid of :func:`scaled_cdist` whose float32 ``acosh`` would have a relative
#: error above ~``3 eps / NEAR`` (~1e-6) is recomputed from its rows. ``z = -c <x, y>_L`` from a matmul is
#: off by a few ``eps t``, ``t = c x_0 y_0`` (the times' rounding and the sum), which ``acosh`` turns into a
#: relative error ``eps t / (sqrt(z^2 - 1) acosh(z)) <= eps t z / (z^2 - 1)`` (``tanh(d) <= d``) per
#: ``eps t``: recomputed where ``z^2 - 1 < NEAR t z``.
NEAR = 1 / 8


# ----------------------------------------------------------------------------------------------
# arguments
# ----------------------------------------------------------------------------------------------
def as_curvature(c: Curvature, like: torch.Tensor) -> torch.Tensor:
    """``c`` as a 0-dim tensor in ``like``'s dtype and device (keeps its graph when learnable)."""
    if isinstance(c, torch.Tensor):
        return c.to(dtype=like.dtype, device=like.device)
    # straight into the target dtype: via float32 a Python 0.7 would lose digits in float64
    return torch.tensor(float(c), dtype=like.dtype, device=like.device)


def check_curvature(c: Curvature) -> None:
    """Raise ``ValueError`` unless ``c`` is a positive finite number or a one-element tensor holding one."""
    if isinstance(c, torch.Tensor):
        if c.numel() != 1:
            raise ValueError(f"`c` must be a positive number or a one-element tensor, got shape {describe_shape(c)}")
        if c.device.type == "meta":
            return
        value = float(c.detach())
    else:
        value = float(c)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"`c` (minus the curvature) must be a positive finite number, got {value!r}")


def check_space(x: torch.Tensor, name: str) -> None:
    """Raise unless ``x`` is a tensor of space components, shape ``(..., k, d)``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape (..., k, d), got {type(x).__name__}")
    if x.dim() < 2 or x.shape[-1] < 1:
        raise ValueError(f"`{name}` must have shape (..., k, d) (space components), got shape {describe_shape(x)}")


# ----------------------------------------------------------------------------------------------
# one formula each
# ----------------------------------------------------------------------------------------------
def sinhc(r: torch.Tensor) -> torch.Tensor:
    """``sinh(r) / r``, 1 at r = 0 with a finite gradient (torch's sinh is accurate for small r)."""
    zero = r == 0  # NaN is not 0: NaN in, NaN out
    safe = torch.where(zero, torch.ones_like(r), r)
    return torch.where(zero, torch.ones_like(r), torch.sinh(safe) / safe)


def asinhc(r: torch.Tensor) -> torch.Tensor:
    """``asinh(r) / r``, 1 at r = 0 with a finite gradient."""
    zero = r == 0
    safe = torch.where(zero, torch.ones_like(r), r)
    return torch.where(zero, torch.ones_like(r), torch.asinh(safe) / safe)


def time_of(xs: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Time component ``sqrt(1/c + |x_s|^2)`` of space components ``(..., d)``, shape (..., 1)."""
    return torch.sqrt(1 / c + row_dot(xs, xs))


def _half_sinh2_value(xs: torch.Tensor, ys: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The value of :func:`half_sinh2`, shape (..., 1) (no autograd: :class:`_HalfSinh2` supplies the gradient)."""
    nx2, ny2 = row_dot(xs, xs), row_dot(ys, ys)
    nx, ny = torch.sqrt(nx2), torch.sqrt(ny2)
    diff = xs - ys
    squares = row_dot(diff, xs + ys)  # |x|^2 - |y|^2, exact for nearby rows
    # sinh(r_x - r_y) = <X - Y, X + Y> / (|X| Y_0 + |Y| X_0); the sqrt(c) factors cancel
    denom = nx * torch.sqrt(1 / c + ny2) + ny * torch.sqrt(1 / c + nx2)
    w = squares / torch.where(denom == 0, torch.ones_like(denom), denom)  # 0/0 only with both at the origin
    radial = w * w / (2 * (1 + torch.sqrt(1 + w * w)))  # sinh^2(t / 2) = sinh^2 t / (2 (1 + cosh t))
    # the angular term |x| |y| sin^2(theta / 2), the better of two ways
    chord2 = row_dot(diff, diff)
    both = nx + ny
    gap = squares / torch.where(both == 0, torch.ones_like(both), both)  # |x| - |y|
    by_chord = ((chord2 - gap * gap) / 4).clamp(min=0)  # Euclidean law of cosines
    turn = xs * ny - ys * nx  # |x| |y| (x^ - y^), no division
    turn2 = row_dot(turn, turn)
    norms = nx * ny
    by_direction = turn2 / (4 * torch.where(norms == 0, torch.ones_like(norms), norms))
    angular = torch.where(chord2 <= torch.sqrt(turn2), by_chord, by_direction)
    return radial + c * angular


class _HalfSinh2(torch.autograd.Function):
    """:func:`half_sinh2` with the gradient of ``s^2 = (z - 1) / 2``, ``z = c (x_0 y_0 - <x_s, y_s>)``.

    The accurate forward splits ``s^2`` into terms with kinks at the origin (``|x_s|``) that cancel in the
    sum; autograd through them would give the kinks' subgradients there. The gradient of the smooth sum is
    short: ``d s^2 / d x_s = c (y_0 / x_0 x_s - y_s) / 2`` (and symmetrically), ``d s^2 / d c =
    (x_0 y_0 - <x_s, y_s> - (y_0 / x_0 + x_0 / y_0) / (2 c)) / 2``; written with differentiable ops on the
    inputs, so second derivatives work too.
    """

    @staticmethod
    def forward(ctx, xs: torch.Tensor, ys: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(xs, ys, c)
        return _half_sinh2_value(xs, ys, c).squeeze(-1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        xs, ys, c = ctx.saved_tensors
        g = grad.unsqueeze(-1) / 2
        x0, y0 = time_of(xs, c), time_of(ys, c)
        grad_x = grad_y = grad_c = None
        if ctx.needs_input_grad[0]:
            grad_x = (c * g * (y0 / x0 * xs - ys)).sum_to_size(xs.shape)
        if ctx.needs_input_grad[1]:
            grad_y = (c * g * (x0 / y0 * ys - xs)).sum_to_size(ys.shape)
        if ctx.needs_input_grad[2]:
            dz = x0 * y0 - row_dot(xs, ys) - (y0 / x0 + x0 / y0) / (2 * c)
            grad_c = (g * dz).sum().reshape(c.shape)
        return grad_x, grad_y, grad_c


def half_sinh2(xs: torch.Tensor, ys: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``s^2 = sinh^2(sqrt(c) d / 2)`` of matching rows, shape (...), from space components (..., d).

    ``s^2 = sinh^2((r_x - r_y) / 2) + |X| |Y| sin^2(theta / 2)`` with ``X = sqrt(c) x_s`` (module
    docstring). The radial term comes from ``sinh(r_x - r_y) = <X - Y, X + Y> / (|X| Y_0 + |Y| X_0)``. The
    angular term is taken the better of two ways: from the directions, ``|X^ - Y^|^2 |X| |Y| / 4`` (computed
    as ``| |Y| X - |X| Y |^2 / (4 |X| |Y|)``), whose rounding is ~eps |X| |Y| theta (right for a point near
    the origin and one far out), or from the chord, ``(|X - Y|^2 - (|X| - |Y|)^2) / 4`` (Euclidean law of
    cosines), whose rounding is ~eps |X - Y|^2 (right for nearby points): the first where
    ``|X - Y|^2 > |X| |Y| |X^ - Y^|``. The gradient is that of the smooth ``(z - 1) / 2`` (:class:`_HalfSinh2`),
    exact at the origin too.

    ``s^2`` equals ``c q / 4`` for the Minkowski squared chord ``q = <x - y, x - y>_L`` and ``(z - 1) / 2``
    for ``z = -c <x, y>_L``; exactly 0 at ``x_s = y_s``, with finite gradients there. NaN or Inf in a row
    gives NaN.

    Parameters
    ----------
    xs, ys : torch.Tensor, shape (..., d)
        Space components, broadcastable, one compute dtype.
    c : torch.Tensor, 0-dim
        Minus the curvature, in the same dtype (:func:`as_curvature`).

    Returns
    -------
    torch.Tensor, shape (...)
    """
    with autocast_disabled(xs.device):
        return _HalfSinh2.apply(xs, ys, c)


def _scaled_dist_from_half_sinh2(s2: torch.Tensor) -> torch.Tensor:
    # sqrt(c) d = 2 asinh(s); gradient 0 at s = 0 (a subgradient of the kink at x = y)
    return 2 * torch.asinh(safe_sqrt(s2))


class _Acosh(torch.autograd.Function):
    """``acosh(z) = log(z + sqrt(z^2 - 1))`` for ``z`` clamped to >= 1; gradient 0 (not inf) where ``z <= 1``.

    Written out because torch's CPU ``acosh`` is not vectorized (~9x slower than these passes on a
    (16, 256, 256) grid). ``z^2 - 1`` loses relative accuracy as ``z -> 1``, where the rounding of ``z``
    itself already dominates (the near pairs ``space_cdist`` recomputes); it overflows float32 only for
    ``z > 1.8e19``. ``z`` is clamped and overwritten with the result IN PLACE (callers pass a temporary of
    their own; ``mark_dirty``): safe under autograd because the op that made ``z`` (a matmul) does not need
    its output for its backward. One new grid-sized tensor in the forward (the saved root) and one in the
    backward: on a CPU each fresh grid-sized tensor costs page faults worth several arithmetic passes.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:  # noqa: D102
        z.clamp_(min=1)
        root = torch.mul(z, z).sub_(1).sqrt_()  # sqrt(z^2 - 1)
        ctx.save_for_backward(root)
        ctx.mark_dirty(z)
        return z.add_(root).log_()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        (root,) = ctx.saved_tensors
        # 1 / root, with 0 (not inf) where z <= 1 (root = +-0); a NaN stays NaN
        return torch.reciprocal(root).nan_to_num_(nan=math.nan, posinf=0.0, neginf=0.0).mul_(grad)



# ----------------------------------------------------------------------------------------------
# space-component functions
# ----------------------------------------------------------------------------------------------
def lorentz_inner(x: torch.Tensor, y: torch.Tensor, *, keepdim: bool = False) -> torch.Tensor:
    """Lorentzian inner product ``-x_0 y_0 + <x_s, y_s>`` over the last axis (full coordinates).

    Parameters
    ----------
    x, y : torch.Tensor, shape (..., d + 1)
        Time first; broadcastable.
    keepdim : bool, keyword-only

    Returns
    -------
    torch.Tensor, shape (...) or (..., 1)
        In the compute dtype (float32 for 16-bit inputs).
    """
    xc, yc = upcast(x), upcast(y)
    with autocast_disabled(xc.device):
        out = (xc[..., 1:] * yc[..., 1:]).sum(-1) - xc[..., 0] * yc[..., 0]
    return out.unsqueeze(-1) if keepdim else out


def space_expmap0(u: torch.Tensor, c: Curvature = 1.0, *, max_radius: Optional[float] = None) -> torch.Tensor:
    """Exponential map at the origin ``(1/sqrt(c), 0)``, returning space components.

    ``exp_0(u)_s = sinh(sqrt(c) |u_b|) / (sqrt(c) |u_b|) u_b`` per row; the time part of ``u`` is 0 at
    the origin, so ``u`` is given by its d space components. Jacobian identity at ``u = 0``.

    Parameters
    ----------
    u : torch.Tensor, shape (..., k, d)
        Tangent vectors at the origin.
    c : float or 0-dim tensor, > 0
    max_radius : float, optional, keyword-only
        Clamp ``sqrt(c) |u_b|`` (the geodesic distance to the origin times ``sqrt(c)``) at this value,
        keeping the direction: MERU uses ``asinh(2**15)`` so that float32 times stay below 2^15 /
        sqrt(c). None: no clamp (``sinh`` overflows float32 past ~89).

    Returns
    -------
    torch.Tensor, shape (..., k, d), compute dtype (float32 for 16-bit inputs).
    """
    check_space(u, "u")
    uc = upcast(u)
    sqrt_c = torch.sqrt(as_curvature(c, uc))
    r = sqrt_c * torch.linalg.vector_norm(uc, dim=-1, keepdim=True)
    if max_radius is None:
        return uc * sinhc(r)
    # direction kept, length sinh(max_radius) / sqrt(c) beyond the clamp (as MERU)
    clamped = r.clamp(max=max_radius)
    return uc * (sinhc(clamped) * torch.where(r > max_radius, clamped / r, torch.ones_like(r)))


def space_logmap0(x: torch.Tensor, c: Curvature = 1.0) -> torch.Tensor:
    """Logarithmic map at the origin: ``asinh(sqrt(c) |x_b|) / (sqrt(c) |x_b|) x_b`` per row.

    ``acosh(sqrt(c) x_0) = asinh(sqrt(c) |x_s|)``: no cancellation for points near the origin.

    Parameters
    ----------
    x : torch.Tensor, shape (..., k, d)
        Space components.
    c : float or 0-dim tensor, > 0

    Returns
    -------
    torch.Tensor, shape (..., k, d), compute dtype: tangent vectors at the origin (space part).
    """
    check_space(x, "x")
    xc = upcast(x)
    sqrt_c = torch.sqrt(as_curvature(c, xc))
    return xc * asinhc(sqrt_c * torch.linalg.vector_norm(xc, dim=-1, keepdim=True))


def space_dist0(x: torch.Tensor, c: Curvature = 1.0) -> torch.Tensor:
    """Distance of each row to the origin, ``asinh(sqrt(c) |x_b|) / sqrt(c)``, shape (..., k)."""
    check_space(x, "x")
    xc = upcast(x)
    sqrt_c = torch.sqrt(as_curvature(c, xc))
    return torch.asinh(sqrt_c * torch.linalg.vector_norm(xc, dim=-1)) / sqrt_c


def space_dist(x: torch.Tensor, y: torch.Tensor, c: Curvature = 1.0) -> torch.Tensor:
    """Geodesic distance per factor, ``acosh(-c <x_b, y_b>_L) / sqrt(c)``, as ``2 asinh(s) / sqrt(c)``.

    ``s^2 = sinh^2(sqrt(c) d / 2)`` from :func:`half_sinh2` (law of cosines, no cancellation).

    Parameters
    ----------
    x, y : torch.Tensor, shape (..., k, d)
        Space components (broadcastable).
    c : float or 0-dim tensor, > 0

    Returns
    -------
    torch.Tensor, shape (..., k)
        Compute dtype. ``space_dist(x, x)`` is exactly 0 with gradient 0 (a subgradient: the distance
        has a kink there). Float32 relative error within 1e-6 for a point near the origin and one far out
        (tested on radii 0 to 12; measured ~1e-7) and near the diagonal, equal to the diagonal of
        :func:`space_cdist` to its ~1e-6. NaN or Inf in a row gives NaN for that factor.
    """
    check_space(x, "x")
    check_space(y, "y")
    xc, yc = upcast(x), upcast(y)
    cc = as_curvature(c, xc)
    return _scaled_dist_from_half_sinh2(half_sinh2(xc, yc, cc)) / torch.sqrt(cc)


def _near_threshold(t: torch.Tensor) -> torch.Tensor:
    # the root of z^2 - NEAR t z - 1: z below it has z^2 - 1 < NEAR t z
    h = NEAR * t / 2
    return h + torch.sqrt(h * h + 1)


def _near_pairs(z: torch.Tensor, cc: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor,
                sync_free: bool) -> Optional[torch.Tensor]:
    """Flat indices into the (k, n, m) grid ``z = -c <x, y>_L`` of the pairs ``NEAR`` selects: all of them (one
    device sync; None when there are none), or with ``sync_free`` those among the nearest pairs of every row and
    column (:func:`~manifold_align.manifolds.rows.nearest_pairs`), -1 for the others, no sync.

    ``x0`` (n, k, 1) and ``y0`` (m, k, 1) are the times.
    """
    _, n, m = z.shape
    if sync_free:
        flat = nearest_pairs(z)
    else:
        # a bound first: t = c x_0 y_0 <= c max x_0 max y_0 per factor, and the threshold grows with t, so only z
        # below the bound's threshold can be a near pair; the exact threshold is then checked on those
        bound = _near_threshold(cc * x0.amax(0) * y0.amax(0)).unsqueeze(-1)  # (k, 1, 1)
        flat = flat_indices(z < bound)
        if flat is None:
            return None
    b, i, j = flat // (n * m), flat // m % n, flat % m
    near = z.reshape(-1)[flat] < _near_threshold(cc * x0[i, b, 0] * y0[j, b, 0])
    return torch.where(near, flat, -1) if sync_free else flat[near]


def scaled_cdist(xs: torch.Tensor, ys: torch.Tensor, c: torch.Tensor, precise: bool = True, *,
                 sync_free: bool = False) -> torch.Tensor:
    """``sqrt(c) * dist`` per factor for all pairs, shape (k, n, m): the kernel under :func:`space_cdist`.

    One batched matmul of the (d + 1)-vectors ``(c x_0, c x_s)`` and ``(y_0, -y_s)`` gives
    ``z = -c <x, y>_L``; then ``acosh(z)``. With ``precise`` the pairs it cannot resolve (see ``NEAR``) are
    recomputed by the :func:`half_sinh2` formula. No checks: callers pass space components of one
    compute dtype and ``c`` as a 0-dim tensor of that dtype (:func:`as_curvature`); a geometry that
    scores ``-sum_b d_b`` folds ``1/sqrt(c)`` into its own (n, m) pass.

    Parameters
    ----------
    xs : torch.Tensor, shape (n, k, d)
    ys : torch.Tensor, shape (m, k, d)
    c : torch.Tensor, 0-dim, > 0
    precise : bool
    sync_free : bool, keyword-only
        Recompute the near pairs among the nearest of every row and column
        (:func:`~manifold_align.manifolds.rows.nearest_pairs`), without a device sync; False recomputes all of them
        (one sync).

    Returns
    -------
    torch.Tensor, shape (k, n, m)
    """
    with autocast_disabled(xs.device):
        x0, y0 = time_of(xs, c), time_of(ys, c)  # (n, k, 1), (m, k, 1)
        xa = torch.cat([x0, xs], dim=-1) * c
        ya = torch.cat([y0, -ys], dim=-1)
        z = torch.bmm(xa.transpose(0, 1), ya.permute(1, 2, 0))  # (k, n, m)
    # near pairs are found before _Acosh overwrites z with its result
    flat = _near_pairs(z.detach(), c, x0.detach(), y0.detach(), sync_free) if precise and z.device.type != "meta" else None
    out = _Acosh.apply(z)

    def exact(xr: torch.Tensor, yr: torch.Tensor) -> torch.Tensor:
        return _scaled_dist_from_half_sinh2(half_sinh2(xr, yr, c))

    return recompute_pairs(out, flat, xs, ys, exact)


def space_cdist(x: torch.Tensor, y: torch.Tensor, c: Curvature = 1.0, *, precise: bool = True,
                sum_factors: bool = False) -> torch.Tensor:
    r"""Pairwise geodesic distances per factor without an ``n*m*k*d`` intermediate.

    ``-c <x_b, y_b>_L`` for all pairs is one batched matmul over the k factors (float32 for float32
    and 16-bit inputs, out of autocast), then ``acosh``. A rounded ``z = -c <x, y>_L`` has an error of
    about ``eps c x_0 y_0``, which ``acosh`` turns into ``eps c x_0 y_0 / sqrt(z^2 - 1)``: large near the
    diagonal. With ``precise=True`` the entries where that error would exceed ~1e-6 relative (``z^2 - 1 <
    NEAR c x_0 y_0 z``, ``NEAR = 1/8``) are recomputed from their gathered rows by the formula of
    :func:`space_dist`: every entry then has a float32 relative error of ~1e-6 (measured <= 2.2e-6 for
    d <= 32, tests/manifolds/test_lorentz.py), the diagonal of ``space_cdist(x, y)`` equals ``space_dist(x, y)``
    to that, and ``space_cdist(x, x)`` has an exact 0 diagonal.

    Parameters
    ----------
    x : torch.Tensor, shape (n, k, d)
        Space components.
    y : torch.Tensor, shape (m, k, d)
    c : float or 0-dim tensor, > 0
    precise : bool, keyword-only
        Recompute the near pairs. Costs one (k, n, m) comparison pass and one device sync; the gather
        of ``2 P d`` values for P near pairs (none for points far apart) in chunks of 2^20 values.
    sum_factors : bool, keyword-only
        Return ``sum_b d_b``, shape (n, m) (what the ``lorentz`` geometry scores), dividing by
        ``sqrt(c)`` after the sum: one (k, n, m) pass fewer than summing the result.

    Returns
    -------
    torch.Tensor, shape (k, n, m), or (n, m) with ``sum_factors``
        Distances in the compute dtype. Take the root of the sum of squares over axis 0 for the
        product-manifold distance (:meth:`Hyperboloid.cdist`).
    """
    for t, name in ((x, "x"), (y, "y")):
        check_space(t, name)
        if t.dim() != 3:
            raise ValueError(f"`{name}` must have shape (n, k, d), got shape {describe_shape(t)}")
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(f"`x` and `y` must have the same (k, d), got {describe_shape(x)} and {describe_shape(y)}")
    dtype = compute_dtype(torch.result_type(x, y))
    xs, ys = x.to(dtype), y.to(dtype)
    cc = as_curvature(c, xs)
    scaled = scaled_cdist(xs, ys, cc, precise)
    return (scaled.sum(0) if sum_factors else scaled) / torch.sqrt(cc)


