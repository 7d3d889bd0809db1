"""The ``chordal`` geometry: minus the squared chordal distance on OB(d, k), against float64 references."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from manifold_align import get_geometry

FAST = settings(max_examples=15, deadline=None)


def _features(n, k, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, d, generator=g, dtype=dtype)


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def ref_oblique(a, b):
    a, b = _unit(a), _unit(b)
    out = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64)
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            out[i, j] = sum(float(a[i, t] @ b[j, t]) for t in range(a.shape[1]))
    return out


def _scores(name, a, b):
    geo = get_geometry(name, n_tokens=a.shape[1], token_dim=a.shape[2])
    return geo.pairwise(geo.project(a), geo.project(b))


@FAST
@given(k=st.integers(1, 5), d=st.integers(2, 6), seed=st.integers(0, 10**6))
def test_chordal_is_minus_squared_distance(k, d, seed):
    a, b = _features(4, k, d, seed), _features(5, k, d, seed + 7)
    got = _scores("chordal", a, b)
    assert torch.allclose(got, -((_unit(a)[:, None] - _unit(b)[None]) ** 2).sum((-2, -1)), atol=1e-12)
    assert torch.allclose(got, -(2 * k - 2 * ref_oblique(a, b)), atol=1e-12)
