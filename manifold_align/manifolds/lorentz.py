"""The hyperboloid of curvature -c, k factors at once: H(d, k, c) = H^d_c x ... x H^d_c.

Two representations of a point, both with the k factors as rows:

* **full coordinates**, shape ``(..., k, d + 1)``, time first: ``x = (x_0, x_s)`` with
  ``<x, x>_L = -x_0^2 + |x_s|^2 = -1/c`` and ``x_0 > 0``. This is what :class:`Hyperboloid` (a
  ``geoopt.Manifold``) stores; it agrees with ``geoopt.Lorentz(k=1/c)`` row by row.
* **space components**, shape ``(..., k, d)``: ``x_s`` alone, the time ``x_0 = sqrt(1/c + |x_s|^2)``
  derived when needed (MERU's representation). Every ``x_s`` in R^d is a point, so the similarity
  ``lorentz`` keeps its features in this form, shape ``(N, k, d)`` like every other similarity. The
  ``space_*`` functions work on it and take ``c`` as a float or a 0-dim tensor (a learnable curvature).

Accuracy. ``acosh(-c <x, y>_L)`` loses everything near the diagonal: ``-c <x, y>_L`` is 1 plus a
small number computed from terms of size ``c x_0 y_0``, so in float32 ``dist(x, x)`` comes out
~``sqrt(2 eps) x_0`` ~ 5e-4 x_0 and its gradient is infinite. Here the distance comes from the
Minkowski chord ``q = |x_s - y_s|^2 - (x_0 - y_0)^2`` (with ``x_0 - y_0 = <x_s - y_s, x_s + y_s> /
(x_0 + y_0)``, no difference of large numbers) as ``2 asinh(sqrt(c q) / 2) / sqrt(c)``: exactly 0 on
the diagonal, with gradient 0 there, and accurate near it. :func:`space_cdist` takes the fast
matmul route and recomputes the near pairs that way, as :meth:`Oblique.cdist` does.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import geoopt
import torch
from geoopt.manifolds.base import Manifold, ScalingInfo
from geoopt.utils import size2shape

from ..dtypes import autocast_disabled
from ..dtypes import compute_dtype as _compute_dtype
from ..validation import check_finite, describe_shape

__all__ = [
    "Hyperboloid",
    "HyperboloidExact",
    "lorentz_inner",
    "space_cdist",
    "space_dist",
    "space_dist0",
    "space_expmap0",
    "space_logmap0",
    "space_time",
]

Curvature = Union[float, torch.Tensor]


# ----------------------------------------------------------------------------------------------
# helpers (one formula each)
# ----------------------------------------------------------------------------------------------
def _up(t: torch.Tensor) -> torch.Tensor:
    return t.to(_compute_dtype(t.dtype))


def _curv(c: Curvature, like: torch.Tensor) -> torch.Tensor:
    """``c`` as a 0-dim tensor in ``like``'s dtype and device (keeps its graph when learnable)."""
    if isinstance(c, torch.Tensor):
        return c.to(dtype=like.dtype, device=like.device)
    # straight into the target dtype: via float32 a Python 0.7 would lose digits in float64
    return torch.tensor(float(c), dtype=like.dtype, device=like.device)


def _check_curvature(c: Curvature) -> None:
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


def _check_space(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape (..., k, d), got {type(x).__name__}")
    if x.dim() < 2 or x.shape[-1] < 1:
        raise ValueError(f"`{name}` must have shape (..., k, d) (space components), got shape {describe_shape(x)}")


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., k, d), (..., k, d) -> (..., k, 1), outside autocast (which would run it in 16 bits)."""
    with autocast_disabled(a.device):
        return torch.einsum("...d,...d->...", a, b).unsqueeze(-1)


def _safe_sqrt(t: torch.Tensor) -> torch.Tensor:
    """sqrt with gradient 0 (not inf, which times 0 is NaN) where ``t <= 0``."""
    positive = t > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, t, torch.ones_like(t))), torch.zeros_like(t))


def _sinhc(r: torch.Tensor) -> torch.Tensor:
    """``sinh(r) / r``, 1 at r = 0 with a finite gradient (torch's sinh is accurate for small r)."""
    pos = r > 0
    safe = torch.where(pos, r, torch.ones_like(r))
    return torch.where(pos, torch.sinh(safe) / safe, torch.ones_like(r))


def _asinhc(r: torch.Tensor) -> torch.Tensor:
    """``asinh(r) / r``, 1 at r = 0 with a finite gradient."""
    pos = r > 0
    safe = torch.where(pos, r, torch.ones_like(r))
    return torch.where(pos, torch.asinh(safe) / safe, torch.ones_like(r))


def _time(xs: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Time component ``sqrt(1/c + |x_s|^2)``, shape (..., k, 1)."""
    return torch.sqrt(1 / c + _row_dot(xs, xs))


def _chord(xs: torch.Tensor, ys: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Minkowski squared chord ``q = <x - y, x - y>_L >= 0`` per row, shape (..., k), from space components.

    ``x_0 - y_0 = (|x_s|^2 - |y_s|^2) / (x_0 + y_0) = <x_s - y_s, x_s + y_s> / (x_0 + y_0)``: no
    difference of two large times, and ``q = 0`` exactly when ``x_s = y_s``.
    """
    diff = xs - ys
    dt = _row_dot(diff, xs + ys) / (_time(xs, c) + _time(ys, c))
    return (_row_dot(diff, diff) - dt * dt).squeeze(-1).clamp(min=0)


def _chord_dist(q: torch.Tensor, sqrt_c: torch.Tensor) -> torch.Tensor:
    """Distance from the squared chord: ``acosh(1 + c q / 2) / sqrt(c) = 2 asinh(sqrt(c q) / 2) / sqrt(c)``."""
    return 2 * torch.asinh(0.5 * sqrt_c * _safe_sqrt(q)) / sqrt_c


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


# An entry of the (k, n, m) grid whose float32 acosh error would exceed ~2 eps / _NEAR
# (sqrt(z^2 - 1) < _NEAR * c x_0 y_0) is recomputed from its rows.
_NEAR = 0.05
# values per chunk of gathered rows in the exact recomputation
_PAIR_CHUNK = 2**20


# ----------------------------------------------------------------------------------------------
# space-component functions (the similarity's path)
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
    xc, yc = _up(x), _up(y)
    with autocast_disabled(xc.device):
        out = (xc[..., 1:] * yc[..., 1:]).sum(-1) - xc[..., 0] * yc[..., 0]
    return out.unsqueeze(-1) if keepdim else out


def space_time(x: torch.Tensor, c: Curvature = 1.0) -> torch.Tensor:
    """Time components ``sqrt(1/c + |x_s|^2)`` of points given by their space components.

    Parameters
    ----------
    x : torch.Tensor, shape (..., k, d)
    c : float or 0-dim tensor, > 0

    Returns
    -------
    torch.Tensor, shape (..., k, 1), compute dtype.
    """
    _check_space(x, "x")
    xc = _up(x)
    return _time(xc, _curv(c, xc))


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
    _check_space(u, "u")
    uc = _up(u)
    sqrt_c = torch.sqrt(_curv(c, uc))
    r = sqrt_c * torch.linalg.vector_norm(uc, dim=-1, keepdim=True)
    if max_radius is None:
        return uc * _sinhc(r)
    # direction kept, length sinh(max_radius) / sqrt(c) beyond the clamp (as MERU)
    clamped = r.clamp(max=max_radius)
    return uc * (_sinhc(clamped) * torch.where(r > max_radius, clamped / r, torch.ones_like(r)))


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
    _check_space(x, "x")
    xc = _up(x)
    sqrt_c = torch.sqrt(_curv(c, xc))
    return xc * _asinhc(sqrt_c * torch.linalg.vector_norm(xc, dim=-1, keepdim=True))


def space_dist0(x: torch.Tensor, c: Curvature = 1.0) -> torch.Tensor:
    """Distance of each row to the origin, ``asinh(sqrt(c) |x_b|) / sqrt(c)``, shape (..., k)."""
    _check_space(x, "x")
    xc = _up(x)
    sqrt_c = torch.sqrt(_curv(c, xc))
    return torch.asinh(sqrt_c * torch.linalg.vector_norm(xc, dim=-1)) / sqrt_c


def space_dist(x: torch.Tensor, y: torch.Tensor, c: Curvature = 1.0) -> torch.Tensor:
    """Geodesic distance per factor, ``acosh(-c <x_b, y_b>_L) / sqrt(c)``, by the chord formula.

    Parameters
    ----------
    x, y : torch.Tensor, shape (..., k, d)
        Space components (broadcastable).
    c : float or 0-dim tensor, > 0

    Returns
    -------
    torch.Tensor, shape (..., k)
        Compute dtype. ``space_dist(x, x)`` is exactly 0 with gradient 0 (a subgradient: the distance
        has a kink there). Float32 relative error ~1e-6 for points within distance ~5 of the origin.
    """
    _check_space(x, "x")
    _check_space(y, "y")
    xc, yc = _up(x), _up(y)
    cc = _curv(c, xc)
    return _chord_dist(_chord(xc, yc, cc), torch.sqrt(cc))


def _gathered_chords(xs, ys, cc, flat, n, m):
    """Exact squared chords for flat indices into a (k, n, m) grid: rows ``xs[i, b]`` and ``ys[j, b]``."""
    b, i, j = flat // (n * m), flat // m % n, flat % m
    return _chord(xs[i, b].unsqueeze(-2), ys[j, b].unsqueeze(-2), cc).squeeze(-1)


def _near_pairs(z: torch.Tensor, cc: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor) -> Optional[torch.Tensor]:
    """Flat indices into the (k, n, m) grid ``z = -c <x, y>_L`` of the pairs ``_NEAR`` selects, or None.

    ``x0`` (n, k, 1) and ``y0`` (m, k, 1) are the times.
    """
    _, n, m = z.shape
    # cheap bound first: t = c x_0 y_0 <= c max x_0 max y_0 per factor, so only z below this bound
    # can be a near pair; one reduction pass (no temporary) usually finds none
    t_max = cc * x0.amax(0) * y0.amax(0)  # (k, 1)
    bound = torch.sqrt(1 + (_NEAR * t_max) ** 2).unsqueeze(-1)  # (k, 1, 1)
    if not bool((z.amin(dim=(1, 2), keepdim=True) < bound).any()):
        return None
    flat = torch.nonzero((z < bound).view(-1)).squeeze(1)
    b, i, j = flat // (n * m), flat // m % n, flat % m
    t = cc * x0[i, b, 0] * y0[j, b, 0]
    zf = z.view(-1)[flat].clamp(min=1)
    flat = flat[(zf - 1) * (zf + 1) < (_NEAR * t) ** 2]
    return flat if flat.numel() else None


def _scaled_cdist(xs: torch.Tensor, ys: torch.Tensor, cc: torch.Tensor, precise: bool) -> torch.Tensor:
    """``sqrt(c) * dist`` per factor, shape (k, n, m), for space components (n, k, d) and (m, k, d).

    One batched matmul of the (d + 1)-vectors ``(c x_0, c x_s)`` and ``(y_0, -y_s)`` gives
    ``z = -c <x, y>_L``; then ``acosh(z)``. Near pairs (see ``_NEAR``) are recomputed exactly.
    """
    n, m = xs.shape[0], ys.shape[0]
    with autocast_disabled(xs.device):
        x0, y0 = _time(xs, cc), _time(ys, cc)  # (n, k, 1), (m, k, 1)
        xa = torch.cat([x0, xs], dim=-1) * cc
        ya = torch.cat([y0, -ys], dim=-1)
        z = torch.bmm(xa.transpose(0, 1), ya.permute(1, 2, 0))  # (k, n, m)
    # near pairs are found before _Acosh overwrites z with its result
    flat = _near_pairs(z.detach(), cc, x0.detach(), y0.detach()) if precise and z.device.type != "meta" else None
    out = _Acosh.apply(z)
    if flat is None:
        return out
    chunk = max(1, _PAIR_CHUNK // xs.shape[-1])
    sqrt_c = torch.sqrt(cc)
    exact = torch.cat([
        _chord_dist(_gathered_chords(xs, ys, cc, part, n, m), sqrt_c) * sqrt_c for part in flat.split(chunk)
    ])
    return out.reshape(-1).index_put((flat,), exact).view_as(out)


#: largest log2 of a product of w = z + sqrt(z^2 - 1) factors formed before one log, per dtype (float32
#: overflows at 2^128, float64 at 2^1024; the margin covers the rounding of the product)
_LOG2_PRODUCT_MAX = {torch.float32: 120.0, torch.float64: 1000.0}


def _product_group(k: int, z_max: float, dtype: torch.dtype) -> int:
    """How many factors' ``w <= 2 z_max`` to multiply before one log: the largest divisor g of k with
    ``g log2(2 z_max)`` under the dtype's bound (1 for a non-finite ``z_max``: NaN and Inf then propagate)."""
    if not math.isfinite(z_max):
        return 1
    limit = _LOG2_PRODUCT_MAX.get(dtype, 0.0)
    per_factor = max(1.0, math.log2(2.0 * max(z_max, 1.0)))
    g = max(1, min(k, int(limit // per_factor)))
    while k % g:
        g -= 1
    return g


class _AcoshSum(torch.autograd.Function):
    """``sum_b acosh(z_b)``, ``z = xa @ ya`` batched over the k factors, shape (n, m); the near pairs left out.

    ``xa`` (k, n, e) and ``ya`` (k, e, m) are the (d + 1)-vectors ``c (x_0, x_s)`` and ``(y_0, -y_s)`` of
    :func:`_scaled_cdist`, so ``z = -c <x, y>_L``. The entries ``_NEAR`` selects contribute 0 and get no
    gradient here (the caller adds their exact chord distances), and come back as flat indices into the
    (k, n, m) grid (or None).

    Speed: the k logs of a score are taken as the logs of a few products (``log w_1 + log w_2 = log(w_1
    w_2)``, w = z + sqrt(z^2 - 1) <= 2z; as many factors per product as the dtype's range allows,
    :func:`_product_group`), and each grid pass works in place on one of two grid-sized buffers (z and
    the root, which the backward needs), a chunk of factors at a time so that the chunk stays in cache
    (:data:`_FACTOR_CHUNK`): on a CPU the acosh grid costs about as many passes as a matmul of the factors,
    so every pass saved shows. The backward is ``g / sqrt(z^2 - 1)`` and the two matmuls.
    """

    @staticmethod
    def forward(ctx, xa: torch.Tensor, ya: torch.Tensor, precise: bool):  # noqa: D102
        k, n, m = xa.shape[0], xa.shape[1], ya.shape[2]
        out = xa.new_zeros(n, m)
        root = xa.new_empty(k, n, m)
        near_parts = []
        if out.numel():
            # the cheap bound z = c (x_0 y_0 - <x_s, y_s>) <= 2 c x_0 y_0 sizes the products (no pass over z)
            z_bound = 2 * float((xa[:, :, 0].amax(1) * ya[:, 0, :].amax(1)).amax())
            g = _product_group(k, z_bound, xa.dtype)
            for b0, b1 in _factor_chunks(k, g, n * m):
                z = torch.bmm(xa[b0:b1], ya[b0:b1])  # (b1 - b0, n, m)
                near = _near_in_grid(z, xa[b0:b1], ya[b0:b1]) if precise and z.device.type != "meta" else None
                z.clamp_(min=1)  # rounding below 1 (NaN stays)
                r = torch.mul(z, z, out=root[b0:b1]).sub_(1).sqrt_()  # sqrt(z^2 - 1)
                w = z.add_(r)  # z + sqrt(z^2 - 1), in z's buffer
                if near is not None:
                    w.view(-1)[near] = 1.0
                    near_parts.append(near + b0 * n * m)
                w = w.view(-1, g, n, m).prod(1) if g > 1 else w
                out.add_(w.log_().sum(0))
        near = torch.cat(near_parts) if near_parts else None
        ctx.save_for_backward(xa, ya, root)
        ctx.near, ctx.precise = near, precise
        ctx.mark_non_differentiable(*(() if near is None else (near,)))
        return out, near

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _grad_near):  # noqa: D102
        xa, ya, root = ctx.saved_tensors
        # d acosh(z) / dz = 1 / sqrt(z^2 - 1); 0 (not inf) where z <= 1 (root 0) and at the near pairs. With
        # `precise` every z <= 1 is a near pair (sqrt(z^2 - 1) = 0 < _NEAR t), zeroed below: no inf pass
        dz = grad.unsqueeze(0) / root
        if not ctx.precise:
            dz.nan_to_num_(nan=math.nan, posinf=0.0, neginf=0.0)
        if ctx.near is not None:
            dz.view(-1)[ctx.near] = 0.0
        grad_xa = torch.bmm(dz, ya.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        grad_ya = torch.bmm(xa.transpose(1, 2), dz) if ctx.needs_input_grad[1] else None
        return grad_xa, grad_ya, None


#: grid values per chunk of factors in _AcoshSum's forward: the chunk's z and root stay in a core's cache
#: through their half-dozen elementwise passes (2^18 float32 values are 1 MiB)
_FACTOR_CHUNK = 2**18


def _factor_chunks(k: int, group: int, n_scores: int) -> list[tuple[int, int]]:
    """Ranges of factors, whole product groups each, of about ``_FACTOR_CHUNK`` grid values."""
    per = max(1, _FACTOR_CHUNK // max(1, n_scores * group)) * group
    return [(b, min(b + per, k)) for b in range(0, k, per)]


def _near_in_grid(z: torch.Tensor, xa: torch.Tensor, ya: torch.Tensor) -> Optional[torch.Tensor]:
    """:func:`_near_pairs` for ``z = xa @ ya`` (the times are ``xa[..., 0] = c x_0`` and ``ya[:, 0] = y_0``)."""
    t_max = xa[:, :, 0].amax(1) * ya[:, 0, :].amax(1)  # (k,): c max x_0 max y_0
    bound = torch.sqrt(1 + (_NEAR * t_max) ** 2)
    if not bool((z.amin(dim=(1, 2)) < bound).any()):
        return None
    k, n, m = z.shape
    flat = torch.nonzero((z < bound[:, None, None]).view(-1)).squeeze(1)
    b, i, j = flat // (n * m), flat // m % n, flat % m
    t = xa[b, i, 0] * ya[b, 0, j]
    zf = z.view(-1)[flat].clamp(min=1)
    flat = flat[(zf - 1) * (zf + 1) < (_NEAR * t) ** 2]
    return flat if flat.numel() else None


def _scaled_cdist_sum(xs: torch.Tensor, ys: torch.Tensor, cc: torch.Tensor, precise: bool) -> torch.Tensor:
    """``sqrt(c) * sum_b d_b``, shape (n, m), for space components (n, k, d) and (m, k, d).

    :func:`_scaled_cdist` summed over the factors, through :class:`_AcoshSum` (no (k, n, m) result, a
    few logs per score instead of k); the near pairs are the same and recomputed the same way.
    """
    n, m = xs.shape[0], ys.shape[0]
    with autocast_disabled(xs.device):
        x0, y0 = _time(xs, cc), _time(ys, cc)  # (n, k, 1), (m, k, 1)
        # contiguous in the layouts bmm runs fastest on (a copy of O((n + m) k d) values)
        xa = (torch.cat([x0, xs], dim=-1) * cc).transpose(0, 1).contiguous()  # (k, n, d + 1)
        ya = torch.cat([y0, -ys], dim=-1).permute(1, 2, 0).contiguous()  # (k, d + 1, m)
        out, flat = _AcoshSum.apply(xa, ya, precise)
    if flat is None:
        return out
    chunk = max(1, _PAIR_CHUNK // xs.shape[-1])
    sqrt_c = torch.sqrt(cc)
    exact = torch.cat([
        _chord_dist(_gathered_chords(xs, ys, cc, part, n, m), sqrt_c) * sqrt_c for part in flat.split(chunk)
    ])
    return out.reshape(-1).index_add(0, flat % (n * m), exact).view(n, m)


def space_cdist(x: torch.Tensor, y: torch.Tensor, c: Curvature = 1.0, *, precise: bool = True,
                sum_factors: bool = False) -> torch.Tensor:
    r"""Pairwise geodesic distances per factor without an ``n*m*k*d`` intermediate.

    ``-c <x_b, y_b>_L`` for all pairs is one batched matmul over the k factors (float32 for float32
    and 16-bit inputs, out of autocast), then ``acosh``. A rounded ``z = -c <x, y>_L`` has an error of
    about ``eps c x_0 y_0``, which ``acosh`` turns into ``eps c x_0 y_0 / sqrt(z^2 - 1)``: large near the
    diagonal. With ``precise=True`` the entries with ``sqrt(z^2 - 1) < 0.05 c x_0 y_0`` are recomputed
    from their gathered rows by the chord formula (see :func:`space_dist`), so every entry has float32
    error below ~3e-6 (times ``1/sqrt(c)``), and ``space_cdist(x, x)`` has an exact 0 diagonal.

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
        Return ``sum_b d_b``, shape (n, m) (what the ``lorentz`` similarity scores), dividing by
        ``sqrt(c)`` after the sum: one (k, n, m) pass fewer than summing the result.

    Returns
    -------
    torch.Tensor, shape (k, n, m), or (n, m) with ``sum_factors``
        Distances in the compute dtype. Take the root of the sum of squares over axis 0 for the
        product-manifold distance (:meth:`Hyperboloid.cdist`).
    """
    for t, name in ((x, "x"), (y, "y")):
        _check_space(t, name)
        if t.dim() != 3:
            raise ValueError(f"`{name}` must have shape (n, k, d), got shape {describe_shape(t)}")
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(f"`x` and `y` must have the same (k, d), got {describe_shape(x)} and {describe_shape(y)}")
    dtype = _compute_dtype(torch.result_type(x, y))
    xs, ys = x.to(dtype), y.to(dtype)
    cc = _curv(c, xs)
    if sum_factors:
        return _scaled_cdist_sum(xs, ys, cc, precise) / torch.sqrt(cc)
    return _scaled_cdist(xs, ys, cc, precise) / torch.sqrt(cc)


# ----------------------------------------------------------------------------------------------
# the manifold (full coordinates)
# ----------------------------------------------------------------------------------------------
class Hyperboloid(Manifold):
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

    For a learnable curvature use the ``space_*`` functions, which take ``c`` as a tensor (the
    ``lorentz`` similarity does). See ``docs/geometries.md``.
    """

    ndim = 2
    name = "Hyperboloid"
    reversible = False
    __scaling__ = Manifold.__scaling__.copy()

    def __init__(self, k: Optional[int] = None, d: Optional[int] = None, c: float = 1.0):
        super().__init__()
        for value, label in ((k, "k"), (d, "d")):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"`{label}` must be None or an int >= 1, got {value!r}")
        if isinstance(c, torch.Tensor):
            raise ValueError("`c` must be a Python number here; for a learnable curvature use the space_* "
                             "functions with a tensor c")
        _check_curvature(c)
        self.k, self.d, self.c = k, d, float(c)

    def extra_repr(self) -> str:  # noqa: D102
        return f"k={self.k}, d={self.d}, c={self.c:g}"

    # ------------------------------------------------------------------------------------------
    # checks
    # ------------------------------------------------------------------------------------------
    def _expected_shape(self) -> str:
        return "(..., {}, {})".format("k" if self.k is None else self.k, "d + 1" if self.d is None else self.d + 1)

    def _check_shape(self, shape: Tuple[int, ...], name: str) -> Tuple[bool, Optional[str]]:
        shape = tuple(shape)
        ok = (
            len(shape) >= 2 and shape[-1] >= 2 and shape[-2] >= 1
            and (self.k is None or shape[-2] == self.k)
            and (self.d is None or shape[-1] == self.d + 1)
        )
        if ok:
            return True, None
        text = "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
        return False, (f"`{name}` must have shape {self._expected_shape()} (k >= 1 rows of time and d >= 1 "
                       f"space coordinates), got shape {text}")

    def _assert_shape(self, tensor: torch.Tensor, name: str) -> None:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor of shape {self._expected_shape()}, "
                            f"got {type(tensor).__name__}")
        ok, reason = self._check_shape(tensor.shape, name)
        if not ok:
            raise ValueError(reason)

    def check_point(self, x: torch.Tensor, *, explain=False):
        """Check shape and finiteness of ``x``, shape ``(..., k, d + 1)`` (not the constraint)."""
        ok, reason = self._check_shape(x.shape, "x")
        if ok and not bool(torch.isfinite(x).all()):
            ok, reason = False, "`x` has non-finite values (NaN or Inf)"
        return (ok, reason) if explain else ok

    def assert_check_point(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` has shape ``(..., k, d + 1)`` and finite values."""
        self._assert_shape(x, "x")
        check_finite(x, "x")

    def _check_point_on_manifold(self, x: torch.Tensor, *, atol=1e-5, rtol=1e-5):
        if not bool(torch.isfinite(x).all()):
            return False, "`x` has non-finite values (NaN or Inf)"
        xc = _up(x)
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
        xc, uc = _up(x), _up(u)
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
        _check_space(xs, "xs")
        xc = _up(xs)
        return torch.cat([_time(xc, _curv(self.c, xc)), xc], dim=-1).to(xs.dtype)

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
        return self.lift(x[..., 1:])

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
        xc, uc = _up(x), _up(u)
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
        return _safe_sqrt(self.inner(x, u, keepdim=keepdim).to(_compute_dtype(u.dtype))).to(u.dtype)

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
        xc, uc = _up(x), _up(u)
        r = math.sqrt(self.c) * _safe_sqrt(lorentz_inner(uc, uc, keepdim=True))
        out = torch.addcmul(xc * torch.cosh(r), uc, _sinhc(r))
        return self.lift(out[..., 1:]).to(torch.result_type(x, u))

    def logmap(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r"""Logarithmic map, per row ``d_b w_b / |w_b|_L`` with ``w_b = y_b + c <x_b, y_b>_L x_b``.

        Written with the chord ``s^2 = c q / 4`` (``z = -c <x, y>_L = 1 + 2 s^2``) as
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
        xc, yc = _up(x), _up(y)
        cc = _curv(self.c, xc)
        s2 = (cc * _chord(xc[..., 1:], yc[..., 1:], cc) / 4).unsqueeze(-1)
        s = _safe_sqrt(s2)
        factor = _asinhc(s) * torch.rsqrt(1 + s2)
        w = torch.addcmul(yc - xc, xc, s2, value=-2)
        return (w * factor).to(torch.result_type(x, y))

    def component_dist(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance per factor ``d_b``, shape (..., k) (see :func:`space_dist`)."""
        self._assert_shape(x, "x")
        self._assert_shape(y, "y")
        return space_dist(x[..., 1:], y[..., 1:], self.c).to(torch.result_type(x, y))

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
        out = torch.linalg.vector_norm(space_dist(x[..., 1:], y[..., 1:], self.c), dim=-1)
        return (out[..., None, None] if keepdim else out).to(torch.result_type(x, y))

    def dist2(self, x: torch.Tensor, y: torch.Tensor, *, keepdim=False) -> torch.Tensor:
        """Squared product-metric distance ``sum_b d_b^2``; shape (...) or (..., 1, 1)."""
        self._assert_shape(x, "x")
        self._assert_shape(y, "y")
        out = space_dist(x[..., 1:], y[..., 1:], self.c).square().sum(-1)
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
        per_factor = space_cdist(x[..., 1:], y[..., 1:], self.c, precise=precise)
        return _safe_sqrt(per_factor.square().sum(0)).to(torch.result_type(x, y))

    def expmap0(self, u: torch.Tensor) -> torch.Tensor:
        """Exponential map at the origin; ``u`` shape (..., k, d + 1) (time component ignored: it is 0
        for tangent vectors at the origin). Returns full coordinates, same shape and dtype."""
        self._assert_shape(u, "u")
        return self.lift(space_expmap0(u[..., 1:], self.c)).to(u.dtype)

    def logmap0(self, x: torch.Tensor) -> torch.Tensor:
        """Logarithmic map at the origin; shape (..., k, d + 1), time component 0."""
        self._assert_shape(x, "x")
        v = space_logmap0(x[..., 1:], self.c)
        return torch.cat([torch.zeros_like(v[..., :1]), v], dim=-1).to(x.dtype)

    def dist0(self, x: torch.Tensor) -> torch.Tensor:
        """Distance of each row to the origin, shape (..., k)."""
        self._assert_shape(x, "x")
        return space_dist0(x[..., 1:], self.c).to(x.dtype)

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
        return self.lift(_up(x[..., 1:]) + _up(u[..., 1:])).to(torch.result_type(x, u))

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
        shape = size2shape(*size)
        ok, reason = self._check_shape(shape, "size")
        if not ok:
            raise ValueError(reason)
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
        shape = size2shape(*size)
        ok, reason = self._check_shape(shape, "size")
        if not ok:
            raise ValueError(reason)
        x = torch.zeros(*shape, dtype=dtype, device=device)
        x[..., 0] = 1 / math.sqrt(self.c)
        return geoopt.ManifoldTensor(x, manifold=self)


class HyperboloidExact(Hyperboloid):
    """:class:`Hyperboloid` whose retraction is the exponential map."""

    retr = Hyperboloid.expmap
    retr_transp = Hyperboloid.expmap_transp
    transp_follow_retr = Hyperboloid.transp_follow_expmap

    def extra_repr(self) -> str:  # noqa: D102
        return super().extra_repr() + ", exact"
