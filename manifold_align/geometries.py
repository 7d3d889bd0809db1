"""Learnable geometry parameters that a similarity needs and the MODEL owns.

A :class:`~manifold_align.similarity.Similarity` is a stateless formula. Where its formula has learnable
parameters (the hyperboloid's curvature, MERU's per-modality scales), ``similarity.make_geometry(d=...)``
builds an ``nn.Module`` holding them; the model keeps it (so it is saved in checkpoints and optimized,
without weight decay) and passes it back as ``geometry=`` to ``project``, ``pairwise`` and ``paired``.

Every clamp lives here, in the accessors, never in a caller's forward and never by writing ``.data``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .temperature import _InwardClamp

__all__ = ["LorentzGeometry", "MODALITIES"]

#: the modalities a geometry may scale differently
MODALITIES = ("image", "text")


def _positive(value, name: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a positive number, got {value!r}") from None
    if not (math.isfinite(out) and out > 0):
        raise ValueError(f"`{name}` must be a positive finite number, got {value!r}")
    return out


class LorentzGeometry(nn.Module):
    """Curvature and per-modality scales of the ``lorentz`` similarity (MERU, Desai et al. 2023).

    Parameters
    ----------
    d : int
        Width of one token (the dimension each token's hyperboloid has); sets the scales' initial value
        ``1 / sqrt(d)`` (MERU: ``embed_dim ** -0.5`` with one token, so that features of norm ~sqrt(d) at
        initialization reach the exponential map with norm ~1).
    curvature_init : float, default 1.0
        Initial ``c`` (the curvature is ``-c``), MERU's ``curv_init``.
    learn_curvature : bool, default True
        MERU's ``learn_curv``; False freezes ``log_curvature`` (``requires_grad=False``).
    curvature_range : float, default 10.0
        ``c`` stays in ``[curvature_init / curvature_range, curvature_init * curvature_range]`` (MERU: 10).

    Attributes
    ----------
    log_curvature : nn.Parameter, 0-dim
        ``log c``.
    log_image_scale, log_text_scale : nn.Parameter, 0-dim
        Log of the factor applied to each modality's features before the exponential map; capped at 0
        (factor <= 1) as MERU does, so the factors never up-scale and can be dropped once they reach 1.

    Notes
    -----
    The accessors clamp with ``_InwardClamp`` (the temperature's clamp): the value never leaves its range,
    and a parameter pinned at a bound gets a gradient again as soon as the loss pulls it back inside, so it
    cannot freeze there. :meth:`clamp_` also projects the parameters themselves (optional, after
    ``optimizer.step()``). None of the three should get weight decay (MERU excludes them too).
    """

    def __init__(self, d: int, *, curvature_init: float = 1.0, learn_curvature: bool = True,
                 curvature_range: float = 10.0) -> None:
        super().__init__()
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"`d` (the token width) must be an int >= 1, got {d!r}")
        self.curvature_init = _positive(curvature_init, "curvature_init")
        self.curvature_range = _positive(curvature_range, "curvature_range")
        if self.curvature_range < 1:
            raise ValueError(f"`curvature_range` must be >= 1, got {curvature_range!r}")
        self.d = d
        self.log_curvature = nn.Parameter(torch.tensor(math.log(self.curvature_init)),
                                          requires_grad=bool(learn_curvature))
        init = math.log(1.0 / math.sqrt(d))
        self.log_image_scale = nn.Parameter(torch.tensor(init))
        self.log_text_scale = nn.Parameter(torch.tensor(init))

    def _curvature_bounds(self) -> tuple[float, float]:
        log_c, log_r = math.log(self.curvature_init), math.log(self.curvature_range)
        return log_c - log_r, log_c + log_r

    def curvature(self) -> torch.Tensor:
        """``c`` (> 0, the curvature is ``-c``), clamped to its range; 0-dim tensor."""
        lo, hi = self._curvature_bounds()
        return _InwardClamp.apply(self.log_curvature, lo, hi).exp()

    def scale(self, modality: str) -> torch.Tensor:
        """The factor (in (0, 1]) applied to ``modality``'s features before the exponential map; 0-dim.

        Parameters
        ----------
        modality : {"image", "text"}
        """
        if modality == "image":
            log_scale = self.log_image_scale
        elif modality == "text":
            log_scale = self.log_text_scale
        else:
            raise ValueError(f"`modality` must be one of {', '.join(MODALITIES)}, got {modality!r}")
        return _InwardClamp.apply(log_scale, -math.inf, 0.0).exp()

    def image_scale(self) -> torch.Tensor:
        """``scale("image")``."""
        return self.scale("image")

    def text_scale(self) -> torch.Tensor:
        """``scale("text")``."""
        return self.scale("text")

    @torch.no_grad()
    def clamp_(self) -> "LorentzGeometry":
        """Project the parameters in place into their ranges (optional; the accessors clamp anyway)."""
        lo, hi = self._curvature_bounds()
        self.log_curvature.clamp_(min=lo, max=hi)
        self.log_image_scale.clamp_(max=0.0)
        self.log_text_scale.clamp_(max=0.0)
        return self

    def values(self) -> dict[str, float]:
        """The current clamped values as Python floats, for logs and ``summary.json``."""
        return {"curvature": float(self.curvature().detach()), "image_scale": float(self.image_scale().detach()),
                "text_scale": float(self.text_scale().detach())}

    def extra_repr(self) -> str:  # noqa: D102
        v = self.values()
        return (f"d={self.d}, curvature={v['curvature']:.6g} in [{self.curvature_init / self.curvature_range:g}, "
                f"{self.curvature_init * self.curvature_range:g}], image_scale={v['image_scale']:.6g}, "
                f"text_scale={v['text_scale']:.6g}")
