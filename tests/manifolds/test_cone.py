"""Tests for manifold_align.manifolds.lorentz.cone (MERU's entailment cone): agreement with MERU's formulas
(tests/manifolds/meru_reference.py) in float64, float32 accuracy between a point near the origin and one far out,
NaN / Inf propagation, and finite gradients at the degenerate points."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import manifold_align
from manifold_align.manifolds.lorentz.cone import entailment_loss, exterior_angle, half_aperture

from .meru_reference import meru_entailment, meru_exterior_angle, meru_half_aperture

FAST = settings(max_examples=15, deadline=None)


def _features(n, k, d, seed, dtype=torch.float64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, k, d, generator=g, dtype=torch.float64)).to(dtype)


def near_far_pairs(c, seed, n_dirs=8):
    """Space components (float32) of x at scaled radius r_near and y at r_far, random directions, all
    combinations: the pairs whose float32 exterior angle lost precision through the Minkowski chord."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for r_near in (1e-3, 0.01, 0.3, 1.0, 2.0):
        for r_far in (3.0, 6.0, 9.0, 11.0, 13.0):
            u = torch.randn(n_dirs, 3, generator=g, dtype=torch.float64)
            v = torch.randn(n_dirs, 3, generator=g, dtype=torch.float64)
            xs.append(math.sinh(r_near) / math.sqrt(c) * u / u.norm(dim=-1, keepdim=True))
            ys.append(math.sinh(r_far) / math.sqrt(c) * v / v.norm(dim=-1, keepdim=True))
    return torch.cat(xs).float(), torch.cat(ys).float()


# ---- against MERU's formulas ---------------------------------------------------------------------------------
@FAST
@given(d=st.integers(2, 8), seed=st.integers(0, 10**6), c=st.sampled_from([0.3, 1.0, 4.0]))
def test_entailment_matches_meru_formulas(d, seed, c):
    text, image = _features(8, 1, d, seed, scale=1.5), _features(8, 1, d, seed + 1, scale=1.5)
    # MERU's eps guards (1e-8) shift values by ~1e-8; a negligible eps compares the formulas themselves
    torch.testing.assert_close(half_aperture(text[:, 0], c), meru_half_aperture(text[:, 0], c, eps=1e-300),
                               atol=1e-10, rtol=1e-10)
    angle = exterior_angle(text[:, 0], image[:, 0], c)
    torch.testing.assert_close(angle, meru_exterior_angle(text[:, 0], image[:, 0], c, eps=1e-300),
                               atol=1e-9, rtol=1e-9)
    ref = meru_entailment(text[:, 0], image[:, 0], c, eps=1e-300)
    torch.testing.assert_close(entailment_loss(text, image, c), ref, atol=1e-9, rtol=1e-9)
    assert bool(((angle >= 0) & (angle <= math.pi)).all())


def test_entailment_loss_is_reexported_from_the_root():
    assert manifold_align.entailment_loss is entailment_loss


def test_exterior_angle_is_pi_behind_and_zero_beyond_on_a_ray():
    x = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    assert float(exterior_angle(x, 2 * x)) == pytest.approx(0.0, abs=1e-12)  # further out on the same ray
    assert float(exterior_angle(x, 0.5 * x)) == pytest.approx(math.pi, abs=1e-12)  # between x and the origin
    assert float(exterior_angle(x, torch.zeros_like(x))) == pytest.approx(math.pi, abs=1e-12)  # the origin


# ---- float32 accuracy: a point near the origin and one far out (issue 19) ----------------------------------
def test_exterior_angle_far_pair_float32_issue_case():
    # c = 1, x = [sinh 0.3, 0], y = [0, sinh 11]: the chord form was 3.1e-3 rad off, MERU's acos form 7e-9
    x = torch.tensor([[math.sinh(0.3), 0.0]])
    y = torch.tensor([[0.0, math.sinh(11.0)]])
    ref = meru_exterior_angle(x.double(), y.double(), 1.0, eps=1e-300)
    got = exterior_angle(x, y)
    assert got.dtype == torch.float32
    assert abs(float(got) - float(ref)) <= 1e-6 * float(ref)


@pytest.mark.parametrize("c", [0.5, 1.0, 2.0])
def test_exterior_angle_and_entailment_float32_near_far_grid(c):
    x, y = near_far_pairs(c, seed=int(10 * c))
    for a, b in ((x, y), (y, x)):  # the near point as the apex, then the far one
        ref = meru_exterior_angle(a.double(), b.double(), c, eps=1e-300)
        got = exterior_angle(a, b, c).double()
        assert float(((got - ref).abs() / ref).max()) <= 1e-6
        # the loss, mean over the pairs (k = 1), with a radius that puts some pairs inside their cone
        ref_loss = meru_entailment(a.double(), b.double(), c, min_radius=0.1, eps=1e-300)
        loss = entailment_loss(a[:, None], b[:, None], c)
        assert float(ref_loss) > 0
        assert abs(float(loss) - float(ref_loss)) <= 1e-6 * float(ref_loss)


# ---- NaN and Inf ---------------------------------------------------------------------------------------------
ENTRY_POINTS = {
    "half_aperture": lambda x, y: half_aperture(x[:, 0]),
    "exterior_angle_apex": lambda x, y: exterior_angle(x[:, 0], y[:, 0]),
    "exterior_angle_other": lambda x, y: exterior_angle(y[:, 0], x[:, 0]),
    "entailment_loss_text": lambda x, y: entailment_loss(x, y)[None],
    "entailment_loss_image": lambda x, y: entailment_loss(y, x)[None],
}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_non_finite_input_gives_non_finite_output(name, bad):
    x, y = _features(3, 1, 4, 0, torch.float32), _features(3, 1, 4, 1, torch.float32)
    x[0, 0, 1] = bad
    out = ENTRY_POINTS[name](x, y)
    assert not bool(torch.isfinite(out[0])), f"{name}: {bad} in, {out[0]} out"
    if out.numel() > 1:
        assert bool(torch.isfinite(out[1:]).all())


# ---- gradients -------------------------------------------------------------------------------------------------
def test_entailment_is_zero_inside_the_cone_and_finite_at_degenerate_points():
    text = torch.tensor([[[2.0, 0.0]]], dtype=torch.float64)
    image = torch.tensor([[[3.0, 0.0]]], dtype=torch.float64)  # further out on the same ray: angle 0
    assert float(entailment_loss(text, image)) == 0.0
    t = torch.zeros(2, 1, 3, dtype=torch.float64, requires_grad=True)  # text at the origin, image = text
    i = torch.zeros(2, 1, 3, dtype=torch.float64)
    out = entailment_loss(t, i)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(t.grad).all()
    x = _features(4, 1, 3, 5, torch.float32).requires_grad_()
    angle = exterior_angle(x[:, 0], x[:, 0].detach())  # y = x: pi/2 with gradient 0
    angle.sum().backward()
    assert torch.allclose(angle, torch.full_like(angle, math.pi / 2)) and bool((x.grad == 0).all())


def test_exterior_angle_gradcheck_float64():
    x = _features(5, 1, 3, 7, scale=1.5)[:, 0].requires_grad_()
    y = _features(5, 1, 3, 8, scale=3.0)[:, 0].requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: exterior_angle(a, b, 0.7), (x, y))
