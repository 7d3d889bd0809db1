"""The contract every registered geometry obeys, parametrized over ``list_geometries()`` at collection time.

A geometry registered before collection (by a conftest, or by an installed package's ``manifold_align.geometries``
entry point) is covered by being registered. Each built-in's scores are also checked against a float64 reference
written out here (``REFERENCES``), independent of the library.

Geometries are built with small k, d and with the options that turn their extra loss terms on (``OPTIONS``).
"""

from __future__ import annotations

import math

import pytest
import torch

from manifold_align import ContrastiveLoss, get_geometry, list_geometries
from manifold_align.geometries import GEOMETRIES

K, D = 3, 5
NAMES = list_geometries()

#: options that switch a geometry's extra loss terms on (MERU's weight)
OPTIONS = {"lorentz": {"entailment_weight": 0.2}}

# lorentz: curvature and modality scales set away from their initial values, so that the reference below sees them
LORENTZ_C, LORENTZ_IMAGE, LORENTZ_TEXT = 1.3, 0.4, 0.6



def build(name: str, dtype: torch.dtype = torch.float64):
    geometry = get_geometry(name, n_tokens=K, token_dim=D, **OPTIONS.get(name, {})).to(dtype)
    if name == "lorentz":
        with torch.no_grad():
            geometry.log_curvature.fill_(math.log(LORENTZ_C))
            geometry.log_image_scale.fill_(math.log(LORENTZ_IMAGE))
            geometry.log_text_scale.fill_(math.log(LORENTZ_TEXT))
    return geometry


def raw(n: int, seed: int, dtype: torch.dtype = torch.float64, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, K, D, generator=g, dtype=torch.float64)).to(dtype)


def points(geometry, n: int, seed: int, modality: str = "image", dtype=torch.float64) -> torch.Tensor:
    return geometry.project(raw(n, seed, dtype), modality=modality).detach()


# ---- float64 references, written out (loops over tokens, no library code) ------------------------------------
def _unit(x):
    return x / torch.sqrt((x * x).sum(-1, keepdim=True))


def _per_token(a, b, f):
    """(Na, Nb) = sum over tokens t of f(a[:, t], b[:, t]) with f giving (Na, Nb)."""
    return sum(f(a[:, t], b[:, t]) for t in range(a.shape[1]))


def ref_cosine(a, b):
    return _unit(a.flatten(1)) @ _unit(b.flatten(1)).T


def ref_oblique(a, b):
    return _per_token(a, b, lambda x, y: _unit(x) @ _unit(y).T)


def ref_geodesic(a, b):
    angles = _per_token(a, b, lambda x, y: torch.arccos((_unit(x) @ _unit(y).T).clamp(-1, 1)) ** 2)
    return -torch.sqrt(angles)


def ref_chordal(a, b):
    return -_per_token(a, b, lambda x, y: ((_unit(x)[:, None] - _unit(y)[None]) ** 2).sum(-1))


def ref_euclidean(a, b):  # the default, squared form (EuCLIP)
    return -_per_token(a, b, lambda x, y: ((x[:, None] - y[None]) ** 2).sum(-1))


def _meru_lift(x, alpha, c):
    """MERU's ``exp_map0`` of ``alpha x`` (space components)."""
    u = alpha * x
    r = math.sqrt(c) * torch.sqrt((u * u).sum(-1, keepdim=True))
    return torch.sinh(r) * u / r


def _meru_dist(x, y, c):
    """MERU's ``pairwise_dist``: acosh(-c <x, y>_L) / sqrt(c), times derived."""
    xt = torch.sqrt(1 / c + (x * x).sum(-1, keepdim=True))
    yt = torch.sqrt(1 / c + (y * y).sum(-1, keepdim=True))
    return torch.acosh(torch.clamp(-c * (x @ y.T - xt @ yt.T), min=1)) / math.sqrt(c)


def ref_lorentz(a, b):  # a lifted as images, b as texts
    c = LORENTZ_C
    return -_per_token(a, b, lambda x, y: _meru_dist(_meru_lift(x, LORENTZ_IMAGE, c), _meru_lift(y, LORENTZ_TEXT, c), c))


#: raw (Na, k, d) image and (Nb, k, d) text features -> (Na, Nb) scores of their projections, float64
REFERENCES = {"cosine": ref_cosine, "oblique": ref_oblique, "geodesic": ref_geodesic, "chordal": ref_chordal,
              "euclidean": ref_euclidean, "lorentz": ref_lorentz}


def test_every_built_in_geometry_has_a_reference():
    built_in = {n for n in NAMES if GEOMETRIES.factory(n).__module__.startswith("manifold_align.geometries.")}
    assert built_in == set(REFERENCES)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_scores_match_the_float64_reference(name):
    geometry = build(name)
    a, b = raw(6, 0, scale=1.5), raw(4, 1, scale=1.5)
    pa, pb = geometry.project(a, modality="image"), geometry.project(b, modality="text")
    expected = REFERENCES[name](a, b)
    torch.testing.assert_close(geometry.pairwise(pa, pb), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(geometry.paired(pa[:4], pb), expected[:4].diag(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(geometry.logits(pa, pb, torch.tensor(2.5, dtype=torch.float64)), 2.5 * expected,
                               rtol=1e-10, atol=1e-10)
    bias = torch.tensor(-1.5, dtype=torch.float64)
    torch.testing.assert_close(geometry.logits(pa, pb, torch.tensor(2.5, dtype=torch.float64), bias),
                               2.5 * expected - 1.5, rtol=1e-10, atol=1e-10)


# ---- paired == diag(pairwise) -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", NAMES)
def test_paired_is_the_diagonal_of_pairwise(name, dtype):
    geometry = build(name, dtype)
    a, b = points(geometry, 16, 0, "image", dtype), points(geometry, 16, 1, "text", dtype)
    b[3] = a[3]  # one coincident pair (score at the top of the range), one antipodal-ish one
    b[5] = -a[5]
    diag, paired = geometry.pairwise(a, b).diag(), geometry.paired(a, b)
    assert paired.shape == (16,) and paired.dtype == dtype
    eps = torch.finfo(dtype).eps
    # float64: 1e-12; float32: a few roundings of the score's magnitude (summed over k tokens)
    tol = 1e-12 if dtype == torch.float64 else 8 * K * eps * (1 + diag.abs().max().item())
    assert (paired - diag).abs().max().item() <= tol


# ---- NaN and Inf propagate, and only to the affected row / column ---------------------------------------------
def _poisoned(x: torch.Tensor, row: int, value: float) -> torch.Tensor:
    x = x.clone()
    x[row, 1, 2] = value
    return x


def _only(bad: torch.Tensor, index: int, dim: int = 0) -> None:
    """Every entry of slice ``index`` along ``dim`` is non-finite, every other entry finite."""
    moved = bad.movedim(dim, 0)
    assert not torch.isfinite(moved[index]).any(), f"a finite value where NaN/Inf went in: {moved[index]}"
    rest = torch.cat([moved[:index], moved[index + 1:]])
    assert torch.isfinite(rest).all(), f"NaN/Inf leaked into other rows: {rest}"


VALUES = pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])


@VALUES
@pytest.mark.parametrize("name", NAMES)
def test_non_finite_raw_features_give_non_finite_points(name, value):
    geometry = build(name)
    for modality in ("image", "text"):
        projected = geometry.project(_poisoned(raw(4, 0), 2, value), modality=modality)
        assert not torch.isfinite(projected[2]).all()
        assert torch.isfinite(projected[[0, 1, 3]]).all()


@VALUES
@pytest.mark.parametrize("name", NAMES)
def test_non_finite_points_give_non_finite_scores_in_their_row_and_column(name, value):
    geometry = build(name)
    a, b = points(geometry, 4, 0), points(geometry, 5, 1, "text")
    scale, bias = torch.tensor(2.0, dtype=torch.float64), torch.tensor(-1.0, dtype=torch.float64)
    bad_a, bad_b = _poisoned(a, 1, value), _poisoned(b, 3, value)
    _only(geometry.pairwise(bad_a, b), 1)
    _only(geometry.pairwise(a, bad_b), 3, dim=1)
    _only(geometry.logits(bad_a, b, scale, bias), 1)
    _only(geometry.logits(a, bad_b, scale), 3, dim=1)
    # raw features poisoned before the projection too
    _only(geometry.pairwise(geometry.project(_poisoned(raw(4, 0), 1, value)), b), 1)


@VALUES
@pytest.mark.parametrize("name", NAMES)
def test_non_finite_points_give_a_non_finite_paired_score(name, value):
    geometry = build(name)
    a, b = points(geometry, 4, 0), points(geometry, 4, 1, "text")
    _only(geometry.paired(_poisoned(a, 1, value), b), 1)
    _only(geometry.paired(a, _poisoned(b, 2, value)), 2)


@VALUES
@pytest.mark.parametrize("name", NAMES)
def test_non_finite_points_give_a_non_finite_mean_for_their_class_only(name, value):
    geometry = build(name)
    per_class = points(geometry, 12, 0, "text").view(4, 3, K, D)  # 4 classes, 3 templates
    per_class[2, 1, 0, 4] = value
    mean = geometry.mean(per_class, dim=1, modality="text")
    assert mean.shape == (4, K, D)
    assert not torch.isfinite(mean[2]).all()
    assert torch.isfinite(mean[[0, 1, 3]]).all()


@VALUES
@pytest.mark.parametrize("name", NAMES)
def test_non_finite_points_give_non_finite_extra_terms(name, value):
    geometry = build(name)
    a, b = points(geometry, 4, 0), points(geometry, 4, 1, "text")
    loss = ContrastiveLoss(geometry, check_finite=False, check_on_manifold=False)
    for bad in ((_poisoned(a, 1, value), b), (a, _poisoned(b, 1, value))):
        for term_name, term in geometry.extra_losses(*bad).items():
            assert not torch.isfinite(term.value), f"{term_name} is {term.value.item()} with NaN/Inf in"
        for term_name, term in loss(*bad, torch.tensor(2.0, dtype=torch.float64)).extra.items():
            assert not torch.isfinite(term), f"the loss reports {term_name} = {term.item()} with NaN/Inf in"


@VALUES
@pytest.mark.parametrize("objective", ["softmax", "sigmoid"])
@pytest.mark.parametrize("name", NAMES)
def test_non_finite_points_give_a_non_finite_loss_without_the_check(name, objective, value):
    geometry = build(name)
    a, b = points(geometry, 4, 0), points(geometry, 4, 1, "text")
    loss = ContrastiveLoss(geometry, objective=objective, check_finite=False, check_on_manifold=False)
    bias = torch.tensor(-1.0, dtype=torch.float64) if objective == "sigmoid" else None
    scale = torch.tensor(2.0, dtype=torch.float64)
    for bad in ((_poisoned(a, 1, value), b), (a, _poisoned(b, 2, value))):
        out = loss(*bad, scale, bias)
        assert not torch.isfinite(out.loss) and not torch.isfinite(out.contrastive)
    with pytest.raises(ValueError, match="`image_features` must be finite"):
        ContrastiveLoss(geometry, objective=objective)(_poisoned(a, 1, value), b, scale, bias)


# ---- a batched call equals the loop over rows -----------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_batched_calls_equal_the_loop_over_rows(name):
    geometry = build(name)
    a_raw, b_raw = raw(5, 0), raw(4, 1)
    a, b = geometry.project(a_raw), geometry.project(b_raw, modality="text")
    rows = torch.cat([geometry.project(a_raw[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(a, rows, rtol=1e-12, atol=1e-12)
    pairwise = geometry.pairwise(a, b)
    by_row = torch.cat([geometry.pairwise(a[i:i + 1], b) for i in range(5)])
    by_column = torch.cat([geometry.pairwise(a, b[j:j + 1]) for j in range(4)], dim=1)
    by_entry = torch.tensor([[geometry.pairwise(a[i:i + 1], b[j:j + 1]).item() for j in range(4)] for i in range(5)],
                            dtype=torch.float64)
    for looped in (by_row, by_column, by_entry):
        torch.testing.assert_close(pairwise, looped, rtol=1e-12, atol=1e-12)
    paired = geometry.paired(a[:4], b)
    torch.testing.assert_close(paired, torch.cat([geometry.paired(a[i:i + 1], b[i:i + 1]) for i in range(4)]),
                               rtol=1e-12, atol=1e-12)
    per_class = a.view(5, 1, K, D).expand(5, 2, K, D).clone()
    per_class[:, 1] = torch.cat([a[1:], a[:1]])
    mean = geometry.mean(per_class, dim=1)
    torch.testing.assert_close(mean, torch.cat([geometry.mean(per_class[i:i + 1], dim=1) for i in range(5)]),
                               rtol=1e-12, atol=1e-12)


# ---- dtypes and autocast ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", NAMES)
def test_half_precision_inputs_give_float32_scores_of_the_same_values(name, dtype):
    geometry = build(name, torch.float32)
    a = geometry.project(raw(6, 0, dtype)).to(dtype)
    b = geometry.project(raw(4, 1, dtype), modality="text").to(dtype)
    scores = geometry.pairwise(a, b)
    assert scores.dtype == torch.float32 and geometry.paired(a[:4], b).dtype == torch.float32
    assert geometry.logits(a, b, torch.tensor(2.0)).dtype == torch.float32
    # the half-precision values, scored in float64: the upcast happens before any arithmetic
    expected = build(name).pairwise(a.double(), b.double())
    torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", NAMES)
def test_an_autocast_region_gives_float32_scores_and_float64_stays_float64(name, dtype):
    geometry32, geometry64 = build(name, torch.float32), build(name)
    a32, b32 = points(geometry32, 6, 0, dtype=torch.float32), points(geometry32, 4, 1, "text", torch.float32)
    a64, b64 = points(geometry64, 6, 0), points(geometry64, 4, 1, "text")
    with torch.autocast("cpu", dtype=dtype):
        scores32 = geometry32.pairwise(a32, b32)
        assert scores32.dtype == torch.float32 and geometry32.paired(a32[:4], b32).dtype == torch.float32
        assert geometry32.logits(a32, b32, torch.tensor(2.0)).dtype == torch.float32
        assert geometry32.project(raw(6, 0, torch.float32)).dtype == torch.float32
        assert geometry64.pairwise(a64, b64).dtype == torch.float64
        assert geometry64.paired(a64[:4], b64).dtype == torch.float64
        assert geometry64.project(raw(6, 0)).dtype == torch.float64
    # computed in float32, not in the autocast dtype
    torch.testing.assert_close(scores32, geometry32.pairwise(a32, b32), rtol=0, atol=0)


# ---- gradients ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_gradients_are_finite_at_coincident_points(name):
    """x == y: the top of the range, where a distance's square root or acosh has a kink."""
    for dtype in (torch.float32, torch.float64):
        geometry = build(name, dtype)
        features = raw(4, 0, dtype).requires_grad_()
        x = geometry.project(features)
        scores = geometry.pairwise(x, x).sum() + geometry.paired(x, x).sum()
        scores.backward()
        assert torch.isfinite(features.grad).all()
        for param_name, param in geometry.named_parameters():
            if param.grad is not None:  # lorentz's text scale is unused by two image points
                assert torch.isfinite(param.grad).all(), param_name
        # the loss on identical image and text points
        geometry.zero_grad()
        features.grad = None
        x = geometry.project(features)
        out = ContrastiveLoss(geometry)(x, x, torch.tensor(2.0, dtype=dtype))
        out.loss.backward()
        assert torch.isfinite(out.loss) and torch.isfinite(features.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in geometry.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", NAMES)
def test_scores_pass_gradcheck_in_float64(name):
    geometry = build(name)
    a = points(geometry, 4, 0).requires_grad_()
    b = points(geometry, 3, 1, "text").requires_grad_()
    assert torch.autograd.gradcheck(geometry.pairwise, (a, b))
    assert torch.autograd.gradcheck(geometry.paired, (a[:3], b))
    features = raw(3, 2).requires_grad_()
    assert torch.autograd.gradcheck(lambda f: geometry.project(f, modality="text"), (features,))


@pytest.mark.parametrize("name", NAMES)
def test_extra_loss_terms_are_finite_and_differentiable(name):
    geometry = build(name)
    image_raw, text_raw = raw(6, 0, scale=2.0).requires_grad_(), raw(6, 1, scale=2.0).requires_grad_()
    image, text = geometry.project(image_raw, modality="image"), geometry.project(text_raw, modality="text")
    terms = geometry.extra_losses(image, text)
    if name in OPTIONS:  # the options above switch terms on
        assert terms, f"{name} with {OPTIONS[name]} adds no extra loss term"
    for term_name, term in terms.items():
        assert term.value.dim() == 0 and torch.isfinite(term.value), term_name
        assert isinstance(term.weight, float) and math.isfinite(term.weight) and term.weight > 0
        grads = torch.autograd.grad(term.value, [image_raw, text_raw, *geometry.parameters()], allow_unused=True)
        assert all(g is None or torch.isfinite(g).all() for g in grads)
        assert any(g is not None and g.abs().sum() > 0 for g in grads[:2]), f"{term_name} has no feature gradient"
        assert torch.autograd.gradcheck(lambda i, t: geometry.extra_losses(i, t)[term_name].value,
                                        (image.detach().requires_grad_(), text.detach().requires_grad_()))
    # the loss adds each term with its weight and reports it
    out = ContrastiveLoss(geometry)(image, text, torch.tensor(1.0, dtype=torch.float64))
    assert set(out.extra) == set(terms)
    expected = out.contrastive + sum(t.weight * t.value.detach() for t in terms.values())
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-12, atol=1e-12)


# ---- range, space, checks, mean ------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [0.1, 1.0, 30.0])
@pytest.mark.parametrize("name", NAMES)
def test_scores_lie_in_the_value_range(name, scale):
    geometry = build(name)
    lo, hi = geometry.value_range()
    assert lo < hi
    a = geometry.project(raw(8, 0, scale=scale))
    b = geometry.project(raw(8, 1, scale=scale), modality="text")
    b[0] = a[0]
    tol = 1e-9 * max(1.0, abs(lo) if math.isfinite(lo) else 1.0, abs(hi))
    for scores in (geometry.pairwise(a, b), geometry.paired(a, b), geometry.pairwise(a, a)):
        assert scores.min().item() >= lo - tol and scores.max().item() <= hi + tol


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_projected_features_are_on_the_space_and_raw_ones_are_caught(name, dtype):
    geometry = build(name, torch.float32 if dtype == torch.bfloat16 else dtype)
    features = raw(8, 0, dtype, scale=3.0)
    projected = geometry.project(features).to(dtype)
    deviation = geometry.manifold_deviation(projected)
    if deviation is None:  # no constraint: nothing to check, and the check accepts anything
        assert geometry.manifold_deviation(features) is None
        geometry.check_on_manifold(features, "image_features")
        return
    assert deviation.dim() == 0 and not deviation.requires_grad
    assert deviation.item() <= geometry.manifold_tolerance(dtype)
    geometry.check_on_manifold(projected, "image_features")
    assert geometry.manifold_deviation(features).item() > geometry.manifold_tolerance(dtype)
    with pytest.raises(ValueError, match="`image_features`"):
        geometry.check_on_manifold(features, "image_features")
    assert geometry.manifold_deviation(features[:0]).item() == 0.0
    assert math.isnan(geometry.manifold_deviation(_poisoned(projected, 0, float("nan"))).item())


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_are_refused_naming_the_argument(name):
    geometry = build(name)
    good = points(geometry, 4, 0)
    wrong_k = torch.randn(4, K + 1, D, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"`a`.*\(N, 3, 5\).*\(4, 15\)"):
        geometry.pairwise(good.flatten(1), good)
    with pytest.raises(ValueError, match=r"`b`.*\(N, 3, 5\).*\(4, 4, 5\)"):
        geometry.pairwise(good, wrong_k)
    with pytest.raises(ValueError, match=r"`right`.*\(4, 4, 5\)"):
        geometry.check_inputs(good, wrong_k, names=("left", "right"))
    with pytest.raises(ValueError, match=r"`left`.*floating-point.*torch.int64"):
        geometry.check_inputs(torch.ones(4, K, D, dtype=torch.int64), good, names=("left", "right"))
    with pytest.raises(ValueError, match="same number of rows"):
        geometry.paired(good, good[:3])
    with pytest.raises(ValueError, match=r"`features`.*\(N, 3, 5\)"):
        geometry.project(torch.randn(4, D, K, dtype=torch.float64))
    with pytest.raises(ValueError, match="`modality` must be one of image, text, got 'audio'"):
        geometry.project(raw(2, 0), modality="audio")
    with pytest.raises(ValueError, match="`n_tokens`"):
        get_geometry(name, n_tokens=0, token_dim=D)
    with pytest.raises(ValueError, match="takes no option"):
        get_geometry(name, n_tokens=K, token_dim=D, no_such_option=1)


@pytest.mark.parametrize("modality", ["image", "text"])
@pytest.mark.parametrize("name", NAMES)
def test_the_mean_of_identical_points_is_that_point(name, modality):
    geometry = build(name)
    x = points(geometry, 4, 0, modality)
    copies = x[:, None].expand(4, 5, K, D)
    torch.testing.assert_close(geometry.mean(copies, dim=1, modality=modality), x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(geometry.mean(x[None].expand(3, 4, K, D), dim=0, modality=modality), x,
                               rtol=1e-12, atol=1e-12)
