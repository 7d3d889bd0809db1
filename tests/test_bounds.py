"""manifold_align.bounds.clamped: the value stays in [lo, hi]; the gradient is kept except where a descent step
would push the parameter further out at a bound, judged on the parameter's total gradient of a backward pass."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from manifold_align.bounds import clamped


def _param(value):
    return torch.nn.Parameter(torch.tensor(value, dtype=torch.float64))


def _grad(param, loss_of):
    param.grad = None
    loss_of(param).backward()
    return param.grad.item()


@pytest.mark.parametrize("value, expected", [(-3.0, -1.0), (0.5, 0.5), (4.0, 2.0)])
def test_the_value_is_clamped(value, expected):
    assert clamped(_param(value), -1.0, 2.0).item() == expected


@pytest.mark.parametrize("value", [0.5, -0.99, 1.99])
@pytest.mark.parametrize("slope", [3.0, -3.0])
def test_inside_the_range_the_gradient_passes(value, slope):
    p = _param(value)
    assert _grad(p, lambda q: slope * clamped(q, -1.0, 2.0)) == slope


@pytest.mark.parametrize("value", [2.0, 5.0])
def test_at_or_above_the_upper_bound_only_an_inward_gradient_passes(value):
    p = _param(value)
    # loss = 3 q: descent lowers q, back inside -> kept; loss = -3 q: descent raises q, further out -> 0
    assert _grad(p, lambda q: 3.0 * clamped(q, -1.0, 2.0)) == 3.0
    assert _grad(p, lambda q: -3.0 * clamped(q, -1.0, 2.0)) == 0.0


@pytest.mark.parametrize("value", [-1.0, -4.0])
def test_at_or_below_the_lower_bound_only_an_inward_gradient_passes(value):
    p = _param(value)
    assert _grad(p, lambda q: -3.0 * clamped(q, -1.0, 2.0)) == -3.0
    assert _grad(p, lambda q: 3.0 * clamped(q, -1.0, 2.0)) == 0.0


def test_the_rule_is_applied_once_to_the_total_of_several_uses():
    """Two reads with opposite inward / outward parts: per-read clamping would keep +3 (an inward part alone);
    the total, 3 - 5 = -2, points outward at the upper bound, so the rule gives 0."""
    p = _param(2.0)
    assert _grad(p, lambda q: 3.0 * clamped(q, -1.0, 2.0) - 5.0 * clamped(q, -1.0, 2.0)) == 0.0
    # the total points inward: all of it passes
    assert _grad(p, lambda q: 5.0 * clamped(q, -1.0, 2.0) - 3.0 * clamped(q, -1.0, 2.0)) == 2.0
    # a use outside clamped() counts towards the total too (the hook sits on the parameter)
    assert _grad(p, lambda q: -3.0 * clamped(q, -1.0, 2.0) + 4.0 * q) == 1.0


def test_the_rule_follows_the_parameter_not_a_stale_copy():
    p = _param(2.0)
    clamped(p, -1.0, 2.0)
    q = copy.deepcopy(p)  # a deep copy (a model copied for EMA, say) has no hook of its own yet
    assert _grad(q, lambda x: -3.0 * clamped(x, -1.0, 2.0)) == 0.0
    assert _grad(p, lambda x: -3.0 * clamped(x, -1.0, 2.0)) == 0.0
    # the parameter moved inside by an optimizer step: the same gradient now passes
    with torch.no_grad():
        p.fill_(1.0)
    assert _grad(p, lambda x: -3.0 * clamped(x, -1.0, 2.0)) == -3.0


def test_new_bounds_replace_the_old_rule():
    p = _param(2.0)
    assert _grad(p, lambda q: -3.0 * clamped(q, -1.0, 2.0)) == 0.0
    assert _grad(p, lambda q: -3.0 * clamped(q, -1.0, 3.0)) == -3.0  # 2 is inside [-1, 3]: one rule, the new one


def test_infinite_bounds_and_tensors_without_gradient():
    p = _param(50.0)
    assert _grad(p, lambda q: -2.0 * clamped(q, -math.inf, 0.0)) == 0.0
    frozen = torch.tensor(5.0)
    assert clamped(frozen, -1.0, 2.0).item() == 2.0 and not clamped(frozen, -1.0, 2.0).requires_grad


def test_the_learnable_temperature_uses_the_rule():
    from manifold_align import get_temperature

    temperature = get_temperature("learnable", init=0.01, max_scale=50.0)  # init scale 100: above the cap
    assert temperature.scale().item() == pytest.approx(50.0)
    (-temperature.scale()).backward()  # wants a larger scale: outward, blocked
    assert temperature.log_scale.grad.item() == 0.0
    temperature.log_scale.grad = None
    temperature.scale().backward()  # wants a smaller scale: inward, passes
    assert temperature.log_scale.grad.item() > 0
