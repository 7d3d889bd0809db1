"""Input checks shared by the library: each raises a ``ValueError`` that names the argument,
what was expected and what arrived."""

from __future__ import annotations

import torch

__all__ = ["check_finite", "check_rank", "describe_shape"]


def describe_shape(tensor: torch.Tensor) -> str:
    """Return ``"(2, 16, 32)"`` style text for a tensor's shape."""
    return "(" + ", ".join(str(s) for s in tensor.shape) + ("," if tensor.dim() == 1 else "") + ")"


def check_finite(tensor: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``tensor`` holds NaN or Inf.

    Parameters
    ----------
    tensor : torch.Tensor
        Any shape.
    name : str
        The argument's name, quoted in the message.
    """
    if tensor.is_floating_point() or tensor.is_complex():
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            n_nan = int(torch.isnan(tensor).sum())
            n_inf = int(torch.isinf(tensor).sum())
            raise ValueError(
                f"`{name}` must be finite, got {n_nan} NaN and {n_inf} Inf values "
                f"in a tensor of shape {describe_shape(tensor)}"
            )


def check_rank(tensor: torch.Tensor, name: str, min_rank: int, expected: str) -> None:
    """Raise ``ValueError`` if ``tensor`` has fewer than ``min_rank`` dimensions.

    Parameters
    ----------
    tensor : torch.Tensor
        Any shape.
    name : str
        The argument's name, quoted in the message.
    min_rank : int
        Smallest accepted number of dimensions.
    expected : str
        The expected shape in words, for example ``"(..., k, d)"``.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape {expected}, got {type(tensor).__name__}")
    if tensor.dim() < min_rank:
        raise ValueError(f"`{name}` must have shape {expected}, got shape {describe_shape(tensor)}")
