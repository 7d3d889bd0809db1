"""A geometry that lives outside manifold-align, found through the ``manifold_align.geometries`` entry points.

The test suite puts this folder on the path (tests/conftest.py); its ``.dist-info`` declares the entry point as an
installed package's would. Nothing in manifold-align names it: the trainer, the topology benchmark and the contract
suite find it by name.

``weighted-oblique``: OB(d, k) with a learnable weight per token, ``s(U, V) = sum_b w_b <u_b, v_b>`` with
``w = k * softmax(logits)`` (the weights sum to k, so the range stays [-k, k]; all equal at initialization, where
it is the oblique inner product).
"""

import torch
import torch.nn.functional as F
from torch import nn

from manifold_align import Geometry


class WeightedObliqueGeometry(Geometry):
    """``sum_b w_b <u_b, v_b>`` on OB(d, k), ``w = k softmax(token_logits)``. Range [-k, k]."""

    default_temperature = {"name": "none"}

    def __init__(self, *, n_tokens: int, token_dim: int) -> None:
        super().__init__(n_tokens=n_tokens, token_dim=token_dim)
        self.token_logits = nn.Parameter(torch.zeros(n_tokens))

    def weights(self) -> torch.Tensor:
        """The per-token weights, shape (k,), summing to k."""
        return self.n_tokens * torch.softmax(self.token_logits, dim=0)

    def _project(self, features, modality):
        return F.normalize(features, dim=-1)

    def value_range(self):
        return (-float(self.n_tokens), float(self.n_tokens))

    def _pairwise(self, a, b):
        w = self.weights().to(a.dtype)
        return (a * w[:, None]).flatten(1) @ b.flatten(1).T

    def _paired(self, a, b):
        return ((a * b).sum(-1) * self.weights().to(a.dtype)).sum(-1)

    @torch.no_grad()
    def values(self):
        return {"largest_weight": self.weights().max()}
