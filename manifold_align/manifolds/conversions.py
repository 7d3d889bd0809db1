"""Convert OB(d, k) points between layouts used by other libraries.

- manifold-align, geoopt and geomstats: unit vectors in **rows**, shape ``(..., k, d)``.
- pymanopt and Manopt: unit vectors in **columns**, shape ``(..., d, k)`` (pymanopt's
  ``Oblique(m=d, n=k)`` works on a single ``(d, k)`` numpy array).

geomstats is imported lazily inside :func:`geomstats_manifold`: importing geomstats with its
pytorch backend sets torch's default dtype to float64, a global change this library never makes
on import. Set ``GEOMSTATS_BACKEND`` before the first geomstats import to choose its backend.
"""

from __future__ import annotations

import numpy as np
import torch

from ..validation import check_rank

__all__ = ["from_pymanopt", "geomstats_manifold", "to_geomstats", "to_pymanopt"]


def to_pymanopt(x: torch.Tensor) -> np.ndarray:
    """Rows to columns, as a numpy array.

    Parameters
    ----------
    x : torch.Tensor, shape (..., k, d)

    Returns
    -------
    numpy.ndarray, shape (..., d, k)
        float64 for 16-bit inputs (numpy has no bfloat16), else the matching numpy dtype.
    """
    check_rank(x, "x", 2, "(..., k, d)")
    x = x.detach()
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.double()
    return x.transpose(-2, -1).cpu().numpy().copy()


def from_pymanopt(X, *, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
    """Columns to rows, as a torch tensor.

    Parameters
    ----------
    X : array_like, shape (..., d, k)
    dtype, device : optional
        Target dtype (default: keep the array's floating dtype) and device.

    Returns
    -------
    torch.Tensor, shape (..., k, d)
    """
    t = torch.as_tensor(np.asarray(X))
    check_rank(t, "X", 2, "(..., d, k)")
    return t.transpose(-2, -1).contiguous().to(dtype=dtype, device=device)


def to_geomstats(x: torch.Tensor) -> np.ndarray:
    """Points for geomstats' ``NFoldManifold(Hypersphere(d - 1), k)`` (numpy backend).

    The layout is already the same (rows); this only converts to a numpy array.

    Parameters
    ----------
    x : torch.Tensor, shape (..., k, d)

    Returns
    -------
    numpy.ndarray, shape (..., k, d)
    """
    check_rank(x, "x", 2, "(..., k, d)")
    x = x.detach()
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.double()
    return x.cpu().numpy().copy()


def geomstats_manifold(k: int, d: int):
    """geomstats' model of OB(d, k): ``NFoldManifold(Hypersphere(d - 1), k)``.

    Parameters
    ----------
    k : int
        Number of spheres, >= 1.
    d : int
        Ambient dimension of each sphere, >= 2.

    Returns
    -------
    geomstats.geometry.product_manifold.NFoldManifold
        Its metric is the product (Frobenius) metric, the same as :class:`~manifold_align.Oblique`.
        Importing geomstats may change torch's default dtype (pytorch backend); this function
        restores it.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` must be an int >= 1, got {k!r}")
    if not isinstance(d, int) or d < 2:
        raise ValueError(f"`d` must be an int >= 2, got {d!r}")
    saved = torch.get_default_dtype()
    try:
        from geomstats.geometry.hypersphere import Hypersphere
        from geomstats.geometry.nfold_manifold import NFoldManifold
    finally:
        torch.set_default_dtype(saved)
    return NFoldManifold(Hypersphere(d - 1), k)
