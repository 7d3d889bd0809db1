"""``euclidean``: minus the (squared) Euclidean distance between raw, unnormalized features (EuCLIP)."""

from __future__ import annotations

import math

import torch

from ..manifolds.rows import nearest_pairs, recompute_pairs, safe_sqrt
from . import register_geometry
from .base import Geometry, check_flag

__all__ = ["EuclideanGeometry"]

# a per-token squared distance below this fraction of |x_b|^2 + |y_b|^2 is recomputed from the rows: from the Gram
# matrix its error is ~eps (|x_b|^2 + |y_b|^2), so the root's relative error stays <= eps / 0.02
_NEAR_SQUARED = 1e-2


def _row_distance(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(P, d), (P, d) -> (P,): ``|u - v|`` from the rows, exact near coincidence."""
    return torch.linalg.vector_norm(u - v, dim=-1)


@register_geometry("euclidean")
class EuclideanGeometry(Geometry):
    """Minus the Euclidean distance between raw features, summed over tokens. Range (-inf, 0].

    ``squared=True`` (default): ``-sum_b |x_b - y_b|^2 = -|x - y|^2`` (the blocks are one vector).
    ``squared=False``: ``-sum_b |x_b - y_b|``, one distance per token, summed.

    The squared form is the variant Chou and Alam ("Embedding Geometries of Contrastive Language-Image
    Pre-Training", 2024, arXiv:2409.13079) name EuCLIP: no L2 normalization, minus the squared Euclidean distance
    as the softmax logit, a learnable temperature. A constant bias would cancel in the softmax; the squared form
    is smooth everywhere (``-|x - y|`` has a kink on the diagonal). With the squared form the softmax over texts
    of ``-s |x - y|^2 = -s |x|^2 - s |y|^2 + 2 s <x, y>`` drops the ``|x|^2`` term: a scaled inner product with a
    per-text bias ``-s |y|^2``.

    Parameters
    ----------
    n_tokens, token_dim : int, keyword-only
    squared : bool, default True, keyword-only
    precise : bool, default True, keyword-only
        ``squared=False`` only: recompute per-token distances whose Gram-matrix value is within 1% of
        ``|x_b|^2 + |y_b|^2`` exactly from the rows (exact 0 on the diagonal, float32 relative error <= ~3e-6
        elsewhere). The squared form is the Gram value clipped at 0 (absolute error ~``eps (|x|^2 + |y|^2)``).
    """

    # learnable from scale 1/20: squared distances between fresh towers' raw 512-d features are ~1000 (std ~20
    # across pairs), so scale 1 (or CLIP's 14) starts with the softmax saturated. Measured with `manifold-align
    # train --set model.geometry=euclidean` (250 steps, one seed each): scale 1 10.3% zero-shot top-1 (chance),
    # 1/3 17.5%, 1/6 75.3%, 1/10 72.8%, 1/20 88.1%, 1/50 43.9%
    default_temperature = {"name": "learnable", "init": 20.0, "max_scale": 100.0}
    manifold_text = "R^(k x d) (no constraint)"

    def __init__(self, *, n_tokens: int, token_dim: int, squared: bool = True, precise: bool = True) -> None:
        super().__init__(n_tokens=n_tokens, token_dim=token_dim)
        self.squared = check_flag(squared, "squared")
        self.precise = check_flag(precise, "precise")

    def _project(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        return features

    def manifold_deviation(self, features: torch.Tensor) -> None:
        """Unnormalized features: no constraint to check (None)."""
        return None

    def value_range(self) -> tuple[float, float]:  # noqa: D102
        return (-math.inf, 0.0)

    def score_grid(self) -> int:
        """1 for the squared form (one matmul), ``k`` per-token distances otherwise."""
        return 1 if self.squared else self.n_tokens

    def _pairwise(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.squared:
            # 2 <a, b> - |a|^2 - |b|^2 in one addmm onto the norms' (n, m) sum, clipped at 0 in place
            af, bf = a.flatten(1), b.flatten(1)
            minus_norms = -((af * af).sum(-1)[:, None] + (bf * bf).sum(-1)[None, :])
            return torch.addmm(minus_norms, af, bf.T, alpha=2.0).clamp_(max=0.0)
        a_sq, b_sq = (a * a).sum(-1).T[:, :, None], (b * b).sum(-1).T[:, None, :]  # (k, n, 1), (k, 1, m)
        squared = torch.baddbmm(a_sq + b_sq, a.transpose(0, 1), b.permute(1, 2, 0), alpha=-2.0).clamp_(min=0.0)
        dist = safe_sqrt(squared)
        if self.precise and squared.device.type != "meta":
            # the nearest pairs of every row and column, those near marked: no device sync for their count
            relative = squared.detach() / (a_sq + b_sq).detach()
            flat = nearest_pairs(relative)
            flat = torch.where(relative.reshape(-1)[flat] < _NEAR_SQUARED, flat, -1)
            dist = recompute_pairs(dist, flat, a, b, _row_distance)
        return -dist.sum(0)

    def _paired(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.squared:
            return -((a - b) ** 2).sum((-2, -1))
        return -torch.linalg.vector_norm(a - b, dim=-1).sum(-1)

    def extra_repr(self) -> str:  # noqa: D102
        return f"{super().extra_repr()}, squared={self.squared}"
