"""The :class:`Geometry` interface: one module per embedding geometry, owning everything of its kind.

A geometry is an ``nn.Module`` built for ``k`` tokens of ``d`` dims. It

* projects raw tower features onto its space (:meth:`Geometry.project`, ``(N, k, d) -> (N, k, d)``),
* scores all pairs (:meth:`Geometry.pairwise`, ``(Na, Nb)``) or matched rows (:meth:`Geometry.paired`, ``(N,)``),
  always in float32 or float64 (half-precision inputs and autocast regions are upcast to float32, so scores never
  come out in bfloat16), and turns scores into logits (:meth:`Geometry.logits`, the one logits formula of loss,
  zero-shot and retrieval),
* averages points (:meth:`Geometry.mean`, the class prototypes of zero-shot classification),
* states its score range (:meth:`Geometry.value_range`) and the temperature it trains with
  (:attr:`Geometry.default_temperature`),
* measures how far features are from its space (:meth:`Geometry.manifold_deviation`, what the loss checks),
* owns its learnable parameters (lorentz: curvature and modality scales; clamped by :func:`manifold_align.bounds.clamped`)
  and its extra loss terms (:meth:`Geometry.extra_losses`: MERU's entailment, weight as an option).

Subclasses write the formula (``_project``, ``_pairwise``, ``_paired``, :meth:`value_range`); the public methods
validate shapes, upcast and switch autocast off first.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple, Optional

import torch
from torch import nn

from ..dtypes import autocast_disabled, compute_dtype
from ..validation import check_floating, check_on_manifold, check_rank, describe_shape

__all__ = ["MODALITIES", "Geometry", "LossTerm", "check_flag"]

#: the modalities a geometry may treat differently
MODALITIES = ("image", "text")

#: floor of Geometry.manifold_tolerance
_MANIFOLD_ATOL = 1e-2


class LossTerm(NamedTuple):
    """An extra loss term of a geometry: ``weight * value`` is added to the contrastive loss.

    Attributes
    ----------
    value : torch.Tensor, 0-dim
        The term before its weight (its own unit: radians for MERU's entailment).
    weight : float
    """

    value: torch.Tensor
    weight: float


def check_flag(value, name: str) -> bool:
    """``value`` if it is a bool; anything else (``"no"``, 0) is refused rather than read as truthy."""
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be True or False, got {value!r}")
    return value


def _check_size(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}")
    return value


@torch.no_grad()
def max_unit_norm_deviation(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``max | |x| - 1 |`` over the vectors along ``dim``, 0-dim (0 for an empty ``x``); NaN propagates."""
    if x.numel() == 0:
        return torch.zeros((), dtype=torch.float32, device=x.device)
    return (torch.linalg.vector_norm(x.to(compute_dtype(x.dtype)), dim=dim) - 1).abs().amax()


class Geometry(nn.Module):
    """An embedding geometry for ``k`` tokens of ``d`` dims (see the module docstring).

    Parameters
    ----------
    n_tokens : int, keyword-only
        ``k``, tokens per embedding, >= 1.
    token_dim : int, keyword-only
        ``d``, dims per token, >= 1.

    Attributes
    ----------
    name : str
        Registry name, set by :func:`~manifold_align.geometries.register_geometry`.
    default_temperature : dict
        The temperature this geometry trains with when the caller asks for ``"auto"`` (a
        :func:`~manifold_align.get_temperature` spec); scale 1 (``none``) unless a subclass says why not.
    manifold_text : str
        The space in words, for error messages.
    """

    name: ClassVar[str] = "abstract"
    default_temperature: ClassVar[dict] = {"name": "none"}
    manifold_text: ClassVar[str] = "OB(d, k), every token (row of the last axis) of unit norm"

    def __init__(self, *, n_tokens: int, token_dim: int) -> None:
        super().__init__()
        self.n_tokens = _check_size(n_tokens, "n_tokens", 1)
        self.token_dim = _check_size(token_dim, "token_dim", 1)

    # ---- to implement ---------------------------------------------------------------------------------
    def _project(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        """Raw (N, k, d) features (shape-checked; their own dtype, the caller's autocast) -> points (N, k, d)."""
        raise NotImplementedError

    def _pairwise(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Scores of all pairs, (Na, k, d) x (Nb, k, d) -> (Na, Nb); validated, float32/float64, autocast off.

        This is also the tile formula of tiled losses: it is called on blocks of rows.
        """
        raise NotImplementedError

    def _paired(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Scores of matched rows, (N, k, d) x (N, k, d) -> (N,); equal to ``diag(_pairwise(a, b))``."""
        raise NotImplementedError

    def value_range(self) -> tuple[float, float]:
        """``(lo, hi)``, the range of the scores for this geometry's k and d."""
        raise NotImplementedError

    # ---- overridable ------------------------------------------------------------------------------------
    def mean(self, points: torch.Tensor, *, dim: int = 1, modality: str = "text") -> torch.Tensor:
        """Average points over axis ``dim`` (the templates of a zero-shot class).

        The default averages the coordinates and projects the mean back with :meth:`project`: the extrinsic mean
        of the sphere family (per token on OB(d, k)). A geometry whose ``project`` is not the identity on its own
        points (lorentz scales before its exponential map) overrides this.

        Parameters
        ----------
        points : torch.Tensor, shape (..., k, d)
            Projected features; ``dim`` is one of the leading axes.
        dim : int, keyword-only
            The axis averaged over; it is removed.
        modality : {"image", "text"}, keyword-only

        Returns
        -------
        torch.Tensor, ``points``' shape without axis ``dim``: points of the space.
        """
        mean = points.mean(dim)
        return self.project(mean.reshape(-1, *mean.shape[-2:]), modality=modality).reshape(mean.shape)

    def manifold_deviation(self, features: torch.Tensor) -> Optional[torch.Tensor]:
        """How far ``features`` are from the space: the largest ``| |u_b| - 1 |`` over tokens (oblique family).

        A geometry with another space overrides this; one with no constraint returns None. No device sync.

        Parameters
        ----------
        features : torch.Tensor, shape (N, k, d)

        Returns
        -------
        torch.Tensor or None
            0-dim, without gradient; 0 for empty input, NaN when ``features`` hold NaN or Inf.
        """
        return max_unit_norm_deviation(features, dim=-1)

    def manifold_tolerance(self, dtype: torch.dtype) -> float:
        """Largest accepted :meth:`manifold_deviation` for features of ``dtype``.

        ``1e-2``, or 8 times the dtype's machine epsilon where that is larger (bfloat16: 0.0625): far below the
        deviation of raw features, well above the rounding of features projected in any precision.
        """
        return max(_MANIFOLD_ATOL, 8 * torch.finfo(dtype).eps)

    def extra_losses(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, LossTerm]:
        """Loss terms the geometry adds to the contrastive loss, on projected matched pairs; none by default.

        Parameters
        ----------
        image, text : torch.Tensor, shape (N, k, d)
            Projected features of this process's pairs.

        Returns
        -------
        dict of str to LossTerm
        """
        return {}

    def score_grid(self) -> int:
        """Values the score formula holds per scored pair: ``k`` for a per-token (k, Na, Nb) grid (the default), 1
        for one matmul of the flattened features. Sizes the tiles of the tiled losses (:mod:`manifold_align.tiled`)."""
        return self.n_tokens

    def values(self) -> dict[str, torch.Tensor]:
        """The geometry's learned values (clamped, detached, 0-dim tensors) for logs; none by default."""
        return {}

    @torch.no_grad()
    def clamp_(self) -> "Geometry":
        """Project the parameters into their ranges in place (after ``optimizer.step()``); a no-op by default."""
        return self

    # ---- validation ----------------------------------------------------------------------------------
    def _check_features(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """Check ``x`` is a floating (N, k, d) tensor of this geometry's (k, d); return it."""
        expected = f"(N, {self.n_tokens}, {self.token_dim})"
        check_rank(x, name, 3, expected)
        check_floating(x, name)
        if x.dim() != 3 or tuple(x.shape[1:]) != (self.n_tokens, self.token_dim):
            raise ValueError(f"`{name}` must have shape {expected} for geometry '{self.name}' (k = {self.n_tokens}, "
                             f"d = {self.token_dim}), got shape {describe_shape(x)}")
        return x

    def check_inputs(self, a: torch.Tensor, b: torch.Tensor, *, names: tuple[str, str] = ("a", "b")) -> None:
        """Raise ``ValueError`` (quoting ``names``) where :meth:`pairwise` would refuse ``a`` and ``b``."""
        self._check_features(a, names[0])
        self._check_features(b, names[1])

    def check_on_manifold(self, features: torch.Tensor, name: str = "features") -> None:
        """Raise ``ValueError`` naming ``name`` and the deviation if ``features`` are off the space (one sync)."""
        deviation = self.manifold_deviation(features)
        if deviation is not None:
            check_on_manifold(float(deviation), self.manifold_tolerance(features.dtype), name, self.manifold_text)

    @staticmethod
    def _modality(modality: str) -> str:
        if modality not in MODALITIES:
            raise ValueError(f"`modality` must be one of {', '.join(MODALITIES)}, got {modality!r}")
        return modality

    # ---- public ------------------------------------------------------------------------------------------
    def project(self, features: torch.Tensor, *, modality: str = "image") -> torch.Tensor:
        """Map raw tower features onto the geometry's space.

        Parameters
        ----------
        features : torch.Tensor, shape (N, k, d)
        modality : {"image", "text"}, keyword-only
            Which tower the features come from (lorentz scales each differently).

        Returns
        -------
        torch.Tensor, shape (N, k, d)
            Points of the space; float32 (float64 for float64 input) for geometries that compute in full
            precision, else the input's dtype.
        """
        self._check_features(features, "features")
        return self._project(features, self._modality(modality))

    def pairwise(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Score of every row of ``a`` against every row of ``b``.

        Parameters
        ----------
        a : torch.Tensor, shape (Na, k, d)
            Projected features (:meth:`project`).
        b : torch.Tensor, shape (Nb, k, d)

        Returns
        -------
        torch.Tensor, shape (Na, Nb)
            float32 (float64 if an input is float64), also under autocast; values in :meth:`value_range`.
        """
        self.check_inputs(a, b)
        with autocast_disabled(a.device):
            return self._pairwise(*_upcast_pair(a, b))

    def paired(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Score of row i of ``a`` against row i of ``b`` (the positives): ``diag(pairwise(a, b))``.

        Parameters
        ----------
        a, b : torch.Tensor, shape (N, k, d)

        Returns
        -------
        torch.Tensor, shape (N,)
        """
        self.check_inputs(a, b)
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"`a` and `b` must have the same number of rows for paired scores, got a of shape "
                             f"{describe_shape(a)} and b of shape {describe_shape(b)}")
        with autocast_disabled(a.device):
            return self._paired(*_upcast_pair(a, b))

    def logits(self, a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor,
               logit_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``logit_scale * pairwise(a, b) + logit_bias``: the logits of the loss, zero-shot and retrieval.

        Parameters
        ----------
        a : torch.Tensor, shape (Na, k, d)
        b : torch.Tensor, shape (Nb, k, d)
        logit_scale : torch.Tensor, 0-dim
            The temperature's scale (the model's ``logit_scale`` output).
        logit_bias : torch.Tensor, 0-dim, optional
            The sigmoid objective's bias.

        Returns
        -------
        torch.Tensor, shape (Na, Nb)
        """
        return scale_scores(self.pairwise(a, b), logit_scale, logit_bias)

    def extra_repr(self) -> str:  # noqa: D102
        return f"n_tokens={self.n_tokens}, token_dim={self.token_dim}"


def scale_scores(scores: torch.Tensor, logit_scale: torch.Tensor,
                 logit_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``logit_scale * scores + logit_bias`` (the bias only when given): the one logits formula."""
    logits = scores * logit_scale.reshape(())
    return logits if logit_bias is None else logits + logit_bias.reshape(())


def _upcast_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both in the wider of their compute dtypes (float32 for half precision; float64 wins)."""
    dtype = torch.promote_types(compute_dtype(a.dtype), compute_dtype(b.dtype))
    return a.to(dtype), b.to(dtype)

