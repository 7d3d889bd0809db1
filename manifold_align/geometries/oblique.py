"""``oblique``: the inner product on the oblique manifold OB(d, k), the product of k unit spheres (the paper's)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register_geometry
from .base import Geometry

__all__ = ["ObliqueGeometry"]


@register_geometry("oblique")
class ObliqueGeometry(Geometry):
    """``s(U, V) = sum_b <u_b, v_b>``, every token normalized on its own sphere. Range [-k, k].

    One matrix product of the flattened (k * d) features scores all pairs. No learnable parameters; the paper's
    default temperature is none: the range [-k, k] already spans enough nats for a softmax at scale 1.

    Parameters
    ----------
    n_tokens, token_dim : int, keyword-only
        ``k`` and ``d``.
    """

    default_temperature = {"name": "none"}

    def _project(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        return F.normalize(features, dim=-1)

    def value_range(self) -> tuple[float, float]:  # noqa: D102
        return (-float(self.n_tokens), float(self.n_tokens))

    def score_grid(self) -> int:
        """1: one matmul of the flattened features scores all pairs."""
        return 1

    def _pairwise(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a.flatten(1) @ b.flatten(1).T

    def _paired(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum((-2, -1))
