"""Similarities between embeddings: the sphere's cosine and three on the oblique manifold OB(d, k).

A :class:`Similarity` scores image features against text features. Features are tensors of shape
``(N, k, d)`` (k tokens of d dims each); ``cosine`` also accepts ``(N, D)``. Every similarity

* projects raw features onto its manifold (:meth:`Similarity.project`) and measures how far given
  features are from it (:meth:`Similarity.manifold_deviation`, what the loss checks),
* scores all pairs (:meth:`Similarity.pairwise`, ``(Na, Nb)``) or matched rows (:meth:`Similarity.paired`,
  ``(N,)``), always in float32 or float64 (half-precision inputs and autocast regions are upcast to float32,
  so logits never come out in bfloat16),
* states its range (:meth:`Similarity.value_range`).

Built-ins, looked up by name with :func:`get_similarity`:

============  ===============================================  =========================
name          formula (per-token normalized u_b, v_b)          range
============  ===============================================  =========================
cosine        <u, v> of the whole flattened vector             [-1, 1]
oblique       sum_b <u_b, v_b>                                 [-k, k]
geodesic      -sqrt(sum_b theta_b^2), theta_b = angle(u_b,v_b) [-pi * sqrt(k), 0]
chordal       -sum_b |u_b - v_b|^2 = -(2k - 2 * oblique)       [-4k, 0]
euclidean     -sum_b |x_b - y_b|^2 (raw x, y; EuCLIP)          (-inf, 0]
lorentz       -sum_b d_H(x_b, y_b) on hyperboloids (MERU)      (-inf, 0]
============  ===============================================  =========================

``euclidean`` and ``lorentz`` do not normalize (see their classes). A similarity whose formula has
learnable parameters builds them with :meth:`Similarity.make_geometry`; the model owns that module and
passes it back as ``geometry=`` (see :mod:`manifold_align.geometries` and ``docs/geometries.md``).

Register your own with :func:`register_similarity`.
"""

from __future__ import annotations

import abc
import inspect
import math
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .dtypes import autocast_disabled
from .geometries import LorentzGeometry
from .manifolds.lorentz import _scaled_cdist_sum, space_dist, space_expmap0, space_logmap0
from .manifolds.oblique import Oblique
from .validation import check_on_manifold as _refuse_off_manifold
from .validation import check_rank, describe_shape

_OBLIQUE = Oblique()

__all__ = [
    "ChordalSimilarity",
    "CosineSimilarity",
    "EuclideanSimilarity",
    "GeodesicSimilarity",
    "LorentzSimilarity",
    "ObliqueSimilarity",
    "Similarity",
    "get_similarity",
    "list_similarities",
    "register_similarity",
]

# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
#: floor of Similarity.manifold_tolerance
_MANIFOLD_ATOL = 1e-2


@torch.no_grad()
def _max_unit_norm_deviation(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``max | |x| - 1 |`` over the vectors along ``dim``, 0-dim (0 for an empty ``x``); NaN propagates."""
    if x.numel() == 0:
        return torch.zeros((), dtype=torch.float32, device=x.device)
    return (torch.linalg.vector_norm(_upcast(x), dim=dim) - 1).abs().amax()


def _flag(value, name: str) -> bool:
    """``value`` if it is a bool; anything else (``"no"``, 0) is refused rather than read as truthy."""
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be True or False, got {value!r}")
    return value


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Return ``x`` in float32 if it is a half-precision or integer tensor, else unchanged (float64 stays)."""
    if x.dtype in (torch.float32, torch.float64):
        return x
    return x.float()


# --------------------------------------------------------------------------------------------------
# the interface
# --------------------------------------------------------------------------------------------------
class Similarity(abc.ABC):
    """A similarity between embeddings, with a known range.

    Subclasses set :attr:`name` and implement :meth:`project`, :meth:`value_range`, ``_pairwise`` and
    ``_paired``. The public :meth:`pairwise` and :meth:`paired` validate shapes, upcast half precision to
    float32 and switch autocast off before calling them, so subclasses only write the formula.

    Attributes
    ----------
    name : str
        Registry name.
    default_temperature : dict
        The temperature this similarity trains with when the caller asks for ``"auto"`` (the trainer's
        default, :func:`manifold_align.get_temperature`): a ``get_temperature`` spec. Scale 1 (``none``)
        here; the subclasses that need another say why.
    """

    name: str = "abstract"
    default_temperature: dict = {"name": "none"}
    #: shape text used in error messages
    expected_shape: str = "(N, k, d)"
    #: the manifold in words, used in error messages
    manifold_text: str = "OB(d, k), every token (row of the last axis) of unit norm"

    # ---- to implement ---------------------------------------------------------------------------
    @abc.abstractmethod
    def project(self, features: torch.Tensor, *, geometry: Optional[nn.Module] = None,
                modality: str = "image") -> torch.Tensor:
        """Map raw features onto this similarity's manifold.

        Parameters
        ----------
        features : torch.Tensor, shape (N, k, d)
        geometry : nn.Module, optional, keyword-only
            The module :meth:`make_geometry` built (None when it builds none).
        modality : {"image", "text"}, keyword-only
            Which side the features are, for geometries that treat them differently.

        Returns
        -------
        torch.Tensor
            Points of the manifold; shape depends on the similarity.
        """

    @abc.abstractmethod
    def value_range(self, k: int, d: int) -> tuple[float, float]:
        """Return ``(lo, hi)``, the range of the similarity for k tokens of d dims."""

    @abc.abstractmethod
    def _pairwise(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Formula for all pairs; inputs validated, float32/float64, autocast off."""

    @abc.abstractmethod
    def _paired(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Formula for matched rows; inputs validated, float32/float64, autocast off."""

    # ---- learnable geometry, overridable ---------------------------------------------------------
    def make_geometry(self, *, d: Optional[int] = None) -> Optional[nn.Module]:
        """Build the module of learnable geometry parameters the model will own, or None (the default).

        Parameters
        ----------
        d : int, optional, keyword-only
            Width of one token (some geometries initialize from it).

        Returns
        -------
        nn.Module or None
            Passed back as ``geometry=`` to :meth:`project`, :meth:`pairwise` and :meth:`paired`.
        """
        return None

    def _geometry_args(self, geometry: Optional[nn.Module]) -> tuple:
        """Check ``geometry`` and return the extra arguments of ``_pairwise`` / ``_paired``: none here.

        A similarity without geometry takes ``geometry=None`` only: a module there means the caller wired
        a different similarity's parameters, which silently ignoring would hide.
        """
        if geometry is not None:
            raise ValueError(f"similarity '{self.name}' has no geometry parameters; `geometry` must be None, "
                             f"got {type(geometry).__name__}")
        return ()

    # ---- averaging, overridable --------------------------------------------------------------------
    def mean(self, features: torch.Tensor, *, dim: int = 1, geometry: Optional[nn.Module] = None,
             modality: str = "text") -> torch.Tensor:
        """Average projected features over axis ``dim`` (e.g. the templates of a zero-shot class).

        The default averages the coordinates and projects the mean back onto the manifold with
        :meth:`project`: the rule of the sphere family (the normalized mean is the sphere's extrinsic
        mean, per token on OB(d, k)). A similarity whose ``project`` does not map its own points to
        themselves (``lorentz`` scales before its exponential map) overrides this.

        Parameters
        ----------
        features : torch.Tensor, shape (..., k, d) (or (..., D) for ``cosine``)
            Projected features; ``dim`` must be one of the leading axes.
        dim : int, keyword-only
            The axis to average over; it is removed.
        geometry : nn.Module, optional, keyword-only
            As in :meth:`pairwise`.
        modality : {"image", "text"}, keyword-only
            Passed to :meth:`project` when a geometry is given.

        Returns
        -------
        torch.Tensor
            ``features`` without axis ``dim``, points of the manifold, same shape as the mean.
        """
        mean = features.mean(dim)
        projected = self.project(mean) if geometry is None else self.project(mean, geometry=geometry,
                                                                              modality=modality)
        return projected.reshape(mean.shape)

    # ---- validation, overridable ----------------------------------------------------------------
    def _check(
        self, a: torch.Tensor, b: torch.Tensor, names: tuple[str, str] = ("a", "b")
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Check both inputs are (N, k, d) with the same (k, d); return them unchanged.

        ``names`` are the caller's argument names, quoted in the messages.
        """
        for x, name in zip((a, b), names):
            check_rank(x, name, 3, self.expected_shape)
            if x.dim() != 3:
                raise ValueError(
                    f"`{name}` must have shape {self.expected_shape} for similarity '{self.name}', "
                    f"got shape {describe_shape(x)}"
                )
        if a.shape[1:] != b.shape[1:]:
            raise ValueError(
                f"`{names[0]}` and `{names[1]}` must have the same (k, d) for similarity '{self.name}', "
                f"got {names[0]} of shape {describe_shape(a)} and {names[1]} of shape {describe_shape(b)}"
            )
        return a, b

    def manifold_deviation(self, features: torch.Tensor) -> torch.Tensor | None:
        """How far ``features`` are from this similarity's manifold: the largest ``| |u_b| - 1 |``.

        The default measures the unit norm of every token (row of the last axis), the manifold of the
        oblique family; a similarity with another manifold overrides it, and one with no constraint
        (an unnormalized Euclidean score) returns None. No device sync: the caller decides when to read
        the value (:class:`~manifold_align.losses.ContrastiveLoss` reads it in its one host transfer).

        Parameters
        ----------
        features : torch.Tensor, shape (N, k, d)

        Returns
        -------
        torch.Tensor or None
            0-dim, float32 (float64 for float64 input), on ``features``' device, without gradient; 0
            for empty input, NaN when ``features`` hold NaN or Inf.
        """
        return _max_unit_norm_deviation(features, dim=-1)

    def manifold_tolerance(self, dtype: torch.dtype) -> float:
        """Largest accepted :meth:`manifold_deviation` for features of ``dtype``.

        ``1e-2``, or 8 times the dtype's machine epsilon where that is larger (bfloat16: 0.0625): far
        below the deviation of raw features, well above the rounding of features projected in any
        precision (a bfloat16-rounded unit row is off by at most ~4e-3).
        """
        return max(_MANIFOLD_ATOL, 8 * torch.finfo(dtype).eps)

    def check_on_manifold(self, features: torch.Tensor, name: str = "features") -> None:
        """Raise ``ValueError`` naming ``name`` and the deviation if ``features`` are off the manifold.

        One device sync (it reads :meth:`manifold_deviation`); the loss fuses the same check into its
        own host transfer instead of calling this.

        Parameters
        ----------
        features : torch.Tensor, shape (N, k, d)
        name : str
            The caller's argument name, quoted in the message.
        """
        deviation = self.manifold_deviation(features)
        if deviation is not None:
            tolerance = self.manifold_tolerance(features.dtype)
            _refuse_off_manifold(float(deviation), tolerance, name, self.manifold_text)

    def check_inputs(
        self, a: torch.Tensor, b: torch.Tensor, *, names: tuple[str, str] = ("a", "b")
    ) -> None:
        """Raise ``ValueError`` (quoting ``names``) where :meth:`pairwise` would refuse ``a`` and ``b``."""
        self._check(a, b, names)

    # ---- public ---------------------------------------------------------------------------------
    def pairwise(self, a: torch.Tensor, b: torch.Tensor, *, geometry: Optional[nn.Module] = None) -> torch.Tensor:
        """Similarity of every row of ``a`` with every row of ``b``.

        Parameters
        ----------
        a : torch.Tensor, shape (Na, k, d)
            Projected features (see :meth:`project`).
        b : torch.Tensor, shape (Nb, k, d)
            Projected features with the same (k, d).
        geometry : nn.Module, optional, keyword-only
            The module :meth:`make_geometry` built; None for similarities without one.

        Returns
        -------
        torch.Tensor, shape (Na, Nb)
            float32 (float64 if an input is float64), also under autocast; values in :meth:`value_range`.
        """
        a, b = self._check(a, b)
        extra = self._geometry_args(geometry)
        with autocast_disabled(a.device):
            return self._pairwise(_upcast(a), _upcast(b), *extra)

    def paired(self, a: torch.Tensor, b: torch.Tensor, *, geometry: Optional[nn.Module] = None) -> torch.Tensor:
        """Similarity of row i of ``a`` with row i of ``b`` (the positives), ``diag(pairwise(a, b))``.

        Parameters
        ----------
        a, b : torch.Tensor, shape (N, k, d)
            Projected features.
        geometry : nn.Module, optional, keyword-only
            As in :meth:`pairwise`.

        Returns
        -------
        torch.Tensor, shape (N,)
        """
        a, b = self._check(a, b)
        if a.shape[0] != b.shape[0]:
            raise ValueError(
                f"`a` and `b` must have the same number of rows for paired similarity, "
                f"got a of shape {describe_shape(a)} and b of shape {describe_shape(b)}"
            )
        extra = self._geometry_args(geometry)
        with autocast_disabled(a.device):
            return self._paired(_upcast(a), _upcast(b), *extra)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


# --------------------------------------------------------------------------------------------------
# built-ins
# --------------------------------------------------------------------------------------------------
class CosineSimilarity(Similarity):
    """Cosine on one sphere: the whole (k * d) vector is one point of S^(k*d - 1). Range [-1, 1].

    Accepts (N, D) or (N, k, d); (N, k, d) is flattened to (N, k * d).
    """

    name = "cosine"
    # CLIP's: at scale 1 the logits of one sphere span only [-1, 1], too little for a softmax over a batch
    default_temperature = {"name": "learnable", "init": 0.07, "max_scale": 100.0}
    expected_shape = "(N, D) or (N, k, d)"
    manifold_text = "the unit sphere S^(D-1), every (flattened) row of unit norm"

    def project(self, features: torch.Tensor, *, geometry: Optional[nn.Module] = None,
                modality: str = "image") -> torch.Tensor:
        """L2-normalize the flattened vector (``geometry`` must be None; ``modality`` is unused).

        Parameters
        ----------
        features : torch.Tensor, shape (N, D) or (N, k, d)

        Returns
        -------
        torch.Tensor, shape (N, D) or (N, k * d), unit norm rows.
        """
        check_rank(features, "features", 2, self.expected_shape)
        self._geometry_args(geometry)
        return F.normalize(features.flatten(1), dim=-1)

    def value_range(self, k: int, d: int) -> tuple[float, float]:  # noqa: D102
        return (-1.0, 1.0)

    def _check(self, a, b, names=("a", "b")):
        for x, name in zip((a, b), names):
            check_rank(x, name, 2, self.expected_shape)
            if x.dim() > 3:
                raise ValueError(
                    f"`{name}` must have shape {self.expected_shape}, got shape {describe_shape(x)}"
                )
        a, b = a.flatten(1), b.flatten(1)
        if a.shape[1] != b.shape[1]:
            raise ValueError(
                f"`{names[0]}` and `{names[1]}` must have the same width D = k * d for similarity 'cosine', "
                f"got {names[0]} of shape {describe_shape(a)} and {names[1]} of shape {describe_shape(b)} "
                f"after flattening"
            )
        return a, b

    def manifold_deviation(self, features: torch.Tensor) -> torch.Tensor | None:
        """The largest ``| |row| - 1 |`` of the flattened rows, shape (N, D) or (N, k, d) -> 0-dim.

        See :meth:`Similarity.manifold_deviation`.
        """
        return _max_unit_norm_deviation(features.flatten(1), dim=-1)

    def _pairwise(self, a, b):
        return a @ b.T

    def _paired(self, a, b):
        return (a * b).sum(-1)


class ObliqueSimilarity(Similarity):
    """Inner product on OB(d, k): ``sum_b <u_b, v_b>``. Range [-k, k].

    Computed as one matrix product of the flattened (k * d) features.
    """

    name = "oblique"
    # the paper's: the range [-k, k] already spans enough nats for the softmax at scale 1
    default_temperature = {"name": "none"}

    def project(self, features: torch.Tensor, *, geometry: Optional[nn.Module] = None,
                modality: str = "image") -> torch.Tensor:
        """L2-normalize each token (``geometry`` must be None; ``modality`` is unused).

        Parameters
        ----------
        features : torch.Tensor, shape (N, k, d)

        Returns
        -------
        torch.Tensor, shape (N, k, d), unit norm along the last axis.
        """
        check_rank(features, "features", 3, self.expected_shape)
        self._geometry_args(geometry)
        return F.normalize(features, dim=-1)

    def value_range(self, k: int, d: int) -> tuple[float, float]:  # noqa: D102
        return (-float(k), float(k))

    def _pairwise(self, a, b):
        return a.flatten(1) @ b.flatten(1).T

    def _paired(self, a, b):
        return (a * b).sum((-2, -1))


class GeodesicSimilarity(ObliqueSimilarity):
    """Minus the geodesic distance on OB(d, k): ``-sqrt(sum_b theta_b^2)``. Range [-pi * sqrt(k), 0].

    ``pairwise`` is :meth:`manifold_align.Oblique.cdist` (one batched matmul, near pairs recomputed
    exactly; never an (Na, Nb, k, d) tensor) and ``paired`` is :meth:`manifold_align.Oblique.dist`; see
    ``docs/geometry.md`` for their accuracy.
    """

    name = "geodesic"

    def value_range(self, k: int, d: int) -> tuple[float, float]:  # noqa: D102
        return (-math.pi * math.sqrt(k), 0.0)

    def _pairwise(self, a, b):
        return -_OBLIQUE.cdist(a, b)

    def _paired(self, a, b):
        return -_OBLIQUE.dist(a, b)


class ChordalSimilarity(ObliqueSimilarity):
    """Minus the squared Euclidean (chordal) distance: ``-sum_b |u_b - v_b|^2``. Range [-4k, 0].

    On projected features it equals ``-(2k - 2 * oblique)``; it is computed from the Gram matrix and the
    actual squared norms, and clipped at 0 from above against rounding.
    """

    name = "chordal"

    def value_range(self, k: int, d: int) -> tuple[float, float]:  # noqa: D102
        return (-4.0 * k, 0.0)

    def _pairwise(self, a, b):
        a, b = a.flatten(1), b.flatten(1)
        sq = (a * a).sum(-1)[:, None] + (b * b).sum(-1)[None, :] - 2.0 * (a @ b.T)
        return -sq.clamp(min=0.0)

    def _paired(self, a, b):
        return -((a - b) ** 2).sum((-2, -1))


class _Sqrt(torch.autograd.Function):
    """``sqrt(t)`` of ``t >= 0`` in one pass, gradient 0 (not inf, which times 0 is NaN) where ``t == 0``."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = torch.sqrt(t)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        (out,) = ctx.saved_tensors
        return torch.where(out > 0, grad / (2 * out), 0)


# a per-token squared distance below this fraction of |x_b|^2 + |y_b|^2 is recomputed from the rows:
# from the Gram matrix its error is ~eps (|x_b|^2 + |y_b|^2), so the root's relative error stays <= eps / 0.02
_NEAR_SQUARED = 1e-2


class EuclideanSimilarity(Similarity):
    """Minus the Euclidean distance between raw (unnormalized) features, summed over tokens (EuCLIP).

    ``squared=True`` (default): ``-sum_b |x_b - y_b|^2 = -|x - y|^2`` (the blocks are one vector).
    ``squared=False``: ``-sum_b |x_b - y_b|``, one distance per token, summed. Range (-inf, 0].

    The default is the squared form because that is the variant Chou and Alam ("Embedding Geometries of
    Contrastive Language-Image Pre-Training", 2024, arXiv:2409.13079) name EuCLIP: no L2 normalization,
    minus the squared Euclidean distance as the softmax logit, CLIP's learnable temperature, which they
    report matches or exceeds CLIP (dropping the towers' final LayerNorm, a model choice, cost little). A
    constant bias would cancel in the softmax. The squared form is also smooth everywhere; ``-|x - y|`` has
    a kink on the diagonal.

    Parameters
    ----------
    squared : bool, default True
    precise : bool, default True
        ``squared=False`` only: recompute per-token distances whose Gram-matrix value is within 1% of
        ``|x_b|^2 + |y_b|^2`` exactly from the rows (exact 0 on the diagonal, float32 relative error
        <= ~3e-6 elsewhere). The squared form is left as the Gram value clipped at 0 (absolute error
        ~``eps (|x|^2 + |y|^2)``, like ``chordal``).

    Notes
    -----
    There are no learnable geometry parameters: the temperature alone sets the logit scale, and with the
    squared form the softmax over texts of ``-s |x - y|^2 = -s |x|^2 - s |y|^2 + 2 s <x, y>`` drops the
    ``|x|^2`` term: the logit is a scaled inner product with a per-text bias ``-s |y|^2``.
    """

    name = "euclidean"
    # learnable from scale 1/20: squared distances between fresh towers' raw 512-d features are ~1000
    # (std ~20 across pairs), so scale 1 (or CLIP's 14) starts with the softmax saturated. Measured with
    # `manifold-align train --set loss.similarity=euclidean` (250 steps, one seed each): scale 1 10.3%
    # zero-shot top-1 (chance), 1/3 17.5%, 1/6 75.3%, 1/10 72.8%, 1/20 88.1%, 1/50 43.9%
    default_temperature = {"name": "learnable", "init": 20.0, "max_scale": 100.0}

    def __init__(self, squared: bool = True, precise: bool = True) -> None:
        self.squared = _flag(squared, "squared")
        self.precise = _flag(precise, "precise")

    def manifold_deviation(self, features: torch.Tensor) -> None:
        """Unnormalized features: no manifold constraint to check (returns None)."""
        return None

    def project(self, features: torch.Tensor, *, geometry: Optional[nn.Module] = None,
                modality: str = "image") -> torch.Tensor:
        """Identity (no normalization): the features are points of R^(k x d) as they are.

        Parameters
        ----------
        features : torch.Tensor, shape (N, k, d)

        Returns
        -------
        torch.Tensor, shape (N, k, d), the input itself.
        """
        check_rank(features, "features", 3, self.expected_shape)
        self._geometry_args(geometry)
        return features

    def value_range(self, k: int, d: int) -> tuple[float, float]:  # noqa: D102
        return (-math.inf, 0.0)

    def _pairwise(self, a, b):
        if self.squared:
            # 2 <a, b> - |a|^2 - |b|^2 in one addmm onto the norms' (n, m) sum, clipped at 0 in place
            af, bf = a.flatten(1), b.flatten(1)
            minus_norms = -((af * af).sum(-1)[:, None] + (bf * bf).sum(-1)[None, :])
            return torch.addmm(minus_norms, af, bf.T, alpha=2.0).clamp_(max=0.0)
        a_sq, b_sq = (a * a).sum(-1).T[:, :, None], (b * b).sum(-1).T[:, None, :]  # (k, n, 1), (k, 1, m)
        sq = torch.baddbmm(a_sq + b_sq, a.transpose(0, 1), b.permute(1, 2, 0), alpha=-2.0).clamp_(min=0.0)
        dist = _Sqrt.apply(sq)
        if self.precise and sq.device.type != "meta":
            dist = self._recompute_near(dist, sq.detach(), a_sq.detach(), b_sq.detach(), a, b)
        return -dist.sum(0)

    @staticmethod
    def _recompute_near(dist, sq, a_sq, b_sq, a, b):
        """Replace entries of ``dist`` (k, n, m) with ``sq < _NEAR_SQUARED (|a_i|^2 + |b_j|^2)`` by the exact
        ``|a[i, t] - b[j, t]|`` of the rows. A per-token bound first: one reduction pass, usually enough."""
        bound = _NEAR_SQUARED * (a_sq.amax(1, keepdim=True) + b_sq.amax(2, keepdim=True))  # (k, 1, 1)
        if not bool((sq.amin(dim=(1, 2), keepdim=True) < bound).any()):
            return dist
        near = sq < _NEAR_SQUARED * (a_sq + b_sq)
        if not bool(near.any()):
            return dist
        n, m = a.shape[0], b.shape[0]
        flat = torch.nonzero(near.view(-1)).squeeze(1)
        tok, i, j = flat // (n * m), flat // m % n, flat % m
        exact = torch.linalg.vector_norm(a[i, tok] - b[j, tok], dim=-1)
        return dist.reshape(-1).index_put((flat,), exact).view_as(dist)

    def _paired(self, a, b):
        if self.squared:
            return -((a - b) ** 2).sum((-2, -1))
        return -torch.linalg.vector_norm(a - b, dim=-1).sum(-1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, squared={self.squared})"


class LorentzSimilarity(Similarity):
    """Minus the geodesic distance on k hyperboloids of curvature -c, summed over tokens (MERU for k = 1).

    ``project`` scales each modality's raw features by its learnable factor and lifts every token onto
    its own hyperboloid with the exponential map at the origin; features stay in space components,
    shape (N, k, d) (the time ``sqrt(1/c + |x_b|^2)`` is derived). The score is
    ``-sum_b d_b``, ``d_b = acosh(-c <x_b, y_b>_L) / sqrt(c)``: with k = 1 exactly MERU's logit before
    the temperature. Range (-inf, 0].

    Parameters
    ----------
    curvature_init, learn_curvature, curvature_range
        Passed to :class:`~manifold_align.geometries.LorentzGeometry` by :meth:`make_geometry`.
    max_radius : float, default asinh(2**15)
        Clamp on ``sqrt(c) |u_b|`` in the exponential map, MERU's (direction kept); None for none.
    precise : bool, default True
        Recompute near pairs exactly in ``pairwise`` (see
        :func:`manifold_align.manifolds.lorentz.space_cdist`): ``pairwise(x, x)`` has an exact 0 diagonal
        with gradient 0, where ``acosh`` of the Lorentz inner product would give ~5e-4 x_0 and an
        infinite gradient.

    Notes
    -----
    ``pairwise``, ``paired`` and ``project`` need ``geometry=`` (the module :meth:`make_geometry`
    built, owned by the model); without it they raise ``ValueError``. The temperature multiplies
    distances: with scale s the logit is ``-s sum_b d_b``, so s sets how many nats one unit of distance
    is worth, while ``c`` sets how fast volume grows with the radius. The entailment loss of MERU is
    :func:`manifold_align.entailment.entailment_loss`.
    """

    name = "lorentz"
    # learnable from scale 1, not MERU's 1/0.07: with k tokens the summed distances already span tens of
    # units (configs/digits-lorentz.yaml gives the measurements)
    default_temperature = {"name": "learnable", "init": 1.0, "max_scale": 100.0}

    def __init__(self, curvature_init: float = 1.0, learn_curvature: bool = True, curvature_range: float = 10.0,
                 max_radius: Optional[float] = math.asinh(2.0**15), precise: bool = True) -> None:
        self.curvature_init = curvature_init
        self.learn_curvature = _flag(learn_curvature, "learn_curvature")
        self.curvature_range = curvature_range
        self.max_radius = max_radius
        self.precise = _flag(precise, "precise")

    def make_geometry(self, *, d: Optional[int] = None) -> nn.Module:
        """A :class:`~manifold_align.geometries.LorentzGeometry` for tokens of width ``d`` (required)."""
        if d is None:
            raise ValueError("similarity 'lorentz' needs the token width: call make_geometry(d=...) "
                             "(it initializes the modality scales at 1 / sqrt(d))")
        return LorentzGeometry(d, curvature_init=self.curvature_init, learn_curvature=self.learn_curvature,
                               curvature_range=self.curvature_range)

    def _geometry_args(self, geometry):
        if geometry is None or not (callable(getattr(geometry, "curvature", None))
                                    and callable(getattr(geometry, "scale", None))):
            raise ValueError(
                "similarity 'lorentz' needs `geometry`: the module from make_geometry(d=...) (a LorentzGeometry, "
                f"with curvature() and scale(modality)), got {type(geometry).__name__}"
            )
        return (geometry,)

    def manifold_deviation(self, features: torch.Tensor) -> None:
        """Space components of the hyperboloid: any vector is one (the time component is derived), so there is
        no constraint to check (returns None)."""
        return None

    def project(self, features: torch.Tensor, *, geometry: Optional[nn.Module] = None,
                modality: str = "image") -> torch.Tensor:
        """Scale by ``geometry.scale(modality)`` and lift each token with the exponential map at the origin.

        Parameters
        ----------
        features : torch.Tensor, shape (N, k, d)
            Raw features: tangent vectors at the origin (space part).
        geometry : LorentzGeometry, keyword-only
        modality : {"image", "text"}, keyword-only

        Returns
        -------
        torch.Tensor, shape (N, k, d)
            Space components of points on the hyperboloids, float32 (float64 for float64 input), also
            under autocast (MERU forces float32 here too).
        """
        check_rank(features, "features", 3, self.expected_shape)
        if features.dim() != 3:
            raise ValueError(f"`features` must have shape {self.expected_shape}, got shape {describe_shape(features)}")
        (geometry,) = self._geometry_args(geometry)
        with autocast_disabled(features.device):
            scaled = _upcast(features) * geometry.scale(modality)
            return space_expmap0(scaled, geometry.curvature(), max_radius=self.max_radius)

    def mean(self, features: torch.Tensor, *, dim: int = 1, geometry: Optional[nn.Module] = None,
             modality: str = "text") -> torch.Tensor:
        """Average points over axis ``dim`` in the tangent space at the origin, token by token.

        ``exp_0(mean(log_0(x)))`` on each token's hyperboloid: the coordinate mean of space components is
        no meaningful point, and ``project`` of it would scale it a second time. The modality scale is not
        applied again (``modality`` is unused).

        Parameters
        ----------
        features : torch.Tensor, shape (..., k, d)
            Space components (projected features); ``dim`` is one of the leading axes.
        dim : int, keyword-only
        geometry : LorentzGeometry, keyword-only
            Its curvature is used.

        Returns
        -------
        torch.Tensor
            ``features`` without axis ``dim``, space components, float32 (float64 for float64 input).
        """
        (geometry,) = self._geometry_args(geometry)
        with autocast_disabled(features.device):
            c = geometry.curvature()
            return space_expmap0(space_logmap0(features, c).mean(dim), c, max_radius=self.max_radius)

    def value_range(self, k: int, d: int) -> tuple[float, float]:  # noqa: D102
        return (-math.inf, 0.0)

    def _pairwise(self, a, b, geometry):
        # space_cdist(..., sum_factors=True) with the sign and 1/sqrt(c) folded into one (n, m) pass
        c = geometry.curvature().to(a.dtype)
        return _scaled_cdist_sum(a, b, c, self.precise) * (-torch.rsqrt(c))

    def _paired(self, a, b, geometry):
        return -space_dist(a, b, geometry.curvature()).sum(-1)


# --------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------
SimilarityFactory = Callable[[], Similarity]

_REGISTRY: dict[str, SimilarityFactory] = {
    "cosine": CosineSimilarity,
    "oblique": ObliqueSimilarity,
    "geodesic": GeodesicSimilarity,
    "chordal": ChordalSimilarity,
    "euclidean": EuclideanSimilarity,
    "lorentz": LorentzSimilarity,
}


def list_similarities() -> list[str]:
    """Return the registered similarity names, sorted."""
    return sorted(_REGISTRY)


def register_similarity(name: str, factory: SimilarityFactory, *, overwrite: bool = False) -> None:
    """Register a similarity under ``name``.

    Parameters
    ----------
    name : str
        Registry key, non-empty.
    factory : callable
        A :class:`Similarity` subclass or any zero-argument callable returning a :class:`Similarity`.
    overwrite : bool, keyword-only
        Replace an existing entry; without it registering a taken name raises ``ValueError``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise ValueError(f"`factory` must be a Similarity subclass or a callable, got {type(factory).__name__}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(
            f"similarity '{name}' is already registered; pass overwrite=True to replace it "
            f"(registered: {', '.join(list_similarities())})"
        )
    _REGISTRY[name] = factory


def _check_options(name: str, factory: SimilarityFactory, options: dict) -> None:
    """Refuse keyword options ``factory`` does not take, naming those it does."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable: let the call itself decide
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items()
                if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"similarity {name!r} takes no option(s) {unknown}; accepted: "
                         f"{', '.join(accepted) or 'none'}")


def get_similarity(name: Union[str, Similarity], **options) -> Similarity:
    """Look up a similarity by name (a new instance), or return a :class:`Similarity` as is.

    Parameters
    ----------
    name : str or Similarity
        One of :func:`list_similarities`, or an instance.
    **options
        Keyword arguments of the registered factory, e.g. ``squared=False`` for ``euclidean`` or
        ``curvature_init=0.5`` for ``lorentz``; the factory's own defaults hold for the others. Only
        with a name.

    Returns
    -------
    Similarity

    Raises
    ------
    ValueError
        Unknown name (the message lists the registered names), an option the factory does not take
        (the message lists those it takes), options with an instance, or a factory that returns no
        Similarity.
    """
    if isinstance(name, Similarity):
        if options:
            raise ValueError(f"options {sorted(options)} are only accepted with a similarity name, "
                             f"got an instance of {type(name).__name__}")
        return name
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(
            f"unknown similarity {name!r} for argument `name`; registered: {', '.join(list_similarities())}"
        )
    factory = _REGISTRY[name]
    if options:
        _check_options(name, factory, options)
    sim = factory(**options)
    if not isinstance(sim, Similarity):
        raise ValueError(f"the factory registered as '{name}' returned {type(sim).__name__}, not a Similarity")
    return sim
