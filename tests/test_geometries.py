"""Tests for the ``euclidean`` and ``lorentz`` similarities, LorentzGeometry, the model-owned scale / bias /
geometry path of ContrastiveLoss -- against formulas written out in float64 (MERU's, in
tests/manifolds/meru_reference.py, and EuCLIP's, independent of the library)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from manifold_align import ContrastiveLoss, LorentzGeometry, get_similarity
from manifolds.meru_reference import meru_entailment, meru_expmap0, meru_pairwise_dist

FAST = settings(max_examples=15, deadline=None)


def _features(n, k, d, seed, dtype=torch.float64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, k, d, generator=g, dtype=torch.float64)).to(dtype)


def _geometry(d, c=1.3, image=0.4, text=0.6, dtype=torch.float64):
    geo = LorentzGeometry(d).to(dtype)
    with torch.no_grad():
        geo.log_curvature.fill_(math.log(c))
        geo.log_image_scale.fill_(math.log(image))
        geo.log_text_scale.fill_(math.log(text))
    return geo


def meru_loss(raw_img, raw_txt, c, alpha_img, alpha_txt, scale, entail_weight=0.0):
    img = meru_expmap0(raw_img * alpha_img, c)
    txt = meru_expmap0(raw_txt * alpha_txt, c)
    labels = torch.arange(img.shape[0])
    image_logits, text_logits = -meru_pairwise_dist(img, txt, c), -meru_pairwise_dist(txt, img, c)
    loss = 0.5 * (F.cross_entropy(scale * image_logits, labels) + F.cross_entropy(scale * text_logits, labels))
    return loss + entail_weight * meru_entailment(txt, img, c)


# ---- euclidean ----------------------------------------------------------------------------------------
def ref_euclidean(a, b, squared):
    diff = a.double()[:, None] - b.double()[None]  # (Na, Nb, k, d)
    per_token = (diff**2).sum(-1)
    return -per_token.sum(-1) if squared else -per_token.sqrt().sum(-1)


@FAST
@given(squared=st.booleans(), k=st.integers(1, 5), d=st.integers(1, 7), seed=st.integers(0, 10**6))
def test_euclidean_matches_written_out_formula(squared, k, d, seed):
    sim = get_similarity("euclidean")
    sim.squared = squared
    a, b = _features(5, k, d, seed, scale=3.0), _features(4, k, d, seed + 1, scale=3.0)
    assert sim.project(a) is a  # no normalization
    torch.testing.assert_close(sim.pairwise(a, b), ref_euclidean(a, b, squared), atol=1e-9, rtol=1e-10)
    torch.testing.assert_close(sim.paired(a, a.flip(0)), ref_euclidean(a, a.flip(0), squared).diag(),
                               atol=1e-9, rtol=1e-10)


def test_euclidean_default_is_squared_and_range_is_unbounded():
    sim = get_similarity("euclidean")
    assert sim.squared and sim.value_range(4, 8) == (-math.inf, 0.0)
    assert sim.make_geometry(d=8) is None


@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_euclidean_low_precision_inputs(squared, dtype):
    sim = get_similarity("euclidean")
    sim.squared = squared
    a, b = _features(6, 3, 16, 0, dtype), _features(7, 3, 16, 1, dtype)
    got = sim.pairwise(a, b)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref_euclidean(a, b, squared), atol=1e-4, rtol=1e-5)


def test_euclidean_unsquared_diagonal_is_exact_with_finite_gradient():
    sim = get_similarity("euclidean")
    sim.squared = False
    x = _features(5, 4, 32, 0, torch.float32, scale=10.0).requires_grad_()
    s = sim.pairwise(x, x.detach())
    assert float(s.detach().diag().abs().max()) == 0.0
    s.sum().backward()
    assert torch.isfinite(x.grad).all()


# ---- lorentz similarity ----------------------------------------------------------------------------------
def ref_lorentz(a, b, c):
    """-sum_b acosh(-c <a_b, b_b>_L) / sqrt(c), loop over tokens, float64."""
    a, b = a.double(), b.double()
    return -sum(meru_pairwise_dist(a[:, t], b[:, t], c) for t in range(a.shape[1]))


@FAST
@given(k=st.integers(1, 4), d=st.integers(1, 8), seed=st.integers(0, 10**6), c=st.sampled_from([0.2, 1.0, 5.0]))
def test_lorentz_matches_written_out_formula(k, d, seed, c):
    sim, geo = get_similarity("lorentz"), _geometry(d, c=c)
    a = sim.project(_features(5, k, d, seed, scale=2.0), geometry=geo, modality="image")
    b = sim.project(_features(4, k, d, seed + 1, scale=2.0), geometry=geo, modality="text")
    torch.testing.assert_close(sim.pairwise(a, b, geometry=geo), ref_lorentz(a, b, c), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(sim.paired(a[:4], b, geometry=geo), ref_lorentz(a[:4], b, c).diag(),
                               atol=1e-9, rtol=1e-9)


def test_lorentz_project_is_meru_lift_per_token():
    sim, geo = get_similarity("lorentz"), _geometry(6, c=0.8)
    raw = _features(5, 3, 6, 0)
    for modality, alpha in (("image", 0.4), ("text", 0.6)):
        got = sim.project(raw, geometry=geo, modality=modality)
        torch.testing.assert_close(got, meru_expmap0(raw * alpha, 0.8), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_lorentz_low_precision_inputs(dtype):
    sim, geo = get_similarity("lorentz"), _geometry(16, dtype=torch.float32)
    raw_a, raw_b = _features(6, 2, 16, 0, dtype, 2.0), _features(7, 2, 16, 1, dtype, 2.0)
    a, b = sim.project(raw_a, geometry=geo), sim.project(raw_b, geometry=geo, modality="text")
    assert a.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = sim.pairwise(a.to(dtype), b.to(dtype), geometry=geo)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref_lorentz(a.to(dtype), b.to(dtype), 1.3), atol=1e-5, rtol=1e-5)


def test_lorentz_diagonal_is_exact_with_finite_gradient_in_float32():
    sim, geo = get_similarity("lorentz"), _geometry(32, image=1.0, dtype=torch.float32)
    x = sim.project(_features(6, 4, 32, 0, torch.float32, 0.5), geometry=geo).detach().requires_grad_()
    s = sim.pairwise(x, x.detach(), geometry=geo)
    assert float(s.detach().diag().abs().max()) == 0.0  # acosh(-c <x, x>_L) gives ~1e-3 here
    s.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_geometry_is_required_where_it_exists_and_refused_where_not():
    lorentz, oblique = get_similarity("lorentz"), get_similarity("oblique")
    x = _features(3, 2, 4, 0)
    with pytest.raises(ValueError, match="needs `geometry`.*NoneType"):
        lorentz.pairwise(x, x)
    with pytest.raises(ValueError, match="needs `geometry`"):
        lorentz.project(x)
    with pytest.raises(ValueError, match="make_geometry\\(d=...\\)"):
        lorentz.make_geometry()
    with pytest.raises(ValueError, match="'oblique' has no geometry.*LorentzGeometry"):
        oblique.pairwise(x, x, geometry=_geometry(4))
    assert oblique.make_geometry(d=4) is None
    with pytest.raises(ValueError, match="`modality` must be one of image, text"):
        lorentz.project(x, geometry=_geometry(4), modality="audio")


# ---- LorentzGeometry ------------------------------------------------------------------------------------
def test_lorentz_geometry_initial_values_follow_meru():
    geo = get_similarity("lorentz").make_geometry(d=512)
    assert isinstance(geo, LorentzGeometry)
    assert float(geo.curvature()) == pytest.approx(1.0)
    assert float(geo.image_scale()) == pytest.approx(512**-0.5)
    assert float(geo.text_scale()) == pytest.approx(512**-0.5)
    assert set(dict(geo.named_parameters())) == {"log_curvature", "log_image_scale", "log_text_scale"}
    assert set(geo.state_dict()) == {"log_curvature", "log_image_scale", "log_text_scale"}


def test_lorentz_geometry_clamps_in_its_accessors_and_can_leave_the_bounds():
    geo = LorentzGeometry(4, curvature_init=2.0)
    with torch.no_grad():
        geo.log_curvature.fill_(10.0)
        geo.log_image_scale.fill_(1.0)
    assert float(geo.curvature()) == pytest.approx(20.0)  # curvature_init * 10
    assert float(geo.image_scale()) == pytest.approx(1.0)  # never up-scales
    # a loss that wants a smaller curvature gets a gradient at the upper bound (plain clamp would give 0)
    geo.curvature().backward()
    assert float(geo.log_curvature.grad) > 0
    geo.clamp_()
    assert float(geo.log_curvature) == pytest.approx(math.log(20.0)) and float(geo.log_image_scale) == 0.0
    assert not LorentzGeometry(4, learn_curvature=False).log_curvature.requires_grad
    assert set(geo.values()) == {"curvature", "image_scale", "text_scale"}
    with pytest.raises(ValueError, match="`d`"):
        LorentzGeometry(0)


# ---- ContrastiveLoss with the model's scale, bias and geometry --------------------------------------------
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-5)])
@pytest.mark.parametrize("entail_weight", [0.0, 0.2])
def test_k1_lorentz_equals_meru_loss(dtype, tol, entail_weight):
    raw_img, raw_txt = _features(16, 1, 8, 0, scale=2.0), _features(16, 1, 8, 1, scale=2.0)
    c, a_img, a_txt, scale = 1.3, 0.4, 0.6, 1 / 0.07
    expected = meru_loss(raw_img[:, 0], raw_txt[:, 0], c, a_img, a_txt, scale, entail_weight)
    sim, geo = get_similarity("lorentz"), _geometry(8, c, a_img, a_txt, dtype)
    img = sim.project(raw_img.to(dtype), geometry=geo, modality="image")
    txt = sim.project(raw_txt.to(dtype), geometry=geo, modality="text")
    loss = ContrastiveLoss("lorentz", entailment_weight=entail_weight)
    out = loss(img, txt, logit_scale=torch.tensor(scale, dtype=dtype), geometry=geo)
    assert abs(float(out.loss) - float(expected)) < tol
    assert out.scale == pytest.approx(scale)
    if entail_weight:
        ref = meru_entailment(meru_expmap0(raw_txt[:, 0] * a_txt, c), meru_expmap0(raw_img[:, 0] * a_img, c), c)
        assert out.entailment == pytest.approx(float(ref), abs=tol)
    else:
        assert out.entailment is None
    out.loss.backward()
    for p in geo.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_logit_scale_overrides_the_temperature():
    sim = get_similarity("euclidean")
    img, txt = _features(6, 2, 4, 0), _features(6, 2, 4, 1)
    logits = 3.5 * ref_euclidean(img, txt, True)
    labels = torch.arange(6)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    loss = ContrastiveLoss("euclidean", {"name": "fixed", "scale": 100.0})
    out = loss(sim.project(img), sim.project(txt), logit_scale=torch.tensor(3.5, dtype=torch.float64))
    assert float(out.loss) == pytest.approx(float(expected), abs=1e-9) and out.scale == pytest.approx(3.5)
    own = loss(img, txt)  # without logit_scale: the loss's own temperature, reported as such
    assert own.scale == pytest.approx(100.0) and float(own.loss) != pytest.approx(float(expected))


def test_logit_bias_overrides_the_loss_bias_for_sigmoid():
    img, txt = _features(5, 2, 4, 0), _features(5, 2, 4, 1)
    scale, bias = torch.tensor(2.0, dtype=torch.float64), torch.tensor(-1.5, dtype=torch.float64)
    logits = 2.0 * ref_euclidean(img, txt, True) - 1.5
    labels = 2 * torch.eye(5, dtype=torch.float64) - 1
    expected = -F.logsigmoid(labels * logits).sum() / 5
    loss = ContrastiveLoss("euclidean", objective="sigmoid", bias_init=-10.0)
    out = loss(img, txt, logit_scale=scale, logit_bias=bias)
    assert float(out.loss) == pytest.approx(float(expected), abs=1e-9)


def test_loss_argument_errors():
    img = _features(4, 2, 3, 0)
    with pytest.raises(ValueError, match="`logit_bias` is only used with objective='sigmoid'"):
        ContrastiveLoss("oblique")(img, img, logit_bias=torch.tensor(0.0))
    with pytest.raises(ValueError, match="`logit_scale` must be None or a one-element"):
        ContrastiveLoss("oblique")(img, img, logit_scale=2.0)
    with pytest.raises(ValueError, match="`entailment_weight` > 0 needs the hyperboloid"):
        ContrastiveLoss("oblique", entailment_weight=0.2)
    with pytest.raises(ValueError, match="`entailment_weight` must be a finite number >= 0"):
        ContrastiveLoss("lorentz", entailment_weight=-1.0)
    with pytest.raises(ValueError, match="needs `geometry`"):
        ContrastiveLoss("lorentz")(img, img)
