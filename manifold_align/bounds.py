"""Bounded scalar parameters: the one clamp rule of temperatures and geometry parameters.

A bounded parameter (a learnable scale's log, a curvature's log) is read through :func:`clamped`: the value
never leaves ``[lo, hi]``, and its gradient is kept except where it would push the parameter further out at a
bound. Plain ``clamp`` gives gradient 0 at and beyond the bounds, so a parameter sitting on a cap could never
come back. The rule is applied to the parameter's *total* gradient of a backward pass (a hook on the parameter),
not to each use: a parameter read several times in one loss (the curvature lifts both modalities, scores them
and shapes the entailment cone) must be judged on the sum, or the inward parts of opposite uses add up to a step
the total gradient forbids.
"""

from __future__ import annotations

import weakref

import torch

__all__ = ["clamped"]

# id(param) -> (weak reference to param, (lo, hi), hook handle); the weak reference tells a live parameter from a
# new one that reuses a freed id, and a deep copy of a module (new parameters, no hooks) gets its own hook
_RULES: dict[int, tuple[weakref.ref, tuple[float, float], torch.utils.hooks.RemovableHandle]] = {}


class _StraightThroughClamp(torch.autograd.Function):
    """``x.clamp(lo, hi)`` with the identity as gradient: the hook of :func:`clamped` decides what passes."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:  # noqa: D102
        return x.clamp(min=lo, max=hi)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        return grad, None, None


def _inward_only(param: torch.Tensor, lo: float, hi: float):
    def rule(grad: torch.Tensor) -> torch.Tensor:
        x = param.detach()
        # a descent step moves by -grad: at the upper bound it may only go down (grad > 0), at the lower only up
        keep = ((x > lo) & (x < hi)) | ((x >= hi) & (grad > 0)) | ((x <= lo) & (grad < 0))
        return grad * keep

    return rule


def _ensure_rule(param: torch.Tensor, lo: float, hi: float) -> None:
    entry = _RULES.get(id(param))
    if entry is not None and entry[0]() is param and entry[1] == (lo, hi):
        return
    if entry is not None and entry[0]() is param:
        entry[2].remove()
    handle = param.register_hook(_inward_only(param, lo, hi))
    key = id(param)
    _RULES[key] = (weakref.ref(param, lambda _, key=key: _RULES.pop(key, None)), (lo, hi), handle)


def clamped(param: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``param`` clamped to ``[lo, hi]``, with the inward-only gradient rule on ``param``'s total gradient.

    Parameters
    ----------
    param : torch.Tensor
        A leaf tensor (an ``nn.Parameter``); when it does not require grad, a plain clamp. A non-leaf tensor that
        requires grad (a stand-in for a parameter, as the tiled losses' backward reads one per tile) gets the
        straight-through clamp without a rule: the rule belongs to the parameter it stands for, on its total.
    lo, hi : float
        The bounds (``-inf`` / ``inf`` for none), ``lo <= hi``.

    Returns
    -------
    torch.Tensor, same shape: the clamped value, differentiable.
    """
    if not param.requires_grad:
        return param.clamp(min=lo, max=hi)
    if param.is_leaf:
        _ensure_rule(param, lo, hi)
    return _StraightThroughClamp.apply(param, lo, hi)
