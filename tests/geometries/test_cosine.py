"""The ``cosine`` geometry: CLIP's one sphere S^(k d - 1), against a float64 reference."""

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


@FAST
@given(k=st.integers(1, 5), d=st.integers(2, 6), seed=st.integers(0, 10**6))
def test_cosine_normalizes_the_flattened_tokens_jointly(k, d, seed):
    geo = get_geometry("cosine", n_tokens=k, token_dim=d)
    a, b = _features(3, k, d, seed), _features(2, k, d, seed + 1)
    pa, pb = geo.project(a), geo.project(b)
    assert pa.shape == (3, k, d)
    torch.testing.assert_close(pa.flatten(1).norm(dim=-1), torch.ones(3, dtype=torch.float64), atol=1e-15, rtol=0)
    ref = _unit(a.flatten(1)) @ _unit(b.flatten(1)).T
    assert torch.allclose(geo.pairwise(pa, pb), ref, atol=1e-12)
    assert geo.value_range() == (-1.0, 1.0)


def test_cosine_is_not_per_token():
    geo = get_geometry("cosine", n_tokens=4, token_dim=5)
    assert float((geo.project(_features(3, 4, 5, 0)).norm(dim=-1) - 1).abs().max()) > 0.1
