"""The benchmark's one link to the library's geometry API: every other module of the package goes through here.

A geometry is named by its registry name and options. :func:`build` returns an ``nn.Module`` with the
library's geometry interface, which the fast mode trains and evaluates without knowing which geometry it is:

- ``project(features, modality="image"|"text")``: raw features (N, k, d) onto the geometry's space;
- ``pairwise(a, b)`` (Na, Nb) and ``paired(a, b)`` (N,): scores;
- ``mean(features, dim=1)``: the mean of points over an axis (the zero-shot class prototype);
- ``values()``: its learned 0-dim values by name (``{}`` for a parameter-free geometry);
- ``default_temperature``: the ``get_temperature`` spec it trains with by default;
- its parameters (``.parameters()``), trained with the towers.

:func:`temperature` builds a temperature from its spec, :func:`contrastive_loss` is the library's loss for one such geometry. The full mode selects the geometry of a
``manifold-align train`` run with the configuration keys :data:`CONFIG_KEY` and :data:`OPTIONS_KEY`.

Today's library spells this API as a ``Similarity`` (formula and registry) plus the module its
``make_geometry`` builds (learned parameters); :class:`_SimilarityGeometry` joins the two into one module.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

#: run-configuration key naming the geometry of a ``manifold-align train`` run
CONFIG_KEY = "loss.similarity"
#: run-configuration section of the geometry's options (``OPTIONS_KEY.<option>=<value>``)
OPTIONS_KEY = "loss.similarity_options"


def list_geometries() -> list[str]:
    """Names of the registered geometries: built in, and registered by other packages."""
    from manifold_align import list_similarities

    return list(list_similarities())


def default_temperature(name: str, **options: Any) -> dict:
    """The ``get_temperature`` spec geometry ``name`` trains with by default (a copy).

    Raises
    ------
    ValueError
        For an unknown name (the message lists the registered ones) or options it does not take.
    """
    from manifold_align import get_similarity

    return dict(get_similarity(name, **options).default_temperature)


def build(name: str, *, n_tokens: int, token_dim: int, **options: Any) -> nn.Module:
    """Geometry ``name`` with ``options`` for embeddings of ``n_tokens`` tokens of ``token_dim`` dims.

    Parameters
    ----------
    name : str
        A registered geometry (:func:`list_geometries`).
    n_tokens, token_dim : int
        k and d of the embeddings, shape (N, k, d).
    **options
        The geometry's own options (``lorentz``: ``curvature_init``, ...).

    Returns
    -------
    nn.Module
        With ``project``, ``pairwise``, ``paired``, ``mean``, ``values`` and ``default_temperature``.
    """
    return _SimilarityGeometry(name, n_tokens=n_tokens, token_dim=token_dim, **options)


def temperature(spec: dict) -> nn.Module:
    """The temperature of a ``get_temperature`` spec (``{"name": "learnable", "init": 0.07, ...}``): a module
    whose ``scale()`` is the 0-dim multiplicative scale on the scores."""
    from manifold_align import get_temperature

    return get_temperature(dict(spec))


def contrastive_loss(geometry: nn.Module) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The library's contrastive loss scored by ``geometry``: ``loss(image, text, logit_scale) -> 0-dim tensor``.

    ``image`` and ``text`` are projected features (``geometry.project``), matched by row; ``logit_scale``
    is the temperature's multiplicative scale (0-dim tensor).
    """
    from manifold_align import ContrastiveLoss

    loss = ContrastiveLoss(geometry.similarity)

    def call(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
        return loss(image, text, logit_scale=logit_scale, geometry=geometry.parameters_module).loss

    return call


class _SimilarityGeometry(nn.Module):
    """Today's ``Similarity`` and the parameter module of its ``make_geometry``, as one geometry module."""

    def __init__(self, name: str, *, n_tokens: int, token_dim: int, **options: Any) -> None:
        super().__init__()
        from manifold_align import get_similarity

        self.name, self.n_tokens, self.token_dim = name, n_tokens, token_dim
        self.similarity = get_similarity(name, **options)
        # registered as a child (or None), so that .parameters() and .to() reach the learned values
        self.parameters_module = self.similarity.make_geometry(d=token_dim)
        self.default_temperature = dict(self.similarity.default_temperature)

    def project(self, features: torch.Tensor, modality: str = "image") -> torch.Tensor:
        """Raw features (N, k, d) onto the geometry's space (cosine: (N, k * d))."""
        return self.similarity.project(features, geometry=self.parameters_module, modality=modality)

    def pairwise(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Scores of every row of ``a`` with every row of ``b``, shape (Na, Nb)."""
        return self.similarity.pairwise(a, b, geometry=self.parameters_module)

    def paired(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Scores of row i of ``a`` with row i of ``b``, shape (N,)."""
        return self.similarity.paired(a, b, geometry=self.parameters_module)

    def mean(self, features: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """The geometry's mean of projected points over axis ``dim`` (removed), a point of its space."""
        return self.similarity.mean(features, dim=dim, geometry=self.parameters_module)

    def values(self) -> dict[str, torch.Tensor]:
        """Learned values by name, 0-dim tensors (``{}`` without learned parameters)."""
        if self.parameters_module is None:
            return {}
        return {key: torch.tensor(value) for key, value in self.parameters_module.values().items()}
