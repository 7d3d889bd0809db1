"""The embedding of a multi-token model: ``k`` tokens of ``d`` dims, geometry, temperature, objective.

:class:`EmbedConfig` is validated once, when it is built; it is the ``"embed_cfg"`` key of a model JSON
file in open_clip's format.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

from manifold_align.geometries import GEOMETRIES, Geometry, check_geometry_options, get_geometry, list_geometries
from manifold_align.losses import OBJECTIVES, SIGLIP_BIAS_INIT
from manifold_align.temperature import AUTO, TEMPERATURES, resolve_auto

__all__ = ["EmbedConfig", "EmbedConfigError"]


class EmbedConfigError(ValueError):
    """A field of :class:`EmbedConfig` is out of range; ``field`` names it (``"token_dim"``)."""

    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field = field_name


@dataclass
class EmbedConfig:
    """Shape and scoring of the embeddings: points of OB(d, k), shape ``(B, k, d)``.

    Parameters
    ----------
    n_tokens : int
        ``k``, the number of tokens per embedding, ``>= 1``.
    token_dim : int
        ``d``, the dims of each token, ``>= 2``.
    geometry : str
        A name from :func:`manifold_align.list_geometries` (``"oblique"``, ``"cosine"``, ``"lorentz"``, or one
        registered by another package).
    geometry_options : dict
        Keyword options of the named geometry (:func:`manifold_align.get_geometry`), e.g. ``{"squared": False}``
        for ``euclidean``, ``{"curvature_init": 0.5, "entailment_weight": 0.2}`` for ``lorentz``; empty (the
        default) keeps the geometry's own defaults.
    temperature : str or dict
        Anything :func:`manifold_align.get_temperature` accepts by name, e.g. ``{"name": "learnable", "init":
        0.07, "max_scale": 100.0}``. ``"auto"`` (the default) is replaced, when the config is built, by the
        geometry's own (``Geometry.default_temperature``), so that a saved config names the temperature it
        trained with.
    objective : str
        ``"softmax"`` (InfoNCE) or ``"sigmoid"`` (SigLIP; the model then owns a ``logit_bias``).
    bias_init : float
        Initial ``logit_bias`` for the sigmoid objective (SigLIP's, ``SIGLIP_BIAS_INIT``).
    embed_dim : int or None
        Declared total width; when given it must equal ``n_tokens * token_dim``.
    class_tokens : int or None
        Class tokens each tower carries; None means ``n_tokens`` (one token per factor). A divisor of
        ``n_tokens``: each class token is projected to ``n_tokens / class_tokens`` blocks of ``token_dim``.
        ``class_tokens=1`` with ``n_tokens=16`` is the block control of the benchmarks: one 512-d token split
        into 16 blocks of 32, each normalized on its own sphere.

    Raises
    ------
    ValueError
        Naming the field, the accepted values and what arrived.
    """

    n_tokens: int = 16
    token_dim: int = 32
    geometry: str = "oblique"
    geometry_options: dict[str, Any] = field(default_factory=dict)
    temperature: Any = AUTO
    objective: str = "softmax"
    bias_init: float = SIGLIP_BIAS_INIT
    embed_dim: Optional[int] = None
    class_tokens: Optional[int] = None

    def __post_init__(self) -> None:
        self._check_int("n_tokens", self.n_tokens, 1)
        self._check_int("token_dim", self.token_dim, 2)
        if self.class_tokens is not None:
            self._check_int("class_tokens", self.class_tokens, 1)
            if self.n_tokens % self.class_tokens:
                raise EmbedConfigError(
                    "class_tokens",
                    f"`embed_cfg.class_tokens` = {self.class_tokens} must divide n_tokens = {self.n_tokens}; "
                    f"accepted: None or one of {[c for c in range(1, self.n_tokens + 1) if self.n_tokens % c == 0]}"
                )
        if self.embed_dim is not None and self.embed_dim != self.n_tokens * self.token_dim:
            raise EmbedConfigError(
                "embed_dim", f"`embed_cfg.embed_dim` = {self.embed_dim} must equal n_tokens * token_dim = "
                f"{self.n_tokens} * {self.token_dim} = {self.n_tokens * self.token_dim}"
            )
        self._check_geometry()
        if self.objective not in OBJECTIVES:
            raise EmbedConfigError("objective",
                                   f"`embed_cfg.objective` = {self.objective!r}; accepted: {', '.join(OBJECTIVES)}")
        self._check_temperature()

    def _check_geometry(self) -> None:
        if self.geometry not in GEOMETRIES:
            raise EmbedConfigError("geometry", f"`embed_cfg.geometry` = {self.geometry!r} is unknown; accepted: "
                                   f"{', '.join(list_geometries())}")
        if not isinstance(self.geometry_options, Mapping):
            raise EmbedConfigError("geometry_options", f"`embed_cfg.geometry_options` must be a mapping of option "
                                   f"names to values, got {self.geometry_options!r}")
        try:
            check_geometry_options(self.geometry, dict(self.geometry_options))
        except ValueError as exc:
            raise EmbedConfigError("geometry_options", f"`embed_cfg.geometry_options`: {exc}") from None

    def _check_temperature(self) -> None:
        try:
            self.temperature = resolve_auto(self.temperature, GEOMETRIES.factory(self.geometry))
            spec = {"name": self.temperature} if isinstance(self.temperature, str) else dict(self.temperature)
            name = spec.pop("name", None)
            if name not in TEMPERATURES:
                raise ValueError(f"unknown temperature {name!r}; accepted: {', '.join(TEMPERATURES.names())}")
            TEMPERATURES.check_options(name, spec)
        except (TypeError, ValueError) as exc:
            raise EmbedConfigError("temperature", f"`embed_cfg.temperature`: {exc}") from None

    def make_geometry(self) -> Geometry:
        """A new geometry module for this embedding (``ValueError`` naming ``geometry_options`` on a bad value)."""
        try:
            return get_geometry(self.geometry, n_tokens=self.n_tokens, token_dim=self.token_dim,
                                **dict(self.geometry_options))
        except ValueError as exc:
            raise EmbedConfigError("geometry_options", f"`embed_cfg.geometry_options` = "
                                   f"{dict(self.geometry_options)!r} for geometry {self.geometry!r}: {exc}") from None

    @staticmethod
    def _check_int(name: str, value: Any, minimum: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise EmbedConfigError(name, f"`embed_cfg.{name}` must be an int >= {minimum}, got {value!r}")

    @property
    def width(self) -> int:
        """``k * d``, the width of the flattened embedding."""
        return self.n_tokens * self.token_dim

    @property
    def tower_tokens(self) -> int:
        """Class tokens per tower: ``class_tokens``, or ``n_tokens`` when that is None."""
        return self.n_tokens if self.class_tokens is None else self.class_tokens

    @property
    def tower_token_dim(self) -> int:
        """Output width of each tower token: ``n_tokens * token_dim / tower_tokens``."""
        return self.width // self.tower_tokens

    @classmethod
    def from_dict(cls, cfg: Union["EmbedConfig", Mapping[str, Any], None]) -> "EmbedConfig":
        """Build from a mapping (the ``"embed_cfg"`` JSON key); unknown keys raise ``ValueError``."""
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(cfg) - set(known))
        if unknown:
            raise ValueError(f"unknown keys in `embed_cfg`: {unknown}; accepted keys: {known}")
        return cls(**cfg)
