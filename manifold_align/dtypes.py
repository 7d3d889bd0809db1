"""The precision rule shared by the manifold, the similarities and the optimizers: 16-bit floats are computed in
float32, outside autocast."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["HALF_DTYPES", "compute_dtype", "autocast_disabled"]

#: float16 and bfloat16: their 11- and 8-bit mantissas cannot resolve small angles or small updates
HALF_DTYPES = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype to compute in for tensors of ``dtype``: float32 for 16-bit floats, else ``dtype`` itself."""
    return torch.float32 if dtype in HALF_DTYPES else dtype


def autocast_disabled(device: torch.device) -> contextlib.AbstractContextManager:
    """A context that switches autocast off on ``device``'s type (a no-op where autocast does not exist,
    such as the ``meta`` device, on which shapes and FLOPs can then be traced)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()
