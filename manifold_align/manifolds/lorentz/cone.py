"""MERU's entailment cone on the hyperboloid (Desai et al., ICML 2023, after Ganea et al. 2018).

Each text embedding ``x`` carries a cone with its apex at ``x`` that widens away from the origin; the paired
image ``y`` should lie inside it ("text entails image"). With ``O`` the origin,

* half-aperture ``aper(x) = asin(2 K / (sqrt(c) |x_s|))``, ``K = min_radius`` (clamped to pi/2 near the
  origin, where the cone is undefined),
* exterior angle at ``x`` of the triangle ``O x y``, by the hyperbolic law of cosines,
  ``ext(x, y) = acos((y_0 + c <x, y>_L x_0) / (|x_s| sqrt((c <x, y>_L)^2 - 1)))``,
* loss ``max(0, ext(x, y) - aper(x))``, averaged.

Points are space components (the ``lorentz`` geometry's features), times derived. NaN or Inf in a point
gives NaN, never a finite angle or loss.
"""

from __future__ import annotations

import math as _pymath

import torch

from ...dtypes import autocast_disabled
from ...validation import describe_shape
from ..rows import clamped_asin, row_dot, row_norm, upcast
from .math import Curvature, as_curvature, half_sinh2, time_of

__all__ = ["entailment_loss", "exterior_angle", "half_aperture"]


def _tiny_norm(dtype: torch.dtype) -> float:
    """Rows shorter than this count as the origin in ``_direction``: ``tiny ** (1/4)`` of the dtype
    (1e-10 in float32), so that ``1 / |x|^2`` in a backward pass stays finite."""
    return torch.finfo(dtype).tiny ** 0.25


def _direction(x: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """``x / |x|`` per row (``norm = row_norm(x)``); a row shorter than ``_tiny_norm`` is returned as it
    is (about 0), without a division that would overflow in backward. NaN stays NaN."""
    return x / torch.where(norm < _tiny_norm(x.dtype), torch.ones_like(norm), norm)


def _prepare(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError(f"`{name}` must be a tensor of shape (..., d) (space components), got {x!r}")
    return upcast(x)


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
    torch.Tensor, shape (...), values in (0, pi/2], compute dtype; NaN where ``x`` has NaN or Inf.
    """
    xc = _prepare(x, "x")
    n = torch.sqrt(as_curvature(c, xc)) * torch.linalg.vector_norm(xc, dim=-1)
    zero = n == 0  # NaN is not 0: NaN in, NaN out
    ratio = torch.where(zero, torch.ones_like(n), 2 * min_radius / torch.where(zero, torch.ones_like(n), n))
    # an Inf norm gives ratio 0 (angle 0): 0 * n puts the NaN back (0 * Inf), adding 0 elsewhere
    return clamped_asin(ratio) + 0 * n


def exterior_angle(x: torch.Tensor, y: torch.Tensor, c: Curvature = 1.0) -> torch.Tensor:
    """Exterior angle at ``x`` of the hyperbolic triangle (origin, ``x``, ``y``), in [0, pi].

    Computed as ``atan2(|Y| sin(theta), X_0 <X^, Y> - |X| Y_0)`` with ``X = sqrt(c) x_s`` (so
    ``X_0 = sqrt(c) x_0``), ``X^`` its direction and theta the angle at the origin: the law of cosines
    gives the cosine of MERU's formula times ``sinh(sqrt(c) d)``, the law of sines the sine times the same
    factor, which cancels. No ``z^2 - 1`` and no ``acos``, so the angle keeps float32 accuracy between a
    point near the origin and one far out (MERU's acos form is accurate there too; a Minkowski-chord form was
    3e-3 rad off at radii 0.3 and 11) and near 0 and pi. ``sin(theta) = |X^ - Y^| |X^ + Y^| / 2``.
    Where the angle is undefined (``x`` at the origin, within ``_tiny_norm``, or ``y = x``) it is pi/2 with
    gradient 0, as MERU's clamped cosine 0 gives.

    Parameters
    ----------
    x, y : torch.Tensor, shape (..., d)
        Space components, broadcastable.
    c : float or 0-dim tensor, > 0

    Returns
    -------
    torch.Tensor, shape (...), compute dtype; NaN where ``x`` or ``y`` has NaN or Inf.
    """
    xc, yc = _prepare(x, "x"), _prepare(y, "y")
    cc = as_curvature(c, xc)
    sqrt_c = torch.sqrt(cc)
    with autocast_disabled(xc.device):
        nx, ny = row_norm(xc), row_norm(yc)  # (..., 1)
        ux, uy = _direction(xc, nx), _direction(yc, ny)
        sine = (sqrt_c * ny * row_norm(ux - uy) * row_norm(ux + uy) / 2).squeeze(-1)  # |Y| sin(theta)
        cosine = (cc * (time_of(xc, cc) * row_dot(ux, yc) - nx * time_of(yc, cc))).squeeze(-1)
        # x at the origin, or y = x (s^2 = 0 exactly, half_sinh2): atan2(0, 0) would be arbitrary
        undefined = (nx.squeeze(-1) < _tiny_norm(xc.dtype)) | (half_sinh2(xc, yc, cc) == 0)
    ones = torch.ones_like(sine)
    angle = torch.atan2(torch.where(undefined, ones, sine), torch.where(undefined, ones, cosine))
    return torch.where(undefined, torch.full_like(angle, _pymath.pi / 2), angle)


def entailment_loss(text: torch.Tensor, image: torch.Tensor, c: Curvature = 1.0, *,
                    min_radius: float = 0.1) -> torch.Tensor:
    """MERU's entailment loss, text entails image: ``mean(max(0, ext(text, image) - aper(text)))``.

    Parameters
    ----------
    text, image : torch.Tensor, shape (N, k, d)
        Projected (``lorentz``) features, row i a matched pair: space components.
    c : float or 0-dim tensor, > 0
        Minus the curvature.
    min_radius : float, keyword-only
        See :func:`half_aperture`.

    Returns
    -------
    torch.Tensor, 0-dim
        Mean over the N pairs and the k tokens (so a weight means the same for every k; k = 1 is MERU's
        value exactly). Radians, float32 (float64 for float64 input); NaN when any feature has NaN or Inf.
    """
    if not (isinstance(text, torch.Tensor) and isinstance(image, torch.Tensor)) or text.dim() != 3 \
            or text.shape != image.shape:
        raise ValueError(f"`text` and `image` must be tensors of the same shape (N, k, d), got "
                         f"{describe_shape(text) if isinstance(text, torch.Tensor) else type(text).__name__} and "
                         f"{describe_shape(image) if isinstance(image, torch.Tensor) else type(image).__name__}")
    if not (_pymath.isfinite(min_radius) and min_radius > 0):
        raise ValueError(f"`min_radius` must be a positive number, got {min_radius!r}")
    gap = exterior_angle(text, image, c) - half_aperture(text, c, min_radius=min_radius)
    return gap.clamp(min=0).mean()
