"""The ``lorentz`` geometry against MERU's formulas written out here in float64 (Desai et al., ICML 2023: its
``lorentz.py`` and ``models.py``), independent of the library: the lift, the distance, the loss, the entailment
cone, the learnable curvature and modality scales, and the one clamp rule on the curvature's total gradient."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from manifold_align import ContrastiveLoss, LorentzGeometry, entailment_loss, get_geometry
from manifold_align.manifolds.lorentz.cone import exterior_angle, half_aperture

FAST = settings(max_examples=15, deadline=None)
F64 = torch.float64


def _features(n, k, d, seed, dtype=F64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, k, d, generator=g, dtype=F64)).to(dtype)


def _geometry(k, d, c=1.3, image=0.4, text=0.6, dtype=F64, **options):
    geo = get_geometry("lorentz", n_tokens=k, token_dim=d, **options).to(dtype)
    with torch.no_grad():
        geo.log_curvature.fill_(math.log(c))
        geo.log_image_scale.fill_(math.log(image))
        geo.log_text_scale.fill_(math.log(text))
    return geo


# ---- MERU's formulas, written out in float64 (space components, time derived) ------------------------------
def meru_expmap0(x, c):
    c = torch.as_tensor(c, dtype=x.dtype)
    r = torch.sqrt(c) * x.norm(dim=-1, keepdim=True)
    return torch.sinh(r) * x / r


def meru_pairwise_dist(x, y, c):
    c = torch.as_tensor(c, dtype=x.dtype)
    xt = torch.sqrt(1 / c + (x**2).sum(-1, keepdim=True))
    yt = torch.sqrt(1 / c + (y**2).sum(-1, keepdim=True))
    inner = x @ y.T - xt @ yt.T
    return torch.acosh(torch.clamp(-c * inner, min=1 + 1e-8)) / torch.sqrt(c)


def meru_entailment(text, image, c, min_radius=0.1, eps=1e-8):
    sqrt_c = math.sqrt(c)
    aperture = torch.asin(torch.clamp(2 * min_radius / (text.norm(dim=-1) * sqrt_c + eps), -1 + eps, 1 - eps))
    xt = torch.sqrt(1 / c + (text**2).sum(-1))
    yt = torch.sqrt(1 / c + (image**2).sum(-1))
    c_xyl = c * ((text * image).sum(-1) - xt * yt)
    numer = yt + c_xyl * xt
    denom = torch.sqrt(torch.clamp(c_xyl**2 - 1, min=eps))
    angle = torch.acos(torch.clamp(numer / (text.norm(dim=-1) * denom + eps), -1 + eps, 1 - eps))
    return torch.clamp(angle - aperture, min=0).mean()


def meru_loss(raw_img, raw_txt, c, alpha_img, alpha_txt, scale, entail_weight=0.0):
    """MERU's forward on (N, d) features: lift, symmetric cross-entropy of -scale * distance, + entailment."""
    img = meru_expmap0(raw_img * alpha_img, c)
    txt = meru_expmap0(raw_txt * alpha_txt, c)
    labels = torch.arange(img.shape[0])
    image_logits, text_logits = -meru_pairwise_dist(img, txt, c), -meru_pairwise_dist(txt, img, c)
    loss = 0.5 * (F.cross_entropy(scale * image_logits, labels) + F.cross_entropy(scale * text_logits, labels))
    if entail_weight:
        loss = loss + entail_weight * meru_entailment(txt, img, float(c))
    return loss


def ref_lorentz(a, b, c):
    """-sum_b acosh(-c <a_b, b_b>_L) / sqrt(c), loop over tokens, float64."""
    a, b = a.double(), b.double()
    return -sum(meru_pairwise_dist(a[:, t], b[:, t], c) for t in range(a.shape[1]))


# ---- the formula ---------------------------------------------------------------------------------------------
@FAST
@given(k=st.integers(1, 4), d=st.integers(1, 8), seed=st.integers(0, 10**6), c=st.sampled_from([0.2, 1.0, 5.0]))
def test_scores_match_meru_distance_per_token(k, d, seed, c):
    geo = _geometry(k, d, c=c)
    a = geo.project(_features(5, k, d, seed, scale=2.0), modality="image")
    b = geo.project(_features(4, k, d, seed + 1, scale=2.0), modality="text")
    torch.testing.assert_close(geo.pairwise(a, b), ref_lorentz(a, b, c), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(geo.paired(a[:4], b), ref_lorentz(a[:4], b, c).diag(), atol=1e-9, rtol=1e-9)


def test_project_is_meru_lift_per_token_with_each_modality_scale():
    geo = _geometry(3, 6, c=0.8)
    raw = _features(5, 3, 6, 0)
    for modality, alpha in (("image", 0.4), ("text", 0.6)):
        got = geo.project(raw, modality=modality)
        torch.testing.assert_close(got, meru_expmap0(raw * alpha, 0.8), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_inputs_are_scored_in_float32(dtype):
    geo = _geometry(2, 16, dtype=torch.float32)
    raw_a, raw_b = _features(6, 2, 16, 0, dtype, 2.0), _features(7, 2, 16, 1, dtype, 2.0)
    a, b = geo.project(raw_a), geo.project(raw_b, modality="text")
    assert a.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = geo.pairwise(a.to(dtype), b.to(dtype))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref_lorentz(a.to(dtype), b.to(dtype), 1.3), atol=1e-5, rtol=1e-5)


def test_diagonal_is_exact_with_finite_gradient_in_float32():
    geo = _geometry(4, 32, image=1.0, dtype=torch.float32)
    x = geo.project(_features(6, 4, 32, 0, torch.float32, 0.5)).detach().requires_grad_()
    s = geo.pairwise(x, x.detach())
    assert float(s.detach().diag().abs().max()) == 0.0  # acosh(-c <x, x>_L) gives ~1e-3 here
    s.sum().backward()
    assert torch.isfinite(x.grad).all()


# issue 19: c = 1, x at distance 0.3 from the origin, y at 11, at a right angle; MERU and `pairwise` agree with the
# float64 value to 3e-8, `paired` (space_dist) was 8.5e-5 off and the exterior angle 3.1e-3 rad off
_FAR_X, _FAR_Y = [math.sinh(0.3), 0.0], [0.0, math.sinh(11.0)]
_FAR_DIST = math.acosh(math.cosh(0.3) * math.cosh(11.0))  # hyperbolic law of cosines at a right angle


def test_far_pair_pairwise_is_accurate_in_float32():
    geo = _geometry(1, 2, c=1.0, dtype=torch.float32)
    x, y = torch.tensor([[_FAR_X]]), torch.tensor([[_FAR_Y]])
    assert -geo.pairwise(x, y).item() == pytest.approx(_FAR_DIST, rel=1e-6)


def test_far_pair_paired_and_entailment_are_accurate_in_float32():
    geo = _geometry(1, 2, c=1.0, dtype=torch.float32, entailment_weight=1.0)
    x, y = torch.tensor([[_FAR_X]]), torch.tensor([[_FAR_Y]])
    assert -geo.paired(x, y).item() == pytest.approx(_FAR_DIST, rel=1e-6)
    x64, y64 = x.double()[:, 0], y.double()[:, 0]
    assert exterior_angle(x[:, 0], y[:, 0], 1.0).item() == pytest.approx(exterior_angle(x64, y64, 1.0).item(), rel=1e-6)
    expected = meru_entailment(x64, y64, 1.0, eps=1e-300).item()
    assert geo.extra_losses(y, x)["entailment"].value.item() == pytest.approx(expected, rel=1e-6)


# ---- parameters ----------------------------------------------------------------------------------------------
def test_initial_values_follow_meru():
    geo = get_geometry("lorentz", n_tokens=1, token_dim=512)
    assert isinstance(geo, LorentzGeometry)
    values = geo.values()
    assert values["curvature"].item() == pytest.approx(1.0)
    assert values["image_scale"].item() == pytest.approx(512**-0.5)
    assert values["text_scale"].item() == pytest.approx(512**-0.5)
    assert set(dict(geo.named_parameters())) == {"log_curvature", "log_image_scale", "log_text_scale"}
    assert set(geo.state_dict()) == {"log_curvature", "log_image_scale", "log_text_scale"}
    assert geo.default_temperature["name"] == "learnable"


def test_accessors_clamp_and_the_parameters_can_leave_the_bounds():
    geo = get_geometry("lorentz", n_tokens=2, token_dim=4, curvature_init=2.0)
    with torch.no_grad():
        geo.log_curvature.fill_(10.0)
        geo.log_image_scale.fill_(1.0)
    assert geo.curvature().detach().item() == pytest.approx(20.0)  # curvature_init * 10
    assert geo.scale("image").detach().item() == pytest.approx(1.0)  # never up-scales
    # a loss that wants a smaller curvature gets a gradient at the upper bound (plain clamp would give 0)
    geo.curvature().backward()
    assert float(geo.log_curvature.grad) > 0
    values = geo.values()
    assert set(values) == {"curvature", "image_scale", "text_scale"}
    assert all(v.dim() == 0 and not v.requires_grad for v in values.values())
    assert float(values["curvature"]) == pytest.approx(20.0)
    geo.clamp_()
    assert float(geo.log_curvature) == pytest.approx(math.log(20.0)) and float(geo.log_image_scale) == 0.0
    frozen = get_geometry("lorentz", n_tokens=2, token_dim=4, learn_curvature=False)
    assert not frozen.log_curvature.requires_grad


@pytest.mark.parametrize("options, match", [
    ({"curvature_init": 0.0}, "`curvature_init` must be a positive"),
    ({"curvature_range": 0.5}, "`curvature_range` must be >= 1"),
    ({"entailment_weight": -1.0}, "`entailment_weight` must be a finite number >= 0"),
    ({"entailment_weight": "a lot"}, "`entailment_weight` must be a number"),
    ({"learn_curvature": "yes"}, "`learn_curvature` must be True or False"),
    ({"curvature": 0.3}, r"takes no option\(s\) \['curvature'\]; accepted: curvature_init"),
])
def test_bad_options_are_refused_naming_the_option(options, match):
    with pytest.raises(ValueError, match=match):
        get_geometry("lorentz", n_tokens=2, token_dim=4, **options)


# ---- the loss, MERU's, for k = 1 -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,tol", [(F64, 1e-6), (torch.float32, 1e-5)])
@pytest.mark.parametrize("entail_weight", [0.0, 0.2])
def test_k1_loss_equals_meru_loss(dtype, tol, entail_weight):
    raw_img, raw_txt = _features(16, 1, 8, 0, scale=2.0), _features(16, 1, 8, 1, scale=2.0)
    c, a_img, a_txt, scale = 1.3, 0.4, 0.6, 1 / 0.07
    expected = meru_loss(raw_img[:, 0], raw_txt[:, 0], c, a_img, a_txt, scale, entail_weight)
    geo = _geometry(1, 8, c, a_img, a_txt, dtype, entailment_weight=entail_weight)
    img = geo.project(raw_img.to(dtype), modality="image")
    txt = geo.project(raw_txt.to(dtype), modality="text")
    out = ContrastiveLoss(geo)(img, txt, torch.tensor(scale, dtype=dtype))
    assert abs(out.loss.item() - expected.item()) < tol
    assert out.scale.item() == pytest.approx(scale)
    if entail_weight:
        ref = meru_entailment(meru_expmap0(raw_txt[:, 0] * a_txt, c), meru_expmap0(raw_img[:, 0] * a_img, c), c)
        assert out.extra["entailment"].item() == pytest.approx(ref.item(), abs=tol)
    else:
        assert out.extra == {}
    out.loss.backward()
    for p in geo.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


# ---- the curvature's gradient at its clamp: the rule applied once, to the total gradient --------------------
_CLAMP_IMAGE = torch.tensor([[1.0, 0.0], [-2.0, -2.0]], dtype=F64)
_CLAMP_TEXT = torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=F64)


def _meru_raw_gradients(c):
    """MERU's loss and its raw gradients w.r.t. log c and the two log scales (MERU clamps the data in forward, so
    its gradient is the unclamped one)."""
    log_c = torch.tensor(math.log(c), dtype=F64, requires_grad=True)
    log_img = torch.tensor(math.log(0.5), dtype=F64, requires_grad=True)
    log_txt = torch.tensor(math.log(0.5), dtype=F64, requires_grad=True)
    loss = meru_loss(_CLAMP_IMAGE, _CLAMP_TEXT, log_c.exp(), log_img.exp(), log_txt.exp(), 1.0)
    loss.backward()
    return loss.item(), log_c.grad.item(), log_img.grad.item(), log_txt.grad.item()


def _our_gradients(c):
    geo = _geometry(1, 2, c=c, image=0.5, text=0.5, curvature_init=1.0, curvature_range=10.0)
    out = ContrastiveLoss(geo)(geo.project(_CLAMP_IMAGE[:, None], modality="image"),
                               geo.project(_CLAMP_TEXT[:, None], modality="text"), torch.tensor(1.0, dtype=F64))
    out.loss.backward()
    return out.loss.item(), geo.log_curvature.grad.item(), geo.log_image_scale.grad.item(), \
        geo.log_text_scale.grad.item()


def test_curvature_gradient_at_its_upper_bound_follows_the_clamp_rule_applied_once():
    """Issue 19: the curvature is read 3-4 times per loss; clamping each read summed the inward parts (+0.055563)."""
    meru_loss_value, meru_grad, meru_img, meru_txt = _meru_raw_gradients(10.0)
    assert meru_loss_value == pytest.approx(0.760474727928, abs=1e-12)
    assert meru_grad == pytest.approx(-0.005135, abs=1e-6)  # outward at the upper bound: the rule gives 0
    loss, grad, img, txt = _our_gradients(10.0)
    assert loss == pytest.approx(meru_loss_value, abs=1e-12)
    assert grad == 0.0
    # the scales sit inside their range: MERU's gradients unchanged
    assert img == pytest.approx(meru_img, abs=1e-12) and txt == pytest.approx(meru_txt, abs=1e-12)


def test_curvature_gradient_just_inside_the_bound_is_meru_raw_gradient():
    meru_loss_value, meru_grad, _, _ = _meru_raw_gradients(9.99)
    loss, grad, _, _ = _our_gradients(9.99)
    assert loss == pytest.approx(meru_loss_value, abs=1e-12)
    assert grad == pytest.approx(meru_grad, abs=1e-4)
    assert grad == pytest.approx(meru_grad, rel=1e-9)


# ---- entailment, against MERU's formulas -----------------------------------------------------------------------
@FAST
@given(d=st.integers(2, 8), seed=st.integers(0, 10**6), c=st.sampled_from([0.3, 1.0, 4.0]))
def test_entailment_matches_meru_formulas(d, seed, c):
    text, image = _features(8, 1, d, seed, scale=1.5), _features(8, 1, d, seed + 1, scale=1.5)
    aperture_ref = torch.asin(torch.clamp(0.2 / (text[:, 0].norm(dim=-1) * math.sqrt(c)), max=1.0))
    torch.testing.assert_close(half_aperture(text[:, 0], c), aperture_ref, atol=1e-10, rtol=1e-10)
    # MERU's eps guards (1e-8) shift values by ~1e-8; a negligible eps compares the formulas themselves
    ref = meru_entailment(text[:, 0], image[:, 0], c, eps=1e-300)
    torch.testing.assert_close(entailment_loss(text, image, c), ref, atol=1e-9, rtol=1e-9)
    angle = exterior_angle(text[:, 0], image[:, 0], c)
    assert bool(((angle >= 0) & (angle <= math.pi)).all())
    # the geometry's extra term is the same loss, text entailing image, with the weight it was built with
    geo = _geometry(1, d, c=c, entailment_weight=0.3)
    term = geo.extra_losses(image, text)["entailment"]
    assert term.weight == 0.3
    torch.testing.assert_close(term.value, ref, atol=1e-9, rtol=1e-9)


def test_entailment_weight_zero_adds_no_term():
    geo = get_geometry("lorentz", n_tokens=2, token_dim=3)
    x = _features(4, 2, 3, 0)
    assert geo.entailment_weight == 0.0 and geo.extra_losses(x, x) == {}


def test_entailment_is_zero_inside_the_cone_and_finite_at_degenerate_points():
    text = torch.tensor([[[2.0, 0.0]]], dtype=F64)
    image = torch.tensor([[[3.0, 0.0]]], dtype=F64)  # further out on the same ray: angle 0
    assert float(entailment_loss(text, image)) == 0.0
    t = torch.zeros(2, 1, 3, dtype=F64, requires_grad=True)  # text at the origin, image = text
    i = torch.zeros(2, 1, 3, dtype=F64)
    out = entailment_loss(t, i)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(t.grad).all()


def test_mean_is_the_tangent_mean_at_the_origin_per_token():
    """exp_0(mean(log_0(x))), MERU's maps written out: log_0(x) = asinh(sqrt(c) |x|) x / (sqrt(c) |x|)."""
    c = 0.7
    geo = _geometry(2, 3, c=c)
    x = geo.project(_features(12, 2, 3, 0), modality="text").view(4, 3, 2, 3)
    norm = x.norm(dim=-1, keepdim=True)
    tangent = torch.asinh(math.sqrt(c) * norm) * x / (math.sqrt(c) * norm)
    expected = meru_expmap0(tangent.mean(1), c)
    torch.testing.assert_close(geo.mean(x, dim=1, modality="text"), expected, atol=1e-12, rtol=1e-12)
