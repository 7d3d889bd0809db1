"""manifold-align: geometry-aware contrastive learning.

The oblique manifold OB(d, k) as a ``geoopt.Manifold``, pluggable similarities, temperatures and
contrastive losses for CLIP-style image-text training.
"""

from . import optim
from .entailment import entailment_loss
from .geometries import LorentzGeometry
from .losses import ContrastiveLoss, ContrastiveLossOutput
from .manifolds import Hyperboloid, HyperboloidExact, Oblique, ObliqueExact
from .similarity import Similarity, get_similarity, list_similarities, register_similarity
from .temperature import Temperature, get_temperature

__version__ = "0.1.0"

__all__ = [
    "ContrastiveLoss",
    "ContrastiveLossOutput",
    "Hyperboloid",
    "HyperboloidExact",
    "LorentzGeometry",
    "Oblique",
    "ObliqueExact",
    "Similarity",
    "Temperature",
    "entailment_loss",
    "get_similarity",
    "get_temperature",
    "list_similarities",
    "optim",
    "register_similarity",
]
