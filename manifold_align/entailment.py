"""MERU's entailment loss on the hyperboloid (Desai et al., ICML 2023, after Ganea et al. 2018).

Each text embedding ``x`` carries a cone with its apex at ``x`` that widens away from the origin; the paired
image ``y`` should lie inside it ("text entails image"). With ``O`` the origin,

* half-aperture ``aper(x) = asin(2 K / (sqrt(c) |x_s|))``, ``K = min_radius`` (clamped to pi/2 near the
  origin, where the cone is undefined),
* exterior angle at ``x`` of the triangle ``O x y``, by the hyperbolic law of cosines,
  ``ext(x, y) = acos((y_0 + c <x, y>_L x_0) / (|x_s| sqrt((c <x, y>_L)^2 - 1)))``,
* loss ``max(0, ext(x, y) - aper(x))``, averaged.

Points are space components (the ``lorentz`` similarity's features), times derived.
"""

from __future__ import annotations

import math
from typing import Union

import torch

from .dtypes import autocast_disabled
from .dtypes import compute_dtype as _compute_dtype
from .manifolds.lorentz import _chord, _curv, _time
from .validation import describe_shape

__all__ = ["entailment_loss", "exterior_angle", "half_aperture"]

Curvature = Union[float, torch.Tensor]


class _ClampedAngle(torch.autograd.Function):
    """``asin`` or ``acos`` of ``v`` clamped to [-1, 1], gradient 0 (not inf) where ``|v| >= 1``."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, use_acos: bool) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(v)
        ctx.sign = -1.0 if use_acos else 1.0
        v = v.clamp(-1, 1)
        return torch.acos(v) if use_acos else torch.asin(v)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        (v,) = ctx.saved_tensors
        h = 1 - v * v
        inside = h > 0
        return torch.where(inside, ctx.sign * grad * torch.rsqrt(torch.where(inside, h, torch.ones_like(h))), 0), None


def _prepare(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError(f"`{name}` must be a tensor of shape (..., d) (space components), got {x!r}")
    return x.to(_compute_dtype(x.dtype))


def _norm(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x, dim=-1)


def half_aperture(x: torch.Tensor, c: Curvature = 1.0, *, min_radius: float = 0.1) -> torch.Tensor:
    """Half-aperture of the entailment cone at ``x``: ``asin(min(1, 2 K / (sqrt(c) |x_s|)))``.

    Parameters
    ----------
    x : torch.Tensor, shape (..., d)
        Space components (a k-token tensor (..., k, d) gives one cone per token).
    c : float or 0-dim tensor, > 0
    min_radius : float, keyword-only
        ``K``: inside ``sqrt(c) |x_s| < 2 K`` the aperture is pi/2 (MERU: 0.1).

    Returns
    -------
    torch.Tensor, shape (...), values in (0, pi/2], compute dtype.
    """
    xc = _prepare(x, "x")
    sqrt_c = torch.sqrt(_curv(c, xc))
    n = sqrt_c * _norm(xc)
    ratio = torch.where(n > 0, 2 * min_radius / torch.where(n > 0, n, torch.ones_like(n)), torch.ones_like(n))
    return _ClampedAngle.apply(ratio, False)


def exterior_angle(x: torch.Tensor, y: torch.Tensor, c: Curvature = 1.0) -> torch.Tensor:
    """Exterior angle at ``x`` of the hyperbolic triangle (origin, ``x``, ``y``), in [0, pi].

    ``acos((y_0 - z x_0) / (|x_s| sqrt(z^2 - 1)))`` with ``z = -c <x, y>_L``; ``z^2 - 1 = (z - 1)(z + 1)``
    takes ``z - 1 = c q / 2`` from the Minkowski chord (exact for nearby points). Where it is undefined
    (``x`` at the origin, or ``y = x``) the cosine is taken as 0 (angle pi/2), with gradient 0.

    Parameters
    ----------
    x, y : torch.Tensor, shape (..., d)
        Space components, broadcastable.
    c : float or 0-dim tensor, > 0

    Returns
    -------
    torch.Tensor, shape (...), compute dtype.
    """
    xc, yc = _prepare(x, "x"), _prepare(y, "y")
    cc = _curv(c, xc)
    with autocast_disabled(xc.device):
        # the lorentz helpers work on rows (..., k, d): add a row axis
        xr, yr = xc.unsqueeze(-2), yc.unsqueeze(-2)
        x0, y0 = _time(xr, cc)[..., 0, 0], _time(yr, cc)[..., 0, 0]
        z_minus_1 = cc * _chord(xr, yr, cc)[..., 0] / 2
        numer = y0 - (1 + z_minus_1) * x0
        radicand, norm = z_minus_1 * (z_minus_1 + 2), _norm(xc)
    ok = (radicand > 0) & (norm > 0)
    # the masked branch computes on ones: sqrt's gradient at 0 and a division by 0 would give inf * 0 = NaN
    ones = torch.ones_like(radicand)
    denom = torch.where(ok, norm, ones) * torch.sqrt(torch.where(ok, radicand, ones))
    cosine = torch.where(ok, numer / denom, torch.zeros_like(denom))
    return _ClampedAngle.apply(cosine, True)


def entailment_loss(text: torch.Tensor, image: torch.Tensor, c: Curvature = 1.0, *,
                    min_radius: float = 0.1) -> torch.Tensor:
    """MERU's entailment loss, text entails image: ``mean(max(0, ext(text, image) - aper(text)))``.

    Parameters
    ----------
    text, image : torch.Tensor, shape (N, k, d)
        Projected (``lorentz``) features, row i a matched pair: space components.
    c : float or 0-dim tensor, > 0
        Minus the curvature (``geometry.curvature()``).
    min_radius : float, keyword-only
        See :func:`half_aperture`.

    Returns
    -------
    torch.Tensor, 0-dim
        Mean over the N pairs and the k tokens (so a weight means the same for every k; k = 1 is MERU's
        value exactly). Radians, float32 (float64 for float64 input).
    """
    if not (isinstance(text, torch.Tensor) and isinstance(image, torch.Tensor)) or text.dim() != 3 \
            or text.shape != image.shape:
        raise ValueError(f"`text` and `image` must be tensors of the same shape (N, k, d), got "
                         f"{describe_shape(text) if isinstance(text, torch.Tensor) else type(text).__name__} and "
                         f"{describe_shape(image) if isinstance(image, torch.Tensor) else type(image).__name__}")
    if not (math.isfinite(min_radius) and min_radius > 0):
        raise ValueError(f"`min_radius` must be a positive number, got {min_radius!r}")
    gap = exterior_angle(text, image, c) - half_aperture(text, c, min_radius=min_radius)
    return gap.clamp(min=0).mean()
