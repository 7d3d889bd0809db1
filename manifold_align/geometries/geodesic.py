"""``geodesic``: minus the geodesic distance on the oblique manifold OB(d, k)."""

from __future__ import annotations

import math

import torch

from ..manifolds import Oblique
from . import register_geometry
from .oblique import ObliqueGeometry

__all__ = ["GeodesicGeometry"]

_OBLIQUE = Oblique()


@register_geometry("geodesic")
class GeodesicGeometry(ObliqueGeometry):
    """``-sqrt(sum_b theta_b^2)``, ``theta_b`` the angle between tokens b. Range [-pi sqrt(k), 0].

    ``pairwise`` is :meth:`manifold_align.Oblique.cdist` (one batched matmul, near pairs recomputed exactly; never
    an (Na, Nb, k, d) tensor). ``paired`` computes each angle as ``2 atan2(|u - v|, |u + v|)``, accurate to ~eps
    on all of [0, pi] as ``cdist`` is: :meth:`manifold_align.Oblique.dist` (``2 asin(|u - v| / 2)``) has a
    ~sqrt(eps) floor at antipodes (4e-4 in float32 for k = 3), which would break ``paired == diag(pairwise)``.
    """

    def value_range(self) -> tuple[float, float]:  # noqa: D102
        return (-math.pi * math.sqrt(self.n_tokens), 0.0)

    def score_grid(self) -> int:
        """``k``: :meth:`Oblique.cdist` holds one angle per token and pair."""
        return self.n_tokens

    def _pairwise(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # sync-free near pairs: a training step does not wait for their count
        return -_OBLIQUE.cdist(a, b, sync_free=True)

    def _paired(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        chord = torch.linalg.vector_norm(a - b, dim=-1)
        # 0 * chord is NaN for an Inf chord, where atan2(inf, inf) would be a plausible pi / 4
        theta = 2 * torch.atan2(chord, torch.linalg.vector_norm(a + b, dim=-1)) + 0 * chord
        return -torch.linalg.vector_norm(theta, dim=-1)
