"""The ``oblique`` geometry (the paper's) and the properties of the sphere family it shares with ``cosine``,
``geodesic`` and ``chordal`` (range, extremes, renormalized mean, norm check), against float64 references."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from manifold_align import get_geometry

FAST = settings(max_examples=15, deadline=None)
SPHERES = ["cosine", "oblique", "geodesic", "chordal"]


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
@given(name=st.sampled_from(SPHERES), k=st.integers(1, 6), d=st.integers(2, 9),
       na=st.integers(1, 7), nb=st.integers(1, 7), seed=st.integers(0, 10**6))
def test_values_lie_in_range_for_any_k_and_d(name, k, d, na, nb, seed):
    geo = get_geometry(name, n_tokens=k, token_dim=d)
    a = geo.project(_features(na, k, d, seed, torch.float32))
    b = geo.project(_features(nb, k, d, seed + 1, torch.float32))
    lo, hi = geo.value_range()
    s = geo.pairwise(a, b)
    assert s.shape == (na, nb)
    tol = 1e-5 * max(1.0, abs(lo), abs(hi))
    assert bool((s >= lo - tol).all()) and bool((s <= hi + tol).all())


@pytest.mark.parametrize("name", ["oblique", "chordal", "geodesic"])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_extremes_are_attained(name, dtype, tol):
    geo = get_geometry(name, n_tokens=4, token_dim=5)
    x = geo.project(_features(3, 4, 5, 0, dtype))
    lo, hi = geo.value_range()
    torch.testing.assert_close(geo.paired(x, x), torch.full((3,), hi, dtype=dtype), atol=tol, rtol=0)
    torch.testing.assert_close(geo.paired(x, -x), torch.full((3,), lo, dtype=dtype), atol=tol * abs(lo), rtol=0)
    torch.testing.assert_close(geo.pairwise(x, -x).diag(), torch.full((3,), lo, dtype=dtype), atol=tol * abs(lo),
                               rtol=0)


@FAST
@given(k=st.integers(1, 5), d=st.integers(2, 6), seed=st.integers(0, 10**6))
def test_oblique_matches_per_token_loop_and_einsum(k, d, seed):
    a, b = _features(4, k, d, seed), _features(5, k, d, seed + 7)
    got = _scores("oblique", a, b)
    assert torch.allclose(got, ref_oblique(a, b), atol=1e-12)
    assert torch.allclose(got, torch.einsum("abd,cbd->ac", _unit(a), _unit(b)), atol=1e-12)


def test_default_temperatures_are_the_papers():
    """cosine trains with CLIP's learnable temperature, oblique with none (its range [-k, k] suffices)."""
    from manifold_align.temperature import CLIP_MAX_SCALE, CLIP_TEMPERATURE

    cosine = get_geometry("cosine", n_tokens=1, token_dim=8).default_temperature
    assert cosine == {"name": "learnable", "init": CLIP_TEMPERATURE, "max_scale": CLIP_MAX_SCALE}
    assert get_geometry("oblique", n_tokens=4, token_dim=8).default_temperature == {"name": "none"}


@pytest.mark.parametrize("name", ["cosine", "oblique", "chordal"])
def test_pairwise_traces_on_the_meta_device(name):
    """No autocast exists on ``meta``; shape and FLOP tracing (benchmarks/bench_model.py) still works.
    ``geodesic`` is left out: its precise pass looks at the cosines' values to find near pairs."""
    geo = get_geometry(name, n_tokens=2, token_dim=8)
    a, b = torch.empty(4, 2, 8, device="meta"), torch.empty(3, 2, 8, device="meta")
    assert geo.pairwise(a, b).shape == (4, 3) and geo.pairwise(a, b).device.type == "meta"
    assert geo.paired(a, a).shape == (4,)


@pytest.mark.parametrize("name", SPHERES)
def test_manifold_deviation_is_the_largest_norm_error(name):
    geo = get_geometry(name, n_tokens=3, token_dim=4)
    raw = _features(5, 3, 4, 0)
    rows = raw.flatten(1) if name == "cosine" else raw  # cosine's space is the flattened sphere
    expected = float((rows.norm(dim=-1) - 1).abs().max())
    assert float(geo.manifold_deviation(raw)) == pytest.approx(expected, rel=1e-12)
    assert float(geo.manifold_deviation(geo.project(raw))) < 1e-15
    with pytest.raises(ValueError, match=rf"`image` must lie on .*of {expected:.3g}; project"):
        geo.check_on_manifold(raw, "image")


@pytest.mark.parametrize("name", SPHERES)
def test_mean_is_the_renormalized_mean(name):
    geo = get_geometry(name, n_tokens=3, token_dim=5)
    x = geo.project(_features(12, 3, 5, 2)).reshape(4, 3, 3, 5)  # 4 classes, 3 templates
    mean = x.mean(dim=1)
    expected = _unit(mean.flatten(1)).view_as(mean) if name == "cosine" else _unit(mean)
    torch.testing.assert_close(geo.mean(x, dim=1), expected)


@pytest.mark.parametrize("name", SPHERES)
def test_no_options_and_no_parameters(name):
    geo = get_geometry(name, n_tokens=2, token_dim=3)
    assert list(geo.parameters()) == [] and geo.values() == {}
    with pytest.raises(ValueError, match="accepted: none"):
        get_geometry(name, n_tokens=2, token_dim=3, squared=True)
