"""Manifolds, one package each (the geoopt class in ``__init__``, the functional math in ``math``), and the
row-wise helpers they share (:mod:`.rows`)."""

from .lorentz import Hyperboloid, HyperboloidExact
from .oblique import Oblique, ObliqueExact

__all__ = ["Hyperboloid", "HyperboloidExact", "Oblique", "ObliqueExact"]
