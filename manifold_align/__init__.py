"""manifold-align: geometry-aware contrastive learning.

The oblique manifold OB(d, k) as a ``geoopt.Manifold``, pluggable similarities, temperatures and
contrastive losses for CLIP-style image-text training. The multi-token CLIP model lives in
:mod:`manifold_align.clip`, imported on first use (it imports open_clip, which takes seconds).
"""

from . import _geoopt  # noqa: F401  (first: geoopt without its import-time FutureWarning)
from . import optim
from .manifolds.lorentz.cone import entailment_loss
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
    "clip",
    "entailment_loss",
    "get_similarity",
    "get_temperature",
    "list_similarities",
    "optim",
    "register_similarity",
]


def __getattr__(name):
    # `manifold_align.clip` without an explicit import: load the subpackage on first use
    if name == "clip":
        import importlib

        return importlib.import_module(f"{__name__}.clip")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
