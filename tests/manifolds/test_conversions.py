"""Tests for manifold_align.manifolds.conversions and agreement with geomstats'
NFoldManifold(Hypersphere(d - 1), k) (numpy backend, float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from manifold_align.manifolds.conversions import from_pymanopt, geomstats_manifold, to_geomstats, to_pymanopt
from manifold_align.manifolds.oblique import Oblique

SETTINGS = settings(max_examples=20, deadline=None)
M = Oblique()


def points(shape, seed):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True)


@SETTINGS
@given(st.integers(1, 8), st.integers(2, 12), st.integers(0, 2**31 - 1))
def test_pymanopt_layout_round_trip(k, d, seed):
    x = points((2, k, d), seed)
    X = to_pymanopt(x)
    assert isinstance(X, np.ndarray) and X.shape == (2, d, k)
    np.testing.assert_array_equal(X[1, :, 0], x[1, 0].numpy())  # unit vectors are columns
    assert torch.equal(from_pymanopt(X), x)
    assert from_pymanopt(X, dtype=torch.float32).dtype == torch.float32


def test_bfloat16_converts_to_float64_numpy():
    X = to_pymanopt(points((3, 4), 0).to(torch.bfloat16))
    assert X.dtype == np.float64 and X.shape == (4, 3)


def test_bad_rank_is_rejected():
    with pytest.raises(ValueError, match=r"`x` must have shape \(\.\.\., k, d\), got shape \(3,\)"):
        to_pymanopt(torch.zeros(3))
    with pytest.raises(ValueError, match=r"`X` must have shape \(\.\.\., d, k\)"):
        from_pymanopt(np.zeros(3))
    with pytest.raises(ValueError, match="`d` must be an int >= 2, got 1"):
        geomstats_manifold(3, 1)


# the fixture only imports geomstats and restores the default dtype: sharing it across examples is fine
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 6), st.integers(2, 10), st.integers(0, 2**31 - 1))
def test_agrees_with_geomstats(geomstats_numpy, k, d, seed):
    space = geomstats_manifold(k, d)
    assert isinstance(space, geomstats_numpy.NFoldManifold)
    x, y = points((3, k, d), seed), points((3, k, d), seed + 1)
    y = torch.where((x * y).sum(-1, keepdim=True) < -0.9, -y, y)  # avoid antipodes
    gx, gy = to_geomstats(x), to_geomstats(y)
    assert space.belongs(to_geomstats(M.random(2, k, d, dtype=torch.float64))).all()
    np.testing.assert_allclose(M.dist(x, y).numpy(), space.metric.dist(gx, gy), rtol=1e-7, atol=1e-10)
    log = M.logmap(x, y)
    np.testing.assert_allclose(log.numpy(), space.metric.log(gy, gx), atol=1e-8)
    np.testing.assert_allclose(M.expmap(x, log).numpy(), space.metric.exp(to_geomstats(log), gx), atol=1e-10)
    u = M.proju(x, points((3, k, d), seed + 2))
    np.testing.assert_allclose(
        M.inner(x, u, log).numpy(), space.metric.inner_product(to_geomstats(u), to_geomstats(log), gx), atol=1e-10
    )
    np.testing.assert_allclose(u.numpy(), space.to_tangent(to_geomstats(points((3, k, d), seed + 2)), gx), atol=1e-10)


def test_default_dtype_untouched_by_geomstats_fixture(geomstats_numpy):
    geomstats_manifold(2, 3)
    assert torch.get_default_dtype() == torch.float32


def test_default_dtype_is_float32_after_fixtures():
    # runs after the geomstats tests above in file order
    assert torch.get_default_dtype() == torch.float32
