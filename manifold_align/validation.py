"""Input checks shared by the library: each raises a ``ValueError`` that names the argument,
what was expected and what arrived."""

from __future__ import annotations

import torch

__all__ = [
    "check_broadcastable",
    "check_class_ids",
    "check_finite",
    "check_floating",
    "check_nonempty",
    "check_on_manifold",
    "check_rank",
    "describe_shape",
]


def describe_shape(tensor) -> str:
    """Return ``"(2, 16, 32)"`` style text for a tensor's shape (or for a shape itself)."""
    shape = tuple(tensor.shape if isinstance(tensor, torch.Tensor) else tensor)
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


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


def check_floating(tensor: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` unless ``tensor`` has a real floating-point dtype.

    Parameters
    ----------
    tensor : torch.Tensor
        Any shape.
    name : str
        The argument's name, quoted in the message.
    """
    if not tensor.is_floating_point():
        raise ValueError(
            f"`{name}` must be a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got dtype {tensor.dtype}"
        )


def check_nonempty(tensor: torch.Tensor, name: str, expected: str) -> None:
    """Raise ``ValueError`` if ``tensor`` has a dimension of size 0.

    Parameters
    ----------
    tensor : torch.Tensor
        Any shape.
    name : str
        The argument's name, quoted in the message.
    expected : str
        The expected shape in words, for example ``"(N, k, d) with N, k, d >= 1"``.
    """
    if tensor.numel() == 0:
        raise ValueError(f"`{name}` must have shape {expected}, got the empty shape {describe_shape(tensor)}")


def check_broadcastable(a_shape, a_name: str, b_shape, b_name: str, what: str) -> None:
    """Raise ``ValueError`` unless two shapes broadcast together.

    Parameters
    ----------
    a_shape, b_shape : tuple of int
        The shapes (or the parts of them that must broadcast).
    a_name, b_name : str
        The arguments' names, quoted in the message.
    what : str
        What the shapes are, for example ``"batch dims (...) of shape (..., k, d)"``.
    """
    try:
        torch.broadcast_shapes(tuple(a_shape), tuple(b_shape))
    except RuntimeError:
        raise ValueError(
            f"`{a_name}` and `{b_name}` must have broadcastable {what}, "
            f"got {describe_shape(a_shape)} and {describe_shape(b_shape)}"
        ) from None


def check_on_manifold(deviation: float, tolerance: float, name: str, manifold: str) -> None:
    """Raise ``ValueError`` if a measured distance from a manifold exceeds ``tolerance``.

    The measuring belongs to whoever owns the manifold (for the geometries,
    :meth:`manifold_align.Geometry.manifold_deviation`); this only compares and words
    the error. A NaN deviation (from NaN input) passes: finiteness has its own check.

    Parameters
    ----------
    deviation : float
        For unit-norm rows, the largest ``| |row| - 1 |``.
    tolerance : float
        Largest accepted deviation.
    name : str
        The argument's name, quoted in the message.
    manifold : str
        The manifold in words, for example ``"OB(d, k): every row of the last axis of unit norm"``.
    """
    if deviation > tolerance:
        raise ValueError(
            f"`{name}` must lie on {manifold} (largest accepted | |row| - 1 | is {tolerance:.3g}), "
            f"got a largest | |row| - 1 | of {deviation:.3g}; project raw features with the geometry's "
            f"`project` first"
        )


def check_class_ids(class_ids, n_rows: int, device, name: str = "class_ids") -> None:
    """Raise ``ValueError`` unless ``class_ids`` is an integer tensor of shape (n_rows,) on ``device``.

    Parameters
    ----------
    class_ids : object
        The argument as passed.
    n_rows : int
        Rows of the features it labels.
    device : torch.device
        The features' device.
    name : str, default "class_ids"
        The argument's name, quoted in the message.
    """
    if not isinstance(class_ids, torch.Tensor):
        raise ValueError(f"`{name}` must be an integer tensor of shape ({n_rows},) (one class id per pair), got "
                         f"{type(class_ids).__name__}")
    if class_ids.is_floating_point() or class_ids.is_complex() or class_ids.dtype == torch.bool:
        raise ValueError(f"`{name}` must be an integer tensor (torch.int64), got dtype {class_ids.dtype}")
    if class_ids.dim() != 1 or class_ids.shape[0] != n_rows:
        raise ValueError(f"`{name}` must have shape ({n_rows},) (one class id per row of the features), got "
                         f"{describe_shape(class_ids)}")
    if class_ids.device != torch.device(device):
        raise ValueError(f"`{name}` must be on the features' device {device}, got {class_ids.device}")
