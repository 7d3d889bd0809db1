"""``cosine``: CLIP's geometry, the whole (k * d) vector one point of the unit sphere S^(k d - 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..temperature import CLIP_MAX_SCALE, CLIP_TEMPERATURE
from . import register_geometry
from .base import Geometry, max_unit_norm_deviation

__all__ = ["CosineGeometry"]


@register_geometry("cosine")
class CosineGeometry(Geometry):
    """``<u, v>`` of the flattened, L2-normalized features. Range [-1, 1].

    Features are (N, k, d) as for every geometry; the k tokens are one vector, normalized jointly (with k = 1 this
    is stock CLIP). Trains with CLIP's learnable temperature: at scale 1 the logits of one sphere span only
    [-1, 1], too little for a softmax over a batch.
    """

    default_temperature = {"name": "learnable", "init": CLIP_TEMPERATURE, "max_scale": CLIP_MAX_SCALE}
    manifold_text = "the unit sphere S^(k d - 1), every flattened row of unit norm"

    def _project(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        return F.normalize(features.flatten(1), dim=-1).view_as(features)

    def value_range(self) -> tuple[float, float]:  # noqa: D102
        return (-1.0, 1.0)

    def manifold_deviation(self, features: torch.Tensor) -> torch.Tensor:
        """The largest ``| |row| - 1 |`` of the flattened (N, k * d) rows, 0-dim."""
        return max_unit_norm_deviation(features.flatten(1), dim=-1)

    def score_grid(self) -> int:
        """1: one matmul of the flattened features scores all pairs."""
        return 1

    def _pairwise(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a.flatten(1) @ b.flatten(1).T

    def _paired(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum((-2, -1))
