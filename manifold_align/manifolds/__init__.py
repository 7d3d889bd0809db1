"""Manifolds: one per module, re-exported here."""

from .lorentz import Hyperboloid, HyperboloidExact
from .oblique import Oblique, ObliqueExact

__all__ = ["Hyperboloid", "HyperboloidExact", "Oblique", "ObliqueExact"]
