"""The ``geodesic`` geometry: minus the geodesic distance on OB(d, k), against an arccos reference in float64."""

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


def _scores(name, a, b):
    geo = get_geometry(name, n_tokens=a.shape[1], token_dim=a.shape[2])
    return geo.pairwise(geo.project(a), geo.project(b))


@FAST
@given(k=st.integers(1, 5), d=st.integers(2, 6), seed=st.integers(0, 10**6))
def test_geodesic_matches_arccos_reference_away_from_coincidence(k, d, seed):
    a, b = _features(4, k, d, seed), _features(5, k, d, seed + 7)
    cos = torch.einsum("ikd,jkd->ijk", _unit(a), _unit(b))
    expected = -torch.arccos(cos.clamp(-1, 1)).pow(2).sum(-1).sqrt()
    assert torch.allclose(_scores("geodesic", a, b), expected, atol=1e-9)


def test_geodesic_is_accurate_at_coincident_and_antipodal_points_float32():
    geo = get_geometry("geodesic", n_tokens=4, token_dim=8)
    x = geo.project(_features(3, 4, 8, 0, torch.float32))
    assert float(geo.pairwise(x, x).diag().abs().max()) < 1e-6  # arccos would give ~1e-3 here
    assert float(geo.paired(x, x).abs().max()) < 1e-6
    # at antipodes 2 asin(|u - v| / 2) had a ~sqrt(eps) floor: 4e-4 off in float32 (k = 3, 4 here)
    bottom = -torch.pi * 2.0  # -pi sqrt(k)
    assert float((geo.paired(x, -x) - bottom).abs().max()) < 2e-6
    assert float((geo.pairwise(x, -x).diag() - bottom).abs().max()) < 2e-6


def test_geodesic_gradient_finite_at_coincident_points():
    geo = get_geometry("geodesic", n_tokens=2, token_dim=4)
    x = geo.project(_features(3, 2, 4, 0)).requires_grad_()
    (geo.pairwise(x, x.detach()).sum() + geo.paired(x, x.detach()).sum()).backward()
    assert torch.isfinite(x.grad).all()
