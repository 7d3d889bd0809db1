"""The precision rule shared by the manifold and the optimizers: 16-bit floats are computed in float32."""

from __future__ import annotations

import torch

__all__ = ["HALF_DTYPES", "compute_dtype"]

#: float16 and bfloat16: their 11- and 8-bit mantissas cannot resolve small angles or small updates
HALF_DTYPES = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype to compute in for tensors of ``dtype``: float32 for 16-bit floats, else ``dtype`` itself."""
    return torch.float32 if dtype in HALF_DTYPES else dtype
