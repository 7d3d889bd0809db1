"""RiemannianAdamW's step on an Oblique parameter, in place.

The optimizer's generic manifold path calls geoopt's API (``egrad2rgrad``, ``component_inner``,
``retr_transp``), and each call returns new tensors of the parameter's size. On a CPU every such
temporary of a few MB is fresh memory from the operating system (page faults cost more than the
arithmetic); on a GPU each is one more kernel launch. On :class:`~manifold_align.manifolds.Oblique`
(projection retraction, transport by projection) the same step is ten passes over the parameter, its
two moments and one scratch buffer, with no full-size temporaries.
"""

from __future__ import annotations

import torch

__all__ = ["oblique_adam_step_"]


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., k, d), (..., k, d) -> (..., k, 1) row inner products, without an (..., k, d) temporary."""
    return torch.einsum("...d,...d->...", a, b).unsqueeze_(-1)


def oblique_adam_step_(
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

    The arithmetic of the generic path, with the Oblique operations written out (row ``b`` of each
    tensor is one sphere)::

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
    torch.addcmul(grad, point, _row_dot(point, grad), value=-1, out=scratch)  # r
    exp_avg.lerp_(scratch, 1 - beta1)
    r_squared = torch.linalg.vector_norm(scratch, dim=-1, keepdim=True).square_()
    exp_avg_sq.lerp_(r_squared.expand_as(exp_avg_sq), 1 - beta2)
    second = exp_avg_sq
    if max_exp_avg_sq is not None:
        second = torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
    denom = (second[..., :1] / (1 - beta2**step)).sqrt_().add_(eps)  # (..., k, 1)
    point.addcmul_(exp_avg, denom.reciprocal_().mul_(-lr / (1 - beta1**step)))
    point.div_(torch.linalg.vector_norm(point, dim=-1, keepdim=True))
    exp_avg.addcmul_(point, _row_dot(point, exp_avg), value=-1)
