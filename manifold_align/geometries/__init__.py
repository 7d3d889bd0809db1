"""Embedding geometries: one module per geometry, looked up by name.

==========  =============================================================  ======================
name        score of features x, y (k tokens; u_b, v_b normalized tokens)  range
==========  =============================================================  ======================
cosine      <u, v> of the whole flattened vector (one sphere, CLIP)        [-1, 1]
oblique     sum_b <u_b, v_b> (OB(d, k), the paper's)                       [-k, k]
geodesic    -sqrt(sum_b theta_b^2), theta_b = angle(u_b, v_b)              [-pi sqrt(k), 0]
chordal     -sum_b |u_b - v_b|^2 = -(2k - 2 oblique)                       [-4k, 0]
euclidean   -sum_b |x_b - y_b|^2 of raw features (EuCLIP)                  (-inf, 0]
lorentz     -sum_b d_H(x_b, y_b) on k hyperboloids (MERU)                  (-inf, 0]
==========  =============================================================  ======================

Each is a :class:`Geometry` (an ``nn.Module``): it projects, scores, averages, owns its learnable parameters and
extra loss terms. :func:`get_geometry` builds one by name; :func:`register_geometry` adds your own, and a geometry
of another installed package is found by name through the ``manifold_align.geometries`` entry-point group
(``docs/geometries.md`` shows both).
"""

from __future__ import annotations

from typing import Any

from ..registry import Registry
from .base import MODALITIES, Geometry, LossTerm, scale_scores

__all__ = [
    "GEOMETRIES",
    "MODALITIES",
    "Geometry",
    "LossTerm",
    "geometry_class",
    "get_geometry",
    "list_geometries",
    "register_geometry",
    "scale_scores",
]

#: the geometry registry; other packages add to it through the ``manifold_align.geometries`` entry points
GEOMETRIES = Registry("geometry", entry_point_group="manifold_align.geometries")

#: arguments every geometry takes from the caller, not options
_SHAPE_ARGUMENTS = ("n_tokens", "token_dim")


def register_geometry(name: str, *, overwrite: bool = False):
    """Class decorator registering a :class:`Geometry` subclass under ``name`` (sets its ``name``).

    Parameters
    ----------
    name : str
        Registry key, non-empty.
    overwrite : bool, keyword-only
        Replace an existing entry; without it a taken name raises ``ValueError``.
    """
    register = GEOMETRIES.register(name, overwrite=overwrite)

    def decorator(cls):
        if not (isinstance(cls, type) and issubclass(cls, Geometry)):
            raise ValueError(f"register_geometry({name!r}) decorates Geometry subclasses, got {cls!r}")
        return register(cls)

    return decorator


def list_geometries() -> list[str]:
    """The registered geometry names, built-in and from installed packages, sorted."""
    return GEOMETRIES.names()


def geometry_class(name: str) -> type[Geometry]:
    """The :class:`Geometry` subclass registered as ``name`` (``ValueError`` listing the names if unknown)."""
    cls = GEOMETRIES.factory(name)
    if not (isinstance(cls, type) and issubclass(cls, Geometry)):
        raise ValueError(f"the factory registered as geometry {name!r} is {cls!r}, not a Geometry subclass")
    return cls


def check_geometry_options(name: str, options: dict[str, Any]) -> None:
    """Raise ``ValueError`` for an unknown geometry or options it does not take (nothing is built)."""
    geometry_class(name)
    GEOMETRIES.check_options(name, dict(options), reserved=_SHAPE_ARGUMENTS)


def get_geometry(name: str, *, n_tokens: int, token_dim: int, **options: Any) -> Geometry:
    """Build the geometry registered as ``name`` for ``n_tokens`` tokens of ``token_dim`` dims.

    Parameters
    ----------
    name : str
        One of :func:`list_geometries`.
    n_tokens, token_dim : int, keyword-only
        ``k`` and ``d``.
    **options
        The geometry's own options (``squared=False`` for ``euclidean``; ``curvature_init``,
        ``entailment_weight`` for ``lorentz``); its defaults hold for the rest.

    Returns
    -------
    Geometry

    Raises
    ------
    ValueError
        Unknown name (the message lists the built-in and installed names), an option the geometry does not
        take (the message lists those it takes), or a value it refuses.
    """
    check_geometry_options(name, options)
    return geometry_class(name)(n_tokens=n_tokens, token_dim=token_dim, **options)


def _import_builtins() -> None:
    """Import every module of this package: each built-in registers itself, so adding one is adding its file."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")


_import_builtins()
