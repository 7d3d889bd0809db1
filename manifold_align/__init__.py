"""manifold-align: geometry-aware contrastive learning.

The oblique manifold OB(d, k) as a ``geoopt.Manifold``, embedding geometries (sphere, oblique, hyperbolic,
Euclidean; your own by registration), temperatures and contrastive losses for CLIP-style image-text training. The
multi-token CLIP model lives in :mod:`manifold_align.clip`, imported on first use (it imports open_clip, which takes
seconds).
"""

from . import _geoopt  # noqa: F401  (first: geoopt without its import-time FutureWarning)
from . import optim
from .manifolds.lorentz.cone import entailment_loss
from .geometries import Geometry, get_geometry, list_geometries, register_geometry
from .geometries.lorentz import LorentzGeometry
from .losses import ContrastiveLoss, ContrastiveLossOutput
from .manifolds import Hyperboloid, HyperboloidExact, Oblique, ObliqueExact
from .temperature import Temperature, get_temperature, list_temperatures

__version__ = "0.1.0"

__all__ = [
    "ContrastiveLoss",
    "ContrastiveLossOutput",
    "Geometry",
    "Hyperboloid",
    "HyperboloidExact",
    "LorentzGeometry",
    "Oblique",
    "ObliqueExact",
    "Temperature",
    "clip",
    "entailment_loss",
    "get_geometry",
    "get_temperature",
    "list_geometries",
    "list_temperatures",
    "optim",
    "register_geometry",
]


def __getattr__(name):
    # `manifold_align.clip` without an explicit import: load the subpackage on first use
    if name == "clip":
        import importlib

        return importlib.import_module(f"{__name__}.clip")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
