"""``chordal``: minus the squared chordal (Euclidean) distance between points of OB(d, k)."""

from __future__ import annotations

import torch

from . import register_geometry
from .oblique import ObliqueGeometry

__all__ = ["ChordalGeometry"]


@register_geometry("chordal")
class ChordalGeometry(ObliqueGeometry):
    """``-sum_b |u_b - v_b|^2``. Range [-4k, 0].

    On projected features it equals ``-(2k - 2 * oblique)``; computed from the Gram matrix and the actual squared
    norms, clipped at 0 from above against rounding.
    """

    def value_range(self) -> tuple[float, float]:  # noqa: D102
        return (-4.0 * self.n_tokens, 0.0)

    def _pairwise(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = a.flatten(1), b.flatten(1)
        squared = (a * a).sum(-1)[:, None] + (b * b).sum(-1)[None, :] - 2.0 * (a @ b.T)
        return -squared.clamp(min=0.0)

    def _paired(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return -((a - b) ** 2).sum((-2, -1))
