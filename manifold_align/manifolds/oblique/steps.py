"""The optimizers' steps on an Oblique parameter, in place (what :meth:`Oblique.inplace_steps` hands out).

The optimizers' generic manifold path calls geoopt's API (``egrad2rgrad``, ``component_inner``,
``retr_transp``), and each call returns new tensors of the parameter's size. On a CPU every such
temporary of a few MB is fresh memory from the operating system (page faults cost more than the
arithmetic); on a GPU each is one more kernel launch. On :class:`~manifold_align.manifolds.Oblique`
(projection retraction, transport by projection) the operations are short enough to write out in
place: a step is a few passes over the parameter, its state and one scratch buffer, with no
parameter-sized temporaries. Row ``b`` of a tensor of shape ``(..., k, d)`` is one sphere.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch

from ..rows import row_dot

__all__ = [
    "OBLIQUE_STEPS",
    "STEP_DTYPES",
    "InplaceSteps",
    "adam_step_",
    "can_step_in_place",
    "retract_",
    "riemannian_grad",
    "transport_",
]


def riemannian_grad(point: torch.Tensor, grad: torch.Tensor, *, out: torch.Tensor) -> torch.Tensor:
    """``out = g - <x_b, g_b> x_b`` (egrad2rgrad); ``grad`` is only read. Returns ``out``."""
    return torch.addcmul(grad, point, row_dot(point, grad), value=-1, out=out)


def retract_(moved: torch.Tensor) -> torch.Tensor:
    """The projection retraction's last half: ``x + u``, already in ``moved``, divided by its row norms.

    For a tangent ``u`` at a unit-row ``x``, ``|x_b + u_b|^2 = 1 + |u_b|^2 >= 1``: no zero rows.
    """
    return moved.div_(torch.linalg.vector_norm(moved, dim=-1, keepdim=True))


def transport_(point: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """Transport by projection onto the tangent space at ``point``: ``v -= <x_b, v_b> x_b``."""
    return vector.addcmul_(point, row_dot(point, vector), value=-1)


def adam_step_(
    point: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    max_exp_avg_sq: torch.Tensor | None,
    scratch: torch.Tensor,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    step: int,
) -> None:
    """One Riemannian Adam step on OB(d, k), updating ``point`` and the moments in place.

    The arithmetic of the generic path, with the Oblique operations written out::

        r   = g - <x_b, g_b> x_b                          egrad2rgrad
        m   = beta1 m + (1 - beta1) r
        v   = beta2 v + (1 - beta2) |r_b|^2               component_inner: constant along row b
        v^  = max(v^, v)                                  AMSGrad only
        u   = -lr (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
        x   = (x + u) / |x + u|                           retraction
        m   = m - <x_b, m_b> x_b                          transport onto the new tangent space

    Parameters
    ----------
    point : torch.Tensor, shape (..., k, d)
        The parameter, unit rows; float32 or float64, contiguous.
    grad : torch.Tensor, shape (..., k, d)
        Euclidean gradient, same dtype; read only.
    exp_avg, exp_avg_sq : torch.Tensor, shape (..., k, d)
        First and second moments, same dtype. ``exp_avg_sq`` is constant along each row, as
        ``component_inner`` makes it, so the denominator is read off its first column.
    max_exp_avg_sq : torch.Tensor or None, shape (..., k, d)
        AMSGrad's running maximum of ``exp_avg_sq``; None without AMSGrad.
    scratch : torch.Tensor, shape (..., k, d)
        Work space, overwritten.
    lr, beta1, beta2, eps : float
    step : int
        This step's count, starting at 1 (bias corrections).
    """
    rgrad = riemannian_grad(point, grad, out=scratch)
    exp_avg.lerp_(rgrad, 1 - beta1)
    rgrad_squared = torch.linalg.vector_norm(rgrad, dim=-1, keepdim=True).square_()
    exp_avg_sq.lerp_(rgrad_squared.expand_as(exp_avg_sq), 1 - beta2)
    second = exp_avg_sq
    if max_exp_avg_sq is not None:
        second = torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
    denom = (second[..., :1] / (1 - beta2**step)).sqrt_().add_(eps)  # (..., k, 1)
    point.addcmul_(exp_avg, denom.reciprocal_().mul_(-lr / (1 - beta1**step)))
    transport_(retract_(point), exp_avg)


class InplaceSteps(NamedTuple):
    """The in-place step functions a manifold hands to :mod:`manifold_align.optim` (see ``inplace_steps``).

    Attributes
    ----------
    riemannian_grad : callable ``(point, grad, *, out) -> out``
        The Riemannian gradient written into ``out``.
    retract_ : callable ``(moved) -> moved``
        The retraction's last half on ``x + u``, already in ``moved``, in place.
    transport_ : callable ``(point, vector) -> vector``
        Transport ``vector`` onto the tangent space at ``point`` (the new point), in place.
    adam_step_ : callable
        One Riemannian Adam step, with the signature of :func:`adam_step_`.
    """

    riemannian_grad: Callable[..., torch.Tensor]
    retract_: Callable[[torch.Tensor], torch.Tensor]
    transport_: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    adam_step_: Callable[..., None]


#: The steps of :class:`~manifold_align.manifolds.Oblique` (projection retraction, transport by projection)
OBLIQUE_STEPS = InplaceSteps(riemannian_grad, retract_, transport_, adam_step_)

#: dtypes the in-place steps handle (16-bit parameters keep float32 state: the generic path)
STEP_DTYPES = (torch.float32, torch.float64)


def can_step_in_place(param: torch.Tensor) -> bool:
    """Whether ``param`` suits the in-place steps: float32 or float64, contiguous, with a dense gradient
    of the same dtype and shape."""
    grad: Optional[torch.Tensor] = param.grad
    return (param.dtype in STEP_DTYPES and param.is_contiguous() and grad is not None and not grad.is_sparse
            and grad.dtype == param.dtype and grad.shape == param.shape)
