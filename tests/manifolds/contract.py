"""The NaN / Inf contract shared by the manifold tests: what "non-finite in, non-finite out" means per output."""

from __future__ import annotations

import torch


def assert_point_zero_non_finite(out: torch.Tensor, layout: str, name: str) -> None:
    """Point 0 (factor 0) had a non-finite input: its output is not finite, the other points' outputs are.

    ``layout``: "row" for a (..., k, w) point or vector (not all finite), "factor" for (..., k) and "batch" for
    (...) scores (non-finite), "grid" / "grid_y" for a cdist's (n, m) or (k, n, m) with point 0 of x / of y.
    """
    if layout in ("grid", "grid_y"):
        out = out if out.dim() == 3 else out[None]  # (k, n, m)
        if layout == "grid_y":
            out = out.transpose(1, 2)
        # point 0 against every other point; a product distance mixes the factors
        hit, rest = out[0, 0], out[:, 1:]
    elif layout == "batch":
        hit, rest = out[0], out[1:]
    else:
        hit, rest = out[0, 0], out[1:]
    finite = torch.isfinite(hit).all() if layout == "row" else torch.isfinite(hit).any()
    assert not bool(finite), f"{name}: non-finite input, {hit} out"
    assert bool(torch.isfinite(rest).all()), f"{name}: other points became non-finite"
