"""The benchmark's one link to the library's geometry API: every other module of the package goes through here.

A geometry is named by its registry name and options (``manifold_align.list_geometries()``: the built-in ones
and those other installed packages declare). :func:`build` returns the library's ``Geometry``, an ``nn.Module``
that the fast mode trains and evaluates without knowing which geometry it is:

- ``project(features, modality="image"|"text")``: raw features (N, k, d) onto the geometry's space;
- ``pairwise(a, b)`` (Na, Nb) and ``paired(a, b)`` (N,): scores;
- ``mean(points, dim=1)``: the mean of points over an axis (the zero-shot class prototype);
- ``values()``: its learned 0-dim values by name (``{}`` for a parameter-free geometry);
- ``default_temperature``: the ``get_temperature`` spec it trains with by default;
- ``clamp_()``: its parameters projected into their ranges after an optimizer step;
- its parameters (``.parameters()``), trained with the towers, and its extra loss terms, which
  :func:`contrastive_loss` adds.

The full mode selects the geometry of a ``manifold-align train`` run with the configuration keys
:data:`CONFIG_KEY` and :data:`OPTIONS_KEY`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

#: run-configuration key naming the geometry of a ``manifold-align train`` run
CONFIG_KEY = "model.geometry"
#: run-configuration section of the geometry's options (``OPTIONS_KEY.<option>=<value>``)
OPTIONS_KEY = "model.geometry_options"


def list_geometries() -> list[str]:
    """Names of the registered geometries: built in, and registered by other packages."""
    from manifold_align import list_geometries as registered

    return list(registered())


def default_temperature(name: str, **options: Any) -> dict:
    """The ``get_temperature`` spec geometry ``name`` trains with by default (a copy; nothing is built).

    Raises
    ------
    ValueError
        For an unknown name (the message lists the registered ones) or options it does not take.
    """
    from manifold_align.geometries import check_geometry_options, geometry_class

    check_geometry_options(name, options)
    return dict(geometry_class(name).default_temperature)


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
    manifold_align.Geometry
    """
    from manifold_align import get_geometry

    return get_geometry(name, n_tokens=n_tokens, token_dim=token_dim, **options)


def temperature(spec: dict) -> nn.Module:
    """The temperature of a ``get_temperature`` spec (``{"name": "learnable", "init": 0.07, ...}``): a module
    whose ``scale()`` is the 0-dim multiplicative scale on the scores."""
    from manifold_align import get_temperature

    return get_temperature(dict(spec))


def contrastive_loss(geometry: nn.Module, *, tile_size="auto") -> Callable[..., torch.Tensor]:
    """The library's contrastive loss scored by ``geometry`` (its extra terms included):
    ``loss(image, text, logit_scale, class_ids=None) -> 0-dim tensor``.

    ``image`` and ``text`` are projected features (``geometry.project``), matched by row; ``logit_scale``
    is the temperature's multiplicative scale (0-dim tensor); ``class_ids`` (N,), int64, when given, leaves
    the same-class pairs out of the negatives. ``tile_size``: the library's (``"auto"``: scores tiled once a batch
    has more than 2^24 of them, so memory stays linear in N beyond N = 4096; an int: tiles of that side).
    """
    from manifold_align import ContrastiveLoss

    loss = ContrastiveLoss(geometry, tile_size=tile_size)

    def call(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
             class_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        return loss(image, text, logit_scale, class_ids=class_ids).loss

    return call
