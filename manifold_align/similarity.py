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
============  ===============================================  =========================

Register your own with :func:`register_similarity`.
"""

from __future__ import annotations

import abc
import math
from typing import Callable, Union

import torch
import torch.nn.functional as F

from .dtypes import autocast_disabled
from .manifolds.oblique import Oblique
from .validation import check_on_manifold as _refuse_off_manifold
from .validation import check_rank, describe_shape

_OBLIQUE = Oblique()

__all__ = [
    "ChordalSimilarity",
    "CosineSimilarity",
    "GeodesicSimilarity",
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
    """

    name: str = "abstract"
    #: shape text used in error messages
    expected_shape: str = "(N, k, d)"
    #: the manifold in words, used in error messages
    manifold_text: str = "OB(d, k), every token (row of the last axis) of unit norm"

    # ---- to implement ---------------------------------------------------------------------------
    @abc.abstractmethod
    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Map raw features onto this similarity's manifold.

        Parameters
        ----------
        features : torch.Tensor, shape (N, k, d)

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
    def pairwise(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Similarity of every row of ``a`` with every row of ``b``.

        Parameters
        ----------
        a : torch.Tensor, shape (Na, k, d)
            Projected features (see :meth:`project`).
        b : torch.Tensor, shape (Nb, k, d)
            Projected features with the same (k, d).

        Returns
        -------
        torch.Tensor, shape (Na, Nb)
            float32 (float64 if an input is float64), also under autocast; values in :meth:`value_range`.
        """
        a, b = self._check(a, b)
        with autocast_disabled(a.device):
            return self._pairwise(_upcast(a), _upcast(b))

    def paired(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Similarity of row i of ``a`` with row i of ``b`` (the positives), ``diag(pairwise(a, b))``.

        Parameters
        ----------
        a, b : torch.Tensor, shape (N, k, d)
            Projected features.

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
        with autocast_disabled(a.device):
            return self._paired(_upcast(a), _upcast(b))

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
    expected_shape = "(N, D) or (N, k, d)"
    manifold_text = "the unit sphere S^(D-1), every (flattened) row of unit norm"

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """L2-normalize the flattened vector.

        Parameters
        ----------
        features : torch.Tensor, shape (N, D) or (N, k, d)

        Returns
        -------
        torch.Tensor, shape (N, D) or (N, k * d), unit norm rows.
        """
        check_rank(features, "features", 2, self.expected_shape)
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

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """L2-normalize each token.

        Parameters
        ----------
        features : torch.Tensor, shape (N, k, d)

        Returns
        -------
        torch.Tensor, shape (N, k, d), unit norm along the last axis.
        """
        check_rank(features, "features", 3, self.expected_shape)
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


# --------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------
SimilarityFactory = Callable[[], Similarity]

_REGISTRY: dict[str, SimilarityFactory] = {
    "cosine": CosineSimilarity,
    "oblique": ObliqueSimilarity,
    "geodesic": GeodesicSimilarity,
    "chordal": ChordalSimilarity,
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


def get_similarity(name: Union[str, Similarity]) -> Similarity:
    """Look up a similarity by name (a new instance), or return a :class:`Similarity` as is.

    Parameters
    ----------
    name : str or Similarity
        One of :func:`list_similarities`, or an instance.

    Returns
    -------
    Similarity

    Raises
    ------
    ValueError
        Unknown name (the message lists the registered names), or a factory that returns no Similarity.
    """
    if isinstance(name, Similarity):
        return name
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(
            f"unknown similarity {name!r} for argument `name`; registered: {', '.join(list_similarities())}"
        )
    sim = _REGISTRY[name]()
    if not isinstance(sim, Similarity):
        raise ValueError(f"the factory registered as '{name}' returned {type(sim).__name__}, not a Similarity")
    return sim
