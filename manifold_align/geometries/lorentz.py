"""``lorentz``: minus the geodesic distance on k hyperboloids (MERU, Desai et al., ICML 2023, for k = 1)."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..bounds import clamped
from ..dtypes import autocast_disabled, compute_dtype
from ..manifolds.lorentz.cone import entailment_loss
from ..manifolds.lorentz.math import scaled_cdist, space_dist, space_expmap0, space_logmap0
from . import register_geometry
from .base import Geometry, LossTerm, check_flag

__all__ = ["LorentzGeometry"]


def _positive(value, name: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a positive number, got {value!r}") from None
    if not (math.isfinite(out) and out > 0):
        raise ValueError(f"`{name}` must be a positive finite number, got {value!r}")
    return out


@register_geometry("lorentz")
class LorentzGeometry(Geometry):
    """Minus the hyperbolic distance, summed over tokens, each on its own hyperboloid of curvature ``-c``.

    :meth:`project` scales each modality's raw features by its learnable factor and lifts every token onto its
    hyperboloid with the exponential map at the origin; points stay in space components, shape (N, k, d) (the
    time ``sqrt(1/c + |x_b|^2)`` is derived). The score is ``-sum_b acosh(-c <x_b, y_b>_L) / sqrt(c)``: for
    k = 1 MERU's logit before its temperature. Range (-inf, 0].

    Parameters
    ----------
    n_tokens, token_dim : int, keyword-only
        ``k`` and ``d``; ``d`` sets the modality scales' initial value ``1 / sqrt(d)`` (MERU's
        ``embed_dim ** -0.5`` for one token: features of norm ~sqrt(d) reach the exponential map with norm ~1).
    curvature_init : float, default 1.0, keyword-only
        Initial ``c``, MERU's ``curv_init``.
    learn_curvature : bool, default True, keyword-only
        MERU's ``learn_curv``; False freezes ``log_curvature``.
    curvature_range : float, default 10.0, keyword-only
        ``c`` stays in ``[curvature_init / curvature_range, curvature_init * curvature_range]`` (MERU: 10).
    max_radius : float or None, default asinh(2**15), keyword-only
        Clamp on ``sqrt(c) |u_b|`` in the exponential map, MERU's (direction kept); None for none.
    precise : bool, default True, keyword-only
        Recompute near pairs exactly in ``pairwise``: ``pairwise(x, x)`` has an exact 0 diagonal with gradient
        0, where ``acosh`` of the Lorentz inner product would give ~5e-4 x_0 and an infinite gradient.
    entailment_weight : float, default 0.0, keyword-only
        Weight of MERU's entailment loss (text entails image, :meth:`extra_losses`); 0 leaves it out (MERU's
        runs use 0.2).
    entailment_min_radius : float, default 0.1, keyword-only
        The cone's ``min_radius`` (MERU's).

    Attributes
    ----------
    log_curvature, log_image_scale, log_text_scale : nn.Parameter, 0-dim
        ``log c`` and the logs of the modality factors; read through :func:`manifold_align.bounds.clamped`
        (the modality factors are capped at 1, as MERU does). None of them should get weight decay.

    Notes
    -----
    The temperature multiplies distances: with scale s the logit is ``-s sum_b d_b``, so s sets how many nats
    one unit of distance is worth, while ``c`` sets how fast volume grows with the radius.
    """

    # learnable from scale 1, not MERU's 1/0.07: with k tokens the summed distances already span tens of units
    # (configs/digits-lorentz.yaml gives the measurements)
    default_temperature = {"name": "learnable", "init": 1.0, "max_scale": 100.0}
    manifold_text = "k hyperboloids, in space components (any vector is one)"

    def __init__(self, *, n_tokens: int, token_dim: int, curvature_init: float = 1.0, learn_curvature: bool = True,
                 curvature_range: float = 10.0, max_radius: Optional[float] = math.asinh(2.0**15),
                 precise: bool = True, entailment_weight: float = 0.0, entailment_min_radius: float = 0.1) -> None:
        super().__init__(n_tokens=n_tokens, token_dim=token_dim)
        self.curvature_init = _positive(curvature_init, "curvature_init")
        self.curvature_range = _positive(curvature_range, "curvature_range")
        if self.curvature_range < 1:
            raise ValueError(f"`curvature_range` must be >= 1, got {curvature_range!r}")
        self.max_radius = None if max_radius is None else _positive(max_radius, "max_radius")
        self.precise = check_flag(precise, "precise")
        try:
            self.entailment_weight = float(entailment_weight)
        except (TypeError, ValueError):
            raise ValueError(f"`entailment_weight` must be a number >= 0, got {entailment_weight!r}") from None
        if not (math.isfinite(self.entailment_weight) and self.entailment_weight >= 0):
            raise ValueError(f"`entailment_weight` must be a finite number >= 0, got {entailment_weight!r}")
        self.entailment_min_radius = _positive(entailment_min_radius, "entailment_min_radius")
        self.log_curvature = nn.Parameter(torch.tensor(math.log(self.curvature_init)),
                                          requires_grad=check_flag(learn_curvature, "learn_curvature"))
        init = math.log(1.0 / math.sqrt(token_dim))
        self.log_image_scale = nn.Parameter(torch.tensor(init))
        self.log_text_scale = nn.Parameter(torch.tensor(init))

    # ---- parameters --------------------------------------------------------------------------------------
    def _curvature_bounds(self) -> tuple[float, float]:
        log_c, log_r = math.log(self.curvature_init), math.log(self.curvature_range)
        return log_c - log_r, log_c + log_r

    def curvature(self) -> torch.Tensor:
        """``c`` (> 0; the curvature is ``-c``), in its range; 0-dim."""
        return clamped(self.log_curvature, *self._curvature_bounds()).exp()

    def scale(self, modality: str) -> torch.Tensor:
        """The factor in (0, 1] applied to ``modality``'s features before the exponential map; 0-dim."""
        log_scale = self.log_image_scale if self._modality(modality) == "image" else self.log_text_scale
        return clamped(log_scale, -math.inf, 0.0).exp()

    @torch.no_grad()
    def clamp_(self) -> "LorentzGeometry":
        """Project the parameters in place into their ranges (the accessors clamp anyway)."""
        lo, hi = self._curvature_bounds()
        self.log_curvature.clamp_(min=lo, max=hi)
        self.log_image_scale.clamp_(max=0.0)
        self.log_text_scale.clamp_(max=0.0)
        return self

    @torch.no_grad()
    def values(self) -> dict[str, torch.Tensor]:
        """``curvature``, ``image_scale`` and ``text_scale``, clamped, 0-dim."""
        return {"curvature": self.curvature(), "image_scale": self.scale("image"), "text_scale": self.scale("text")}

    # ---- the formula ---------------------------------------------------------------------------------------
    def _project(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        # float32 at least, also under autocast (MERU forces float32 here too)
        with autocast_disabled(features.device):
            scaled = features.to(compute_dtype(features.dtype)) * self.scale(modality)
            return space_expmap0(scaled, self.curvature(), max_radius=self.max_radius)

    def manifold_deviation(self, features: torch.Tensor) -> None:
        """Space components: any vector is a point (the time component is derived), nothing to check (None)."""
        return None

    def mean(self, points: torch.Tensor, *, dim: int = 1, modality: str = "text") -> torch.Tensor:
        """Average in the tangent space at the origin, token by token: ``exp_0(mean(log_0(x)))``.

        The coordinate mean of space components is no meaningful point, and :meth:`project` of it would scale it a
        second time; the modality scale is not applied again (``modality`` is unused).

        Parameters
        ----------
        points : torch.Tensor, shape (..., k, d)
            Space components; ``dim`` is one of the leading axes.
        dim : int, keyword-only
        modality : {"image", "text"}, keyword-only

        Returns
        -------
        torch.Tensor, ``points``' shape without axis ``dim``, float32 (float64 for float64 input).
        """
        with autocast_disabled(points.device):
            c = self.curvature()
            return space_expmap0(space_logmap0(points, c).mean(dim), c, max_radius=self.max_radius)

    def value_range(self) -> tuple[float, float]:  # noqa: D102
        return (-math.inf, 0.0)

    def _pairwise(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # the sign and 1/sqrt(c) folded into one (n, m) pass over the token sum
        c = self.curvature().to(a.dtype)
        # sync-free near pairs: a training step does not wait for their count
        per_token = scaled_cdist(a, b, c, self.precise, sync_free=True)
        summed = per_token[0] if per_token.shape[0] == 1 else per_token.sum(0)
        return summed * (-torch.rsqrt(c))

    def _paired(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return -space_dist(a, b, self.curvature()).sum(-1)

    def extra_losses(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, LossTerm]:
        """MERU's entailment loss (text entails image; radians, mean over pairs and tokens) when its weight > 0."""
        if self.entailment_weight == 0:
            return {}
        value = entailment_loss(text, image, self.curvature(), min_radius=self.entailment_min_radius)
        return {"entailment": LossTerm(value, self.entailment_weight)}

    def extra_repr(self) -> str:  # noqa: D102
        lo, hi = self.curvature_init / self.curvature_range, self.curvature_init * self.curvature_range
        return (f"{super().extra_repr()}, curvature in [{lo:g}, {hi:g}], "
                f"entailment_weight={self.entailment_weight:g}")
