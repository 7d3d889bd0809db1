"""Tests for manifold_align.similarity: ranges, float64 references, gradients, registry, dtype, errors."""


import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from manifold_align.similarity import (
    Similarity,
    get_similarity,
    list_similarities,
    register_similarity,
)

BUILTINS = ["cosine", "oblique", "geodesic", "chordal"]
FAST = settings(max_examples=15, deadline=None)


def _features(n, k, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, d, generator=g, dtype=dtype)


# ---- float64 loop references -----------------------------------------------------------------
def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def ref_oblique(a, b):
    a, b = _unit(a), _unit(b)
    out = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64)
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            out[i, j] = sum(float(a[i, t] @ b[j, t]) for t in range(a.shape[1]))
    return out


def ref_chordal(a, b):
    a, b = _unit(a), _unit(b)
    return -((a[:, None] - b[None]) ** 2).sum((-2, -1))


def ref_geodesic(a, b):
    cos = torch.einsum("ikd,jkd->ijk", _unit(a), _unit(b))
    return -torch.arccos(cos.clamp(-1, 1)).pow(2).sum(-1).sqrt()


@FAST
@given(name=st.sampled_from(BUILTINS), k=st.integers(1, 6), d=st.integers(2, 9),
       na=st.integers(1, 7), nb=st.integers(1, 7), seed=st.integers(0, 10**6))
def test_values_lie_in_range(name, k, d, na, nb, seed):
    sim = get_similarity(name)
    a = sim.project(_features(na, k, d, seed, torch.float32))
    b = sim.project(_features(nb, k, d, seed + 1, torch.float32))
    lo, hi = sim.value_range(k, d)
    s = sim.pairwise(a, b)
    assert s.shape == (na, nb)
    tol = 1e-5 * max(1.0, abs(lo), abs(hi))
    assert bool((s >= lo - tol).all()) and bool((s <= hi + tol).all())


def test_extremes_are_attained():
    x = get_similarity("oblique").project(_features(3, 4, 5, 0))
    for name in ["oblique", "chordal", "geodesic"]:
        sim = get_similarity(name)
        lo, hi = sim.value_range(4, 5)
        assert torch.allclose(sim.paired(x, x), torch.full((3,), hi, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(sim.paired(x, -x), torch.full((3,), lo, dtype=torch.float64), atol=1e-6)


@FAST
@given(k=st.integers(1, 5), d=st.integers(2, 6), seed=st.integers(0, 10**6))
def test_oblique_matches_per_token_loop_and_einsum(k, d, seed):
    a, b = _features(4, k, d, seed), _features(5, k, d, seed + 7)
    sim = get_similarity("oblique")
    got = sim.pairwise(sim.project(a), sim.project(b))
    assert torch.allclose(got, ref_oblique(a, b), atol=1e-12)
    assert torch.allclose(got, torch.einsum("abd,cbd->ac", _unit(a), _unit(b)), atol=1e-12)


@FAST
@given(k=st.integers(1, 5), d=st.integers(2, 6), seed=st.integers(0, 10**6))
def test_chordal_is_minus_squared_distance(k, d, seed):
    a, b = _features(4, k, d, seed), _features(5, k, d, seed + 7)
    sim = get_similarity("chordal")
    got = sim.pairwise(sim.project(a), sim.project(b))
    assert torch.allclose(got, ref_chordal(a, b), atol=1e-12)
    assert torch.allclose(got, -(2 * k - 2 * ref_oblique(a, b)), atol=1e-12)


@FAST
@given(k=st.integers(1, 5), d=st.integers(2, 6), seed=st.integers(0, 10**6))
def test_geodesic_matches_arccos_reference_away_from_coincidence(k, d, seed):
    a, b = _features(4, k, d, seed), _features(5, k, d, seed + 7)
    sim = get_similarity("geodesic")
    got = sim.pairwise(sim.project(a), sim.project(b))
    assert torch.allclose(got, ref_geodesic(a, b), atol=1e-9)


def test_geodesic_is_accurate_at_coincident_points_float32():
    sim = get_similarity("geodesic")
    x = sim.project(_features(3, 4, 8, 0, torch.float32))
    assert float(sim.pairwise(x, x).diag().abs().max()) < 1e-6  # arccos would give ~1e-3 here
    assert float(sim.paired(x, x).abs().max()) < 1e-6


@pytest.mark.parametrize("name", BUILTINS)
def test_paired_is_diagonal_of_pairwise(name):
    sim = get_similarity(name)
    a, b = sim.project(_features(6, 3, 4, 0)), sim.project(_features(6, 3, 4, 1))
    assert torch.allclose(sim.paired(a, b), sim.pairwise(a, b).diag(), atol=1e-12)


@pytest.mark.parametrize("name", BUILTINS)
def test_pairwise_gradcheck_float64(name):
    sim = get_similarity(name)
    a = sim.project(_features(4, 3, 4, 0)).requires_grad_()
    b = sim.project(_features(5, 3, 4, 1)).requires_grad_()
    assert torch.autograd.gradcheck(sim.pairwise, (a, b))
    assert torch.autograd.gradcheck(sim.paired, (a, b[:4]))


def test_geodesic_gradient_finite_at_coincident_points():
    sim = get_similarity("geodesic")
    x = sim.project(_features(3, 2, 4, 0)).requires_grad_()
    sim.pairwise(x, x.detach()).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_cosine_flattens_tokens():
    sim = get_similarity("cosine")
    a, b = _features(3, 4, 5, 0), _features(2, 4, 5, 1)
    pa, pb = sim.project(a), sim.project(b)
    assert pa.shape == (3, 20)
    ref = _unit(a.flatten(1)) @ _unit(b.flatten(1)).T
    assert torch.allclose(sim.pairwise(pa, pb), ref, atol=1e-12)
    assert torch.allclose(sim.pairwise(pa.view(3, 4, 5), pb.view(2, 4, 5)), ref, atol=1e-12)


@pytest.mark.parametrize("name", BUILTINS)
def test_autocast_bf16_gives_float32(name):
    sim = get_similarity(name)
    a = sim.project(_features(4, 2, 8, 0, torch.float32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert sim.pairwise(a, a).dtype == torch.float32
        assert sim.pairwise(a.bfloat16(), a.bfloat16()).dtype == torch.float32
        assert sim.paired(a, a).dtype == torch.float32


@pytest.mark.parametrize("name", ["cosine", "oblique", "chordal"])
def test_pairwise_traces_on_the_meta_device(name):
    """No autocast exists on ``meta``; shape and FLOP tracing (benchmarks/bench_model.py) still works.
    ``geodesic`` is left out: its precise pass looks at the cosines' values to find near pairs."""
    sim = get_similarity(name)
    a, b = torch.empty(4, 2, 8, device="meta"), torch.empty(3, 2, 8, device="meta")
    assert sim.pairwise(a, b).shape == (4, 3) and sim.pairwise(a, b).device.type == "meta"
    assert sim.paired(a, a).shape == (4,)


@pytest.mark.parametrize("name", ["oblique", "geodesic", "chordal"])
def test_shape_errors_name_the_argument(name):
    sim = get_similarity(name)
    with pytest.raises(ValueError, match=r"`a`.*\(N, k, d\).*\(4, 6\)"):
        sim.pairwise(torch.randn(4, 6), torch.randn(4, 2, 3))
    with pytest.raises(ValueError, match=r"same \(k, d\).*\(4, 2, 3\).*\(4, 3, 2\)"):
        sim.pairwise(torch.randn(4, 2, 3), torch.randn(4, 3, 2))
    with pytest.raises(ValueError, match="same number of rows"):
        sim.paired(torch.randn(4, 2, 3), torch.randn(5, 2, 3))


def test_cosine_width_mismatch():
    with pytest.raises(ValueError, match="same width"):
        get_similarity("cosine").pairwise(torch.randn(2, 6), torch.randn(2, 5))


def test_registry_lookup_and_errors():
    assert set(BUILTINS) <= set(list_similarities())
    sim = get_similarity("oblique")
    assert get_similarity(sim) is sim
    with pytest.raises(ValueError, match="registered: .*chordal.*cosine"):
        get_similarity("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_similarity("oblique", type(sim))


def test_register_custom_similarity():
    class Scaled(Similarity):
        name = "twice-oblique"

        def project(self, features):
            return get_similarity("oblique").project(features)

        def value_range(self, k, d):
            return (-2.0 * k, 2.0 * k)

        def _pairwise(self, a, b):
            return 2 * a.flatten(1) @ b.flatten(1).T

        def _paired(self, a, b):
            return 2 * (a * b).sum((-2, -1))

    register_similarity("twice-oblique", Scaled)
    try:
        sim = get_similarity("twice-oblique")
        a = sim.project(_features(3, 2, 3, 0))
        assert torch.allclose(sim.pairwise(a, a), 2 * get_similarity("oblique").pairwise(a, a))
        # the default mean calls a user's plain project(features): mean then project, per token here
        torch.testing.assert_close(sim.mean(a[None].expand(2, -1, -1, -1), dim=0), a)
        register_similarity("twice-oblique", lambda: Scaled(), overwrite=True)
        assert isinstance(get_similarity("twice-oblique"), Scaled)
    finally:
        import manifold_align.similarity as S

        S._REGISTRY.pop("twice-oblique", None)


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("name", BUILTINS)
def test_non_finite_input_gives_non_finite_scores_for_its_row_only(name, value):
    """NaN or Inf in a feature never turns into an ordinary score (geodesic used to give ~6 or 0)."""
    sim = get_similarity(name)
    a, b = sim.project(_features(3, 2, 4, 0)), sim.project(_features(3, 2, 4, 1))
    a = a.reshape(3, 2, 4).clone() if name == "cosine" else a.clone()
    a[1, 0, 2] = value
    a = a.flatten(1) if name == "cosine" else a
    pairwise, paired = sim.pairwise(a, b), sim.paired(a, b)
    assert not torch.isfinite(pairwise[1]).any() and not torch.isfinite(paired[1])
    assert torch.isfinite(pairwise[[0, 2]]).all() and torch.isfinite(paired[[0, 2]]).all()


@pytest.mark.parametrize("name", BUILTINS)
def test_manifold_deviation_is_the_largest_norm_error(name):
    sim = get_similarity(name)
    raw = _features(5, 3, 4, 0)
    rows = raw.flatten(1) if name == "cosine" else raw  # cosine's manifold is the flattened sphere
    expected = float((rows.norm(dim=-1) - 1).abs().max())
    assert float(sim.manifold_deviation(raw)) == pytest.approx(expected, rel=1e-12)
    assert float(sim.manifold_deviation(sim.project(raw))) < 1e-15
    assert float(sim.manifold_deviation(raw[:0])) == 0.0
    with pytest.raises(ValueError, match=rf"`image` must lie on .*of {expected:.3g}; project"):
        sim.check_on_manifold(raw, "image")
    sim.check_on_manifold(sim.project(raw), "image")


def test_check_inputs_quotes_the_callers_names():
    with pytest.raises(ValueError, match=r"`left` and `right` must have the same \(k, d\)"):
        get_similarity("oblique").check_inputs(_features(2, 3, 4, 0), _features(2, 3, 5, 0), names=("left", "right"))


@pytest.mark.parametrize("name", BUILTINS)
def test_mean_of_the_sphere_family_is_the_renormalized_mean(name):
    sim = get_similarity(name)
    x = sim.project(_features(12, 3, 5, 2)).reshape(4, 3, 3, 5)  # 4 classes, 3 templates
    got = sim.mean(x, dim=1)
    mean = x.mean(dim=1)
    expected = _unit(mean.flatten(1)).view_as(mean) if name == "cosine" else _unit(mean)
    torch.testing.assert_close(got, expected)


def test_options_go_to_the_factory_and_unknown_ones_are_refused():
    assert get_similarity("euclidean", squared=False).squared is False
    assert get_similarity("lorentz", curvature_init=0.3).make_geometry(d=4).curvature_init == 0.3
    with pytest.raises(ValueError, match=r"takes no option\(s\) \['curvature'\]; accepted: curvature_init"):
        get_similarity("lorentz", curvature=0.3)
    with pytest.raises(ValueError, match="accepted: none"):
        get_similarity("oblique", squared=True)
    with pytest.raises(ValueError, match="only accepted with a similarity name"):
        get_similarity(get_similarity("euclidean"), squared=False)
    with pytest.raises(ValueError, match="`learn_curvature` must be True or False"):
        get_similarity("lorentz", learn_curvature="yes")
