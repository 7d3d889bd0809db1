"""The ``euclidean`` geometry (EuCLIP, Chou and Alam 2024) against its formula written out in float64."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from manifold_align import get_geometry

FAST = settings(max_examples=15, deadline=None)


def _features(n, k, d, seed, dtype=torch.float64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, k, d, generator=g, dtype=torch.float64)).to(dtype)


def ref_euclidean(a, b, squared):
    diff = a.double()[:, None] - b.double()[None]  # (Na, Nb, k, d)
    per_token = (diff**2).sum(-1)
    return -per_token.sum(-1) if squared else -per_token.sqrt().sum(-1)


@FAST
@given(squared=st.booleans(), k=st.integers(1, 5), d=st.integers(1, 7), seed=st.integers(0, 10**6))
def test_matches_written_out_formula(squared, k, d, seed):
    geo = get_geometry("euclidean", n_tokens=k, token_dim=d, squared=squared)
    a, b = _features(5, k, d, seed, scale=3.0), _features(4, k, d, seed + 1, scale=3.0)
    assert geo.project(a) is a  # no normalization
    torch.testing.assert_close(geo.pairwise(a, b), ref_euclidean(a, b, squared), atol=1e-9, rtol=1e-10)
    torch.testing.assert_close(geo.paired(a, a.flip(0)), ref_euclidean(a, a.flip(0), squared).diag(),
                               atol=1e-9, rtol=1e-10)


def test_default_is_squared_range_is_unbounded_and_there_are_no_parameters():
    geo = get_geometry("euclidean", n_tokens=4, token_dim=8)
    assert geo.squared and geo.value_range() == (-math.inf, 0.0)
    assert list(geo.parameters()) == [] and geo.values() == {} and geo.extra_losses(
        _features(2, 4, 8, 0), _features(2, 4, 8, 1)) == {}
    assert geo.manifold_deviation(_features(2, 4, 8, 0, scale=10.0)) is None
    assert get_geometry("euclidean", n_tokens=4, token_dim=8, squared=False).squared is False
    with pytest.raises(ValueError, match="`squared` must be True or False"):
        get_geometry("euclidean", n_tokens=4, token_dim=8, squared="no")


@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_inputs(squared, dtype):
    geo = get_geometry("euclidean", n_tokens=3, token_dim=16, squared=squared)
    a, b = _features(6, 3, 16, 0, dtype), _features(7, 3, 16, 1, dtype)
    got = geo.pairwise(a, b)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref_euclidean(a, b, squared), atol=1e-4, rtol=1e-5)


def test_unsquared_diagonal_is_exact_with_finite_gradient():
    geo = get_geometry("euclidean", n_tokens=4, token_dim=32, squared=False)
    x = _features(5, 4, 32, 0, torch.float32, scale=10.0).requires_grad_()
    s = geo.pairwise(x, x.detach())
    assert float(s.detach().diag().abs().max()) == 0.0
    s.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("squared", [True, False])
def test_mean_is_the_coordinate_mean(squared):
    geo = get_geometry("euclidean", n_tokens=2, token_dim=3, squared=squared)
    x = _features(12, 2, 3, 0).view(4, 3, 2, 3)
    torch.testing.assert_close(geo.mean(x, dim=1), x.mean(1), atol=1e-15, rtol=0)
