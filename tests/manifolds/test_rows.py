"""Tests for manifold_align.manifolds.rows: the row-wise helpers both manifolds share, against formulas written
out here (float64 loops), with the one NaN rule and the near-pair kernel's chunking and gradients."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from manifold_align.manifolds import Hyperboloid, Oblique
from manifold_align.manifolds import rows
from manifold_align.manifolds.rows import flat_indices, recompute_pairs, row_dot, row_norm, safe_sqrt

SETTINGS = settings(max_examples=20, deadline=None)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=gen(seed), dtype=dtype)


# ---- row_dot, row_norm ---------------------------------------------------------------------------------------
@SETTINGS
@given(st.integers(1, 4), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_row_dot_and_norm_are_the_loop_over_rows(k, d, seed):
    a, b = rand(3, k, d, seed=seed), rand(3, k, d, seed=seed + 1)
    dot, norm = row_dot(a, b), row_norm(a)
    assert dot.shape == norm.shape == (3, k, 1)
    for i in range(3):
        for j in range(k):
            assert float(dot[i, j, 0]) == pytest.approx(sum(float(a[i, j, t] * b[i, j, t]) for t in range(d)))
            assert float(norm[i, j, 0]) == pytest.approx(math.sqrt(sum(float(a[i, j, t]) ** 2 for t in range(d))))


def test_row_dot_runs_outside_autocast():
    a, b = rand(2, 3, 8, dtype=torch.float32), rand(2, 3, 8, seed=1, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = row_dot(a, b)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, (a * b).sum(-1, keepdim=True))


# ---- safe_sqrt: one NaN rule ----------------------------------------------------------------------------------
def test_safe_sqrt_values_and_the_nan_rule():
    t = torch.tensor([4.0, 0.0, -1e-9, math.nan, math.inf, -math.inf])
    out = safe_sqrt(t)
    assert out[:3].tolist() == [2.0, 0.0, 0.0]
    assert math.isnan(out[3]) and out[4] == math.inf and math.isnan(out[5])  # non-finite never comes out finite


def test_safe_sqrt_gradient_is_zero_at_and_below_zero_and_exact_above():
    t = torch.tensor([0.0, -2.0, 4.0], requires_grad=True)
    safe_sqrt(t).sum().backward()
    assert t.grad.tolist() == [0.0, 0.0, 0.25]


def test_both_manifolds_use_the_one_safe_sqrt():
    # the distance a manifold reports for NaN input is NaN, on both (they each had their own rule before)
    x = torch.full((1, 2, 3), math.nan)
    y = torch.ones(1, 2, 3) / math.sqrt(3)
    assert bool(torch.isnan(Oblique().cdist(x, y)).all())
    assert bool(torch.isnan(Hyperboloid().cdist(x, Hyperboloid().lift(y)[..., :3])).all())
    assert bool(torch.isnan(Hyperboloid().norm(x, x)).all())


# ---- the near-pair kernel ------------------------------------------------------------------------------------
def euclidean_pair(a, b):
    return torch.linalg.vector_norm(a - b, dim=-1)


def test_flat_indices():
    mask = torch.tensor([[[False, True], [True, False]]])
    assert flat_indices(mask).tolist() == [1, 2]
    assert flat_indices(torch.zeros(2, 3, 4, dtype=torch.bool)) is None


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_recompute_pairs_replaces_exactly_the_flagged_entries(k, n, m, d, seed):
    x, y = rand(n, k, d, seed=seed), rand(m, k, d, seed=seed + 1)
    grid = torch.full((k, n, m), -1.0, dtype=torch.float64)
    mask = torch.rand(k, n, m, generator=gen(seed + 2)) < 0.5
    out = recompute_pairs(grid, flat_indices(mask), x, y, euclidean_pair)
    for b in range(k):
        for i in range(n):
            for j in range(m):
                expected = float((x[i, b] - y[j, b]).norm()) if mask[b, i, j] else -1.0
                assert float(out[b, i, j]) == pytest.approx(expected, abs=1e-12)
    assert bool((grid == -1).all())  # the input grid is not modified


def test_recompute_pairs_without_pairs_returns_the_grid_itself():
    grid = torch.zeros(2, 3, 4)
    assert recompute_pairs(grid, None, torch.zeros(3, 2, 5), torch.zeros(4, 2, 5), euclidean_pair) is grid


@pytest.mark.parametrize("chunk", [1, 5, 12, None])
def test_recompute_pairs_chunks_and_gradients_agree(chunk):
    """Chunked and checkpointed (x requires grad) or not, the values and the gradients are the same."""
    x, y = rand(6, 2, 4, seed=3), rand(5, 2, 4, seed=4)
    grid_x = rand(2, 6, 5, seed=5)
    mask = torch.rand(2, 6, 5, generator=gen(6)) < 0.4
    flat = flat_indices(mask)

    def run(chunk_values, track):
        xs, ys, g = (t.clone().requires_grad_(track) for t in (x, y, grid_x))
        out = recompute_pairs(g, flat, xs, ys, euclidean_pair, chunk=chunk_values)
        if not track:
            return out, None
        grads = torch.autograd.grad((out * torch.arange(out.numel()).view_as(out)).sum(), (xs, ys, g))
        return out, grads

    ref, ref_grads = run(10**9, True)
    out, grads = run(chunk, True)
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    plain, _ = run(chunk, False)
    torch.testing.assert_close(plain, ref, atol=0, rtol=0)
    assert float(grads[2][mask].abs().max()) == 0.0  # replaced entries take no gradient from the grid


def test_recompute_pairs_gradcheck_through_a_closed_over_parameter():
    x, y = rand(3, 1, 3, seed=7).requires_grad_(), rand(4, 1, 3, seed=8)
    c = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    flat = torch.tensor([0, 5, 11])

    def f(xs, cc):
        return recompute_pairs(torch.zeros(1, 3, 4, dtype=torch.float64), flat, xs, y,
                               lambda a, b: cc * euclidean_pair(a, b), chunk=3)

    assert torch.autograd.gradcheck(f, (x, c))


def test_default_chunk_follows_the_module_constant(monkeypatch):
    calls = []

    def pair(a, b):
        calls.append(a.shape[0])
        return euclidean_pair(a, b)

    monkeypatch.setattr(rows, "PAIR_CHUNK", 8)  # 2 pairs per chunk at w = 4
    recompute_pairs(torch.zeros(1, 3, 3), flat_indices(torch.ones(1, 3, 3, dtype=torch.bool)),
                    rand(3, 1, 4, dtype=torch.float32), rand(3, 1, 4, dtype=torch.float32), pair)
    assert calls == [2, 2, 2, 2, 1]


# ---- the shape checks --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("manifold, good, bad, expected", [
    (Oblique(k=2, d=3), (5, 2, 3), (5, 2, 4), r"\(\.\.\., 2, 3\)"),
    (Hyperboloid(k=2, d=3), (5, 2, 4), (5, 2, 3), r"\(\.\.\., 2, 4\)"),
    (Oblique(), (4, 1, 2), (4, 3, 1), r"\(\.\.\., k, d\)"),
    (Hyperboloid(), (4, 1, 2), (4, 3, 1), r"\(\.\.\., k, d \+ 1\)"),
])
def test_shape_checks_come_in_pairs(manifold, good, bad, expected):
    assert manifold.check_point(torch.zeros(good))
    ok, reason = manifold.check_point(torch.zeros(bad), explain=True)
    assert not ok and re.search(expected, reason) and str(bad).replace(" ", "") in reason.replace(" ", "")
    with pytest.raises(ValueError, match=expected):
        manifold.assert_check_point(torch.zeros(bad))
    x = torch.zeros(good)
    x[0, 0, 0] = math.nan
    assert manifold.check_point(x, explain=True) == (False, "`x` has non-finite values (NaN or Inf)")
    with pytest.raises(ValueError, match="`x` must be finite"):
        manifold.assert_check_point(x)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        manifold.dist(good, good)
    with pytest.raises(ValueError, match="floating"):
        manifold.dist(torch.zeros(good, dtype=torch.long), torch.zeros(good, dtype=torch.long))
