"""Tests for manifold_align.manifolds.lorentz: named invariants (geomstats style), agreement with independent
float64 formulas written out here and with geoopt.Lorentz (same manifold for one factor, geoopt's k = 1/c),
dtypes, accuracy near the diagonal, errors and optimizer integration."""

from __future__ import annotations

import math

import geoopt
import mpmath
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from manifold_align.manifolds.lorentz import (
    Hyperboloid,
    HyperboloidExact,
    lorentz_inner,
    space_cdist,
    space_dist,
    space_dist0,
    space_expmap0,
    space_logmap0,
)

from .contract import assert_point_zero_non_finite

SETTINGS = settings(max_examples=20, deadline=None)
dims = st.tuples(st.integers(1, 5), st.integers(1, 8))  # (k, d)
curvatures = st.sampled_from([0.1, 0.7, 1.0, 3.0])
seeds = st.integers(0, 2**31 - 1)


# ---------------------------------------------------------------------------------------------
# data and float64 references (written out, independent of the code under test)
# ---------------------------------------------------------------------------------------------
def gen(seed):
    return torch.Generator().manual_seed(seed)


def space_points(shape, seed, scale=1.0, dtype=torch.float64):
    return (scale * torch.randn(*shape, generator=gen(seed), dtype=torch.float64)).to(dtype)


def ref_time(xs, c):
    xs = xs.double()
    return torch.sqrt(1.0 / c + (xs * xs).sum(-1))


def ref_full(xs, c):
    return torch.cat([ref_time(xs, c)[..., None], xs.double()], dim=-1)


def ref_inner(x, y):
    """-x0 y0 + sum_i x_i y_i, float64."""
    x, y = x.double(), y.double()
    return -x[..., 0] * y[..., 0] + (x[..., 1:] * y[..., 1:]).sum(-1)


def ref_dist(xs, ys, c):
    """acosh(-c <x, y>_L) / sqrt(c) per row in float64: accurate away from the diagonal."""
    z = -c * ref_inner(ref_full(xs, c), ref_full(ys, c))
    return torch.acosh(z.clamp(min=1)) / math.sqrt(c)


def mp_dist(x, y, c):
    """acosh(-c <x, y>_L) / sqrt(c) of one pair of (float32 or float64) space vectors, in 40-digit arithmetic."""
    with mpmath.workdps(40):
        xs, ys, cm = [mpmath.mpf(float(v)) for v in x], [mpmath.mpf(float(v)) for v in y], mpmath.mpf(float(c))
        x0 = mpmath.sqrt(1 / cm + sum(v * v for v in xs))
        y0 = mpmath.sqrt(1 / cm + sum(v * v for v in ys))
        return float(mpmath.acosh(cm * (x0 * y0 - sum(a * b for a, b in zip(xs, ys)))) / mpmath.sqrt(cm))


def at_radius(r, c, d, seed):
    """A float64 space vector at scaled distance r from the origin (|x_s| = sinh(r) / sqrt(c)), random direction."""
    u = torch.randn(d, generator=gen(seed), dtype=torch.float64)
    return math.sinh(r) / math.sqrt(c) * u / u.norm()


def geoopt_lorentz(c):
    # a float64 k: geoopt would otherwise round 1/c to float32
    return geoopt.Lorentz(k=torch.tensor(1.0 / c, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# points and tangent vectors
# ---------------------------------------------------------------------------------------------
@SETTINGS
@given(dims, curvatures, st.sampled_from([torch.float64, torch.float32]))
def test_random_point_belongs(kd, c, dtype):
    k, d = kd
    M = Hyperboloid(c=c)
    torch.manual_seed(k * 100 + d)
    x = M.random(3, k, d + 1, dtype=dtype)
    assert isinstance(x, geoopt.ManifoldTensor) and x.shape == (3, k, d + 1) and x.dtype == dtype
    M.assert_check_point_on_manifold(x)
    # rounding of the form scales with c x_0^2
    err = (c * ref_inner(x, x) + 1).abs() / (c * x[..., 0].double() ** 2)
    assert float(err.max()) < 10 * torch.finfo(dtype).eps


@SETTINGS
@given(dims, curvatures, seeds)
def test_projx_belongs_and_is_idempotent(kd, c, seed):
    k, d = kd
    M = Hyperboloid(c=c)
    p = M.projx(space_points((4, k, d + 1), seed, 3.0))
    M.assert_check_point_on_manifold(p, atol=1e-10)
    torch.testing.assert_close(M.projx(p), p, atol=1e-12, rtol=1e-12)


@SETTINGS
@given(dims, curvatures, seeds)
def test_proju_is_tangent_and_idempotent(kd, c, seed):
    k, d = kd
    M = Hyperboloid(c=c)
    x = M.lift(space_points((4, k, d), seed))
    u = M.proju(x, space_points((4, k, d + 1), seed + 1))
    assert torch.allclose(ref_inner(x, u), torch.zeros(4, k, dtype=torch.float64), atol=1e-10)
    M.assert_check_vector_on_tangent(x, u)
    torch.testing.assert_close(M.proju(x, u), u)
    assert bool((M.inner(x, u) >= 0).all())  # the metric is positive on tangent vectors


def test_check_point_on_manifold_explains():
    M = Hyperboloid(c=2.0)
    x = M.origin(2, 3, 5, dtype=torch.float64)
    ok, reason = M.check_point_on_manifold(x * 1.1, explain=True)
    assert not ok and "c <x, x>_L = -1" in reason
    ok, reason = M.check_point_on_manifold(-x, explain=True)
    assert not ok and "positive time" in reason
    with pytest.raises(ValueError, match="c <x, x>_L"):
        M.assert_check_point_on_manifold(x * 1.1)


# ---------------------------------------------------------------------------------------------
# agreement with references
# ---------------------------------------------------------------------------------------------
@SETTINGS
@given(dims, curvatures, seeds)
def test_dist_matches_float64_formula(kd, c, seed):
    k, d = kd
    xs, ys = space_points((5, k, d), seed), space_points((5, k, d), seed + 1)
    torch.testing.assert_close(space_dist(xs, ys, c), ref_dist(xs, ys, c), atol=1e-10, rtol=1e-10)
    M = Hyperboloid(c=c)
    product = ref_dist(xs, ys, c).square().sum(-1).sqrt()
    torch.testing.assert_close(M.dist(M.lift(xs), M.lift(ys)), product, atol=1e-10, rtol=1e-10)


@SETTINGS
@given(st.integers(1, 8), curvatures, seeds)
def test_agrees_with_geoopt_lorentz_for_one_factor(d, c, seed):
    G, M = geoopt_lorentz(c), Hyperboloid(c=c)
    x = M.lift(space_points((6, 1, d), seed))
    y = M.lift(space_points((6, 1, d), seed + 1))
    u = M.proju(x, space_points((6, 1, d + 1), seed + 2, 0.5))
    torch.testing.assert_close(M.dist(x, y), G.dist(x[:, 0], y[:, 0]), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(M.expmap(x, u)[:, 0], G.expmap(x[:, 0], u[:, 0]), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(M.logmap(x, y)[:, 0], G.logmap(x[:, 0], y[:, 0]), atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(M.inner(x, u), G.inner(x[:, 0], u[:, 0]), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(M.proju(x, y)[:, 0], G.proju(x[:, 0], y[:, 0]), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(M.egrad2rgrad(x, y)[:, 0], G.egrad2rgrad(x[:, 0], y[:, 0]), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(M.expmap0(u)[:, 0], G.expmap0(torch.cat([0 * u[:, 0, :1], u[:, 0, 1:]], -1)),
                               atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(M.dist0(x)[:, 0], G.dist0(x[:, 0]), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("c", [0.5, 1.0, 4.0])
def test_low_precision_inputs_match_float64_formula(dtype, c):
    """16-bit inputs are computed in float32: compare with the float64 formula on the same (rounded) values."""
    xs, ys = space_points((7, 3, 16), 0, 0.4, dtype), space_points((9, 3, 16), 1, 0.4, dtype)
    ref = ref_dist(xs[:, None], ys[None], c)  # (7, 9, 3)
    pair = space_dist(xs[:, None], ys[None], c)
    grid = space_cdist(xs, ys, c).permute(1, 2, 0)
    assert pair.dtype == grid.dtype == torch.float32
    torch.testing.assert_close(pair.double(), ref, atol=2e-6, rtol=2e-6)
    torch.testing.assert_close(grid.double(), ref, atol=3e-6, rtol=3e-6)
    torch.testing.assert_close(space_logmap0(space_expmap0(xs, c), c).double(), xs.double(), atol=2e-6, rtol=2e-6)
    M = Hyperboloid(c=c)
    assert M.lift(xs).dtype == dtype and M.dist(M.lift(xs), M.lift(xs)).dtype == dtype


def test_distance_near_the_diagonal_is_accurate_in_float32():
    """acosh(-c <x, y>_L) gives ~5e-4 * x_0 here; the chord formula and cdist's recomputation do not."""
    xs = space_points((6, 4, 32), 3, 0.5, torch.float32)
    ys = xs + space_points((6, 4, 32), 4, 1e-4, torch.float32)
    ref = ref_dist(xs, ys, 1.0)
    torch.testing.assert_close(space_dist(xs, ys).double(), ref, atol=2e-7, rtol=1e-5)
    grid = space_cdist(xs, ys).diagonal(dim1=1, dim2=2).T
    torch.testing.assert_close(grid.double(), ref, atol=2e-7, rtol=1e-5)
    naive = torch.acosh((-lorentz_inner(Hyperboloid().lift(xs), Hyperboloid().lift(ys))).clamp(min=1))
    assert float((naive.double() - ref).abs().max()) > 1e-4  # the cancellation the test is about


def test_space_dist_far_pair_float32_issue_case():
    # c = 1, x = [sinh 0.3, 0], y = [0, sinh 11]: the Minkowski chord put space_dist 8.5e-5 off (11.0434017)
    x = torch.tensor([[[math.sinh(0.3), 0.0]]])
    y = torch.tensor([[[0.0, math.sinh(11.0)]]])
    ref = mp_dist(x[0, 0], y[0, 0], 1.0)  # 11.044340748 for the float64 inputs; these are float32
    assert abs(ref - 11.044340748) < 1e-6
    got = space_dist(x, y)
    assert got.dtype == torch.float32 and abs(float(got) - ref) <= 1e-6 * ref
    M = Hyperboloid()
    assert abs(float(M.dist(M.lift(x), M.lift(y))) - ref) <= 1e-6 * ref
    assert abs(float(space_cdist(x, y)) - ref) <= 1e-6 * ref


@settings(max_examples=60, deadline=None)
@given(st.floats(0.0, 2.0), st.floats(3.0, 12.0), st.integers(1, 6), curvatures, seeds)
def test_space_dist_float32_near_far_pairs_within_1e_6(r_near, r_far, d, c, seed):
    """A point near the origin and one far out, float32, against the exact distance of the same float32 inputs."""
    x, y = at_radius(r_near, c, d, seed).float(), at_radius(r_far, c, d, seed + 1).float()
    ref = mp_dist(x, y, c)
    for a, b in ((x, y), (y, x)):
        got = float(space_dist(a[None, None], b[None, None], c))
        assert abs(got - ref) <= 1e-6 * ref
        assert abs(float(space_cdist(a[None, None], b[None, None], c)) - ref) <= 2e-6 * ref


@settings(max_examples=40, deadline=None)
@given(dims, curvatures, seeds, st.sampled_from([0.1, 1.0, 3.0]))
def test_space_dist_is_the_diagonal_of_space_cdist_in_float32(kd, c, seed, scale):
    k, d = kd
    xs = space_points((6, k, d), seed, scale, torch.float32)
    ys = torch.cat([xs[:2] + space_points((2, k, d), seed + 2, 1e-3 * scale, torch.float32),
                    space_points((4, k, d), seed + 1, scale, torch.float32)])
    ref = torch.tensor([[mp_dist(xs[i, b], ys[i, b], c) for b in range(k)] for i in range(6)], dtype=torch.float64)
    pair = space_dist(xs, ys, c).double()
    diag = space_cdist(xs, ys, c).diagonal(dim1=1, dim2=2).T.double()
    torch.testing.assert_close(pair, ref, atol=1e-30, rtol=1e-6)
    torch.testing.assert_close(diag, pair, atol=1e-30, rtol=3e-6)


# ---------------------------------------------------------------------------------------------
# invariants
# ---------------------------------------------------------------------------------------------
@SETTINGS
@given(dims, curvatures, seeds)
def test_dist_is_symmetric_and_cdist_is_the_pairwise_loop(kd, c, seed):
    k, d = kd
    M = Hyperboloid(c=c)
    x, y = M.lift(space_points((4, k, d), seed)), M.lift(space_points((3, k, d), seed + 1))
    torch.testing.assert_close(M.dist(x[:, None], y[None]), M.dist(y[None], x[:, None]))
    torch.testing.assert_close(M.cdist(x, y), M.dist(x[:, None], y[None]), atol=1e-10, rtol=1e-10)


@SETTINGS
@given(dims, curvatures, seeds, st.sampled_from([torch.float64, torch.float32]))
def test_dist_is_zero_on_the_diagonal_with_finite_gradient(kd, c, seed, dtype):
    k, d = kd
    xs = space_points((4, k, d), seed, 2.0, dtype).requires_grad_()
    assert float(space_dist(xs, xs, c).detach().abs().max()) == 0.0
    diag = space_cdist(xs, xs.detach(), c).detach().diagonal(dim1=1, dim2=2)
    assert float(diag.abs().max()) == 0.0
    (space_dist(xs, xs.detach(), c).sum() + space_cdist(xs, xs.detach(), c).sum()).backward()
    assert torch.isfinite(xs.grad).all()
    M = Hyperboloid(c=c)
    x = M.lift(xs.detach()).requires_grad_()
    M.dist(x, x.detach()).sum().backward()
    assert torch.isfinite(x.grad).all()


@SETTINGS
@given(dims, curvatures, seeds)
def test_triangle_inequality(kd, c, seed):
    k, d = kd
    M = Hyperboloid(c=c)
    x, y, z = (M.lift(space_points((8, k, d), seed + i, 1.5)) for i in range(3))
    assert bool((M.dist(x, z) <= M.dist(x, y) + M.dist(y, z) + 1e-9).all())
    # the lorentz similarity's sum of factor distances is a metric too
    s = lambda a, b: space_dist(a[..., 1:], b[..., 1:], c).sum(-1)  # noqa: E731
    assert bool((s(x, z) <= s(x, y) + s(y, z) + 1e-9).all())


@SETTINGS
@given(dims, curvatures, seeds)
def test_exp_log_round_trip_at_the_origin(kd, c, seed):
    k, d = kd
    u = space_points((5, k, d), seed, 2.0)
    torch.testing.assert_close(space_logmap0(space_expmap0(u, c), c), u, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(space_dist0(space_expmap0(u, c), c), u.norm(dim=-1), atol=1e-10, rtol=1e-10)
    M = Hyperboloid(c=c)
    full = torch.cat([torch.zeros(5, k, 1, dtype=torch.float64), u], -1)
    x = M.expmap0(full)
    M.assert_check_point_on_manifold(x, atol=1e-9)
    torch.testing.assert_close(M.logmap0(x), full, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(M.dist(M.origin(5, k, d + 1, dtype=torch.float64), x),
                               u.norm(dim=(-2, -1)), atol=1e-10, rtol=1e-10)


@SETTINGS
@given(dims, curvatures, seeds)
def test_exp_log_round_trip_and_dist_is_log_norm(kd, c, seed):
    k, d = kd
    M = Hyperboloid(c=c)
    x, y = M.lift(space_points((4, k, d), seed)), M.lift(space_points((4, k, d), seed + 1))
    v = M.logmap(x, y)
    M.assert_check_vector_on_tangent(x, v)
    torch.testing.assert_close(M.expmap(x, v), y, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(M.norm(x, v), M.dist(x, y), atol=1e-9, rtol=1e-9)
    assert float(M.logmap(x, x).abs().max()) == 0.0


def test_expmap0_jacobian_is_identity_at_zero():
    u = torch.zeros(2, 3, 4, dtype=torch.float64, requires_grad=True)
    jac = torch.autograd.functional.jacobian(lambda t: space_expmap0(t, 0.5), u)
    torch.testing.assert_close(jac.reshape(24, 24), torch.eye(24, dtype=torch.float64))


def test_max_radius_keeps_direction_and_caps_length():
    u = torch.tensor([[[30.0, 40.0]]])  # |u| = 50
    out = space_expmap0(u, 1.0, max_radius=math.asinh(2.0**15))
    torch.testing.assert_close(out.norm(), torch.tensor(2.0**15), rtol=1e-6, atol=0)
    torch.testing.assert_close(out / out.norm(), u / u.norm())


def test_gradcheck_float64():
    xs = space_points((3, 2, 3), 0).requires_grad_()
    ys = space_points((4, 2, 3), 1).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: space_cdist(a, b, 0.7), (xs, ys))
    assert torch.autograd.gradcheck(lambda a, b: space_dist(a, b, 0.7), (xs, ys[:3]))
    c = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, cc: space_expmap0(a, cc), (xs, c))


def test_gradcheck_float64_with_a_learnable_curvature_and_second_derivatives():
    xs = space_points((3, 2, 3), 2).requires_grad_()
    ys = space_points((3, 2, 3), 3, 2.0).requires_grad_()
    c = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, cc: space_dist(a, b, cc), (xs, ys, c))
    assert torch.autograd.gradgradcheck(lambda a, b, cc: space_dist(a, b, cc), (xs, ys, c))
    assert torch.autograd.gradcheck(lambda a, b, cc: space_cdist(a, b, cc), (xs, ys, c))


def test_gradient_at_the_origin_is_the_true_one():
    """The distance is smooth in x at the origin (for y elsewhere): the gradient there is that of the acosh
    formula, not a subgradient of the |x| kinks in the law-of-cosines terms."""
    ys = space_points((4, 2, 3), 4, 1.5)
    for c in (0.5, 2.0):
        xs = torch.zeros(4, 2, 3, dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(space_dist(xs, ys, c).sum(), xs)
        xr = torch.zeros(4, 2, 3, dtype=torch.float64, requires_grad=True)
        (ref,) = torch.autograd.grad(ref_dist(xr, ys, c).sum(), xr)
        torch.testing.assert_close(grad, ref, atol=1e-12, rtol=1e-10)
        assert float(ref.abs().min()) > 0


# ---------------------------------------------------------------------------------------------
# errors and optimizer integration
# ---------------------------------------------------------------------------------------------
def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="`c`.*positive"):
        Hyperboloid(c=0.0)
    with pytest.raises(ValueError, match="`k` must be None or an int"):
        Hyperboloid(k=0)
    M = Hyperboloid(k=2, d=3)
    with pytest.raises(ValueError, match=r"`x` must have shape \(\.\.\., 2, 4\).*\(5, 2, 3\)"):
        M.projx(torch.randn(5, 2, 3))
    with pytest.raises(ValueError, match="must be finite"):
        M.projx(torch.full((5, 2, 4), float("nan")))
    with pytest.raises(ValueError, match=r"`x` must have shape \(n, k, d\)"):
        space_cdist(torch.randn(2, 3), torch.randn(2, 3))
    with pytest.raises(ValueError, match="same \\(k, d\\)"):
        space_cdist(torch.randn(2, 3, 4), torch.randn(2, 3, 5))


def test_riemannian_adam_converges_to_a_target():
    M = HyperboloidExact(c=0.5)
    target = M.lift(space_points((2, 3), 5, 1.0))
    p = geoopt.ManifoldParameter(M.origin(2, 4, dtype=torch.float64), manifold=M)
    opt = geoopt.optim.RiemannianAdam([p], lr=0.1)
    for _ in range(300):
        opt.zero_grad()
        M.dist2(p, target).sum().backward()
        opt.step()
    assert float(M.dist(p, target).max()) < 1e-3
    M.assert_check_point_on_manifold(p.detach(), atol=1e-8)


# ---------------------------------------------------------------------------------------------
# NaN and Inf propagate through every entry point (issue 19: NaN was scored as distance 0)
# ---------------------------------------------------------------------------------------------
def _full_points(seed):
    M = Hyperboloid(c=0.7)
    x = M.lift(space_points((3, 2, 4), seed, dtype=torch.float32))
    u = M.proju(x, space_points((3, 2, 5), seed + 1, 0.3, torch.float32))
    return M, x, u


# name -> (function of (x, y, u) with x, y points and u a tangent vector at x, in full coordinates, the
# arguments it reads, and how row 0 of factor 0 shows in the output: "row" (..., k, w), "factor" (..., k),
# "batch" (...), "grid" (n, m) or (k, n, m) with x's row first)
HYPERBOLOID_ENTRY_POINTS = {
    "lift": (lambda M, x, y, u: M.lift(x[..., 1:]), "x", "row"),
    "proju": (lambda M, x, y, u: M.proju(x, u), "xu", "row"),
    "egrad2rgrad": (lambda M, x, y, u: M.egrad2rgrad(x, u), "xu", "row"),
    "inner": (lambda M, x, y, u: M.inner(x, u, y), "uy", "batch"),
    "norm": (lambda M, x, y, u: M.norm(x, u), "u", "batch"),
    "expmap": (lambda M, x, y, u: M.expmap(x, u), "xu", "row"),
    "retr": (lambda M, x, y, u: M.retr(x, u), "xu", "row"),
    "exact_retr": (lambda M, x, y, u: HyperboloidExact(c=M.c).retr(x, u), "xu", "row"),
    "logmap": (lambda M, x, y, u: M.logmap(x, y), "xy", "row"),
    "dist": (lambda M, x, y, u: M.dist(x, y), "xy", "batch"),
    "dist2": (lambda M, x, y, u: M.dist2(x, y), "xy", "batch"),
    "cdist": (lambda M, x, y, u: M.cdist(x, y), "x", "grid"),
    "expmap0": (lambda M, x, y, u: M.expmap0(u), "u", "row"),
    "logmap0": (lambda M, x, y, u: M.logmap0(x), "x", "row"),
    "dist0": (lambda M, x, y, u: M.dist0(x), "x", "factor"),
    "transp": (lambda M, x, y, u: M.transp(y, x, u), "xu", "row"),
    "lorentz_inner": (lambda M, x, y, u: lorentz_inner(x, y), "xy", "factor"),
    "space_dist": (lambda M, x, y, u: space_dist(x[..., 1:], y[..., 1:], M.c), "xy", "factor"),
    "space_dist0": (lambda M, x, y, u: space_dist0(x[..., 1:], M.c), "x", "factor"),
    "space_expmap0": (lambda M, x, y, u: space_expmap0(u[..., 1:], M.c), "u", "row"),
    "space_logmap0": (lambda M, x, y, u: space_logmap0(x[..., 1:], M.c), "x", "row"),
    "space_cdist": (lambda M, x, y, u: space_cdist(x[..., 1:], y[..., 1:], M.c), "x", "grid"),
    "space_cdist_summed": (lambda M, x, y, u: space_cdist(x[..., 1:], y[..., 1:], M.c, sum_factors=True), "x",
                           "grid"),
}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("coordinate", [0, 2], ids=["time", "space"])
@pytest.mark.parametrize("name", sorted(HYPERBOLOID_ENTRY_POINTS))
def test_non_finite_input_propagates_through_every_entry_point(name, coordinate, bad):
    fn, reads, layout = HYPERBOLOID_ENTRY_POINTS[name]
    for arg in reads:
        M, x, u = _full_points(0)
        y = M.lift(space_points((3, 2, 4), 9, dtype=torch.float32))
        tensors = {"x": x, "y": y, "u": u}
        if coordinate == 0 and (name == "lift" or name.startswith("space_")):
            continue  # these read space components only
        if arg == "u" and name in ("expmap0", "space_expmap0") and coordinate == 0:
            continue  # a tangent vector at the origin has no time part: documented as ignored
        tensors[arg] = tensors[arg].clone()
        tensors[arg][0, 0, coordinate] = bad
        out = fn(M, tensors["x"], tensors["y"], tensors["u"])
        assert_point_zero_non_finite(out, "grid_y" if layout == "grid" and arg == "y" else layout, f"{name}({arg})")


def test_projx_refuses_non_finite_input():
    M = Hyperboloid()
    x = torch.randn(2, 3, 4)
    x[0, 0, 1] = math.nan
    with pytest.raises(ValueError, match="`x` must be finite"):
        M.projx(x)


def test_space_dist_with_one_nan_token_is_nan_as_cdist_is():
    # the issue's reproduction: space_dist scored the NaN token as distance 0
    x = torch.randn(2, 3, 4, generator=gen(0))
    y = torch.randn(2, 3, 4, generator=gen(1))
    y[0, 0] = math.nan
    out = space_dist(x, y)
    assert bool(torch.isnan(out[0, 0])) and bool(torch.isfinite(out.flatten()[1:]).all())
    assert bool(torch.isnan(space_cdist(x, y)[0, 0, 0]))
