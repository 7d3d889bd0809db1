"""The embedding geometry of a multi-token model: ``k`` tokens of ``d`` dims, similarity, temperature.

:class:`EmbedConfig` is validated once, when it is built; it is the ``"embed_cfg"`` key of a model JSON
file in open_clip's format.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

from manifold_align.losses import OBJECTIVES
from manifold_align.similarity import Similarity, get_similarity, list_similarities
from manifold_align.temperature import get_temperature, resolve_auto

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
        ``k``, the number of class tokens per tower, ``>= 1``.
    token_dim : int
        ``d``, the dims of each token, ``>= 2``.
    similarity : str or Similarity
        A name from :func:`manifold_align.list_similarities` (``"oblique"``, ``"cosine"``, ...) or an
        instance; its ``project`` puts the features on its manifold.
    similarity_options : dict
        Keyword arguments of the named similarity (:func:`manifold_align.get_similarity`), e.g.
        ``{"squared": False}`` for ``euclidean``, ``{"curvature_init": 0.5, "learn_curvature": False}``
        for ``lorentz``; empty (the default) keeps the similarity's own defaults. Must be empty with an
        instance.
    temperature : str, dict or Temperature
        Anything :func:`manifold_align.get_temperature` accepts, e.g. ``{"name": "learnable",
        "init": 0.07, "max_scale": 100.0}``. ``"auto"`` (the default) is replaced, when the config is
        built, by the similarity's own (``Similarity.default_temperature``: none for ``oblique``, CLIP's
        for ``cosine``), so that a saved config names the temperature it trained with.
    objective : str
        ``"softmax"`` (InfoNCE) or ``"sigmoid"`` (SigLIP; the model then owns a ``logit_bias``).
    bias_init : float
        Initial ``logit_bias`` for the sigmoid objective.
    embed_dim : int or None
        Declared total width; when given it must equal ``n_tokens * token_dim``.
    class_tokens : int or None
        Class tokens each tower carries; None means ``n_tokens`` (one token per sphere). A divisor of
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
    similarity: Union[str, Similarity] = "oblique"
    similarity_options: dict[str, Any] = field(default_factory=dict)
    temperature: Any = "auto"
    objective: str = "softmax"
    bias_init: float = -10.0
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
        self._check_similarity()
        if self.objective not in OBJECTIVES:
            raise EmbedConfigError("objective",
                                   f"`embed_cfg.objective` = {self.objective!r}; accepted: {', '.join(OBJECTIVES)}")
        try:
            self.temperature = resolve_auto(self.temperature, self.make_similarity())
            get_temperature(self.temperature)
        except ValueError as exc:
            raise EmbedConfigError("temperature", f"`embed_cfg.temperature`: {exc}") from None

    def _check_similarity(self) -> None:
        if not isinstance(self.similarity, Similarity) and self.similarity not in list_similarities():
            raise EmbedConfigError(
                "similarity", f"`embed_cfg.similarity` = {self.similarity!r} is unknown; accepted: "
                f"{', '.join(list_similarities())} or a Similarity instance"
            )
        if not isinstance(self.similarity_options, Mapping):
            raise EmbedConfigError("similarity_options", f"`embed_cfg.similarity_options` must be a mapping of "
                                   f"option names to values, got {self.similarity_options!r}")
        try:
            # the geometry too: its constructor checks the values (a curvature <= 0, say); three scalars
            self.make_similarity().make_geometry(d=self.token_dim)
        except (TypeError, ValueError) as exc:
            raise EmbedConfigError("similarity_options", f"`embed_cfg.similarity_options` = "
                                   f"{dict(self.similarity_options)!r} for similarity {self.similarity_name!r}: "
                                   f"{exc}") from None

    def make_similarity(self) -> Similarity:
        """The similarity with its options: a new instance from the name (the given one if an instance)."""
        return get_similarity(self.similarity, **dict(self.similarity_options))

    @property
    def similarity_name(self) -> str:
        """The similarity's registry name."""
        return self.similarity.name if isinstance(self.similarity, Similarity) else self.similarity

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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (a Similarity instance is written by its name)."""
        out = dataclasses.asdict(self)
        if isinstance(self.similarity, Similarity):
            out["similarity"] = self.similarity.name
        return out
