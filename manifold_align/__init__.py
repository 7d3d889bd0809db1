"""manifold-align: geometry-aware contrastive learning.

The oblique manifold OB(d, k) as a ``geoopt.Manifold``, pluggable similarities, temperatures and
contrastive losses for CLIP-style image-text training.
"""

from . import optim
from .losses import ContrastiveLoss, ContrastiveLossOutput
from .manifolds import Oblique, ObliqueExact
from .similarity import Similarity, get_similarity, list_similarities, register_similarity
from .temperature import Temperature, get_temperature

__version__ = "0.1.0"

__all__ = [
    "ContrastiveLoss",
    "ContrastiveLossOutput",
    "Oblique",
    "ObliqueExact",
    "Similarity",
    "Temperature",
    "get_similarity",
    "get_temperature",
    "list_similarities",
    "optim",
    "register_similarity",
]
