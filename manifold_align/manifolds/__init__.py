"""Manifolds: one per module, re-exported here."""

from .oblique import Oblique, ObliqueExact

__all__ = ["Oblique", "ObliqueExact"]
