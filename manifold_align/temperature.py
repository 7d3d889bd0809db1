"""Temperatures: the multiplicative scale applied to similarities before the contrastive loss.

Everything here speaks in SCALES (logits = scale * similarity), except the ``init`` of ``learnable``,
which is a temperature as in CLIP (``init=0.07`` starts at scale 1/0.07 = 14.29).

=============  =========================================================================
name           scale
=============  =========================================================================
none           1
fixed          ``scale``
learnable      ``exp(log_scale)`` clamped to [min_scale, max_scale]; log_scale = log(1/init)
cosine         cosine anneal from ``start`` (step ``warmup``) to ``end`` (step ``steps``)
linear         linear anneal, same end points
exponential    geometric anneal ``start * (end / start) ** t``, same end points
auto           the geometry's own default (:attr:`Geometry.default_temperature
               <manifold_align.geometries.Geometry.default_temperature>`): needs ``geometry=``
=============  =========================================================================

Schedules hold ``start`` during warmup (steps 0 .. warmup) and ``end`` after ``steps``; their step lives in a
buffer so it round-trips through ``state_dict``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Union

import torch
from torch import nn

from .bounds import clamped
from .registry import Registry

__all__ = [
    "CLIP_MAX_SCALE",
    "CLIP_TEMPERATURE",
    "TEMPERATURES",
    "FixedTemperature",
    "LearnableTemperature",
    "NoTemperature",
    "ScheduledTemperature",
    "Temperature",
    "get_temperature",
    "list_temperatures",
    "resolve_auto",
]


#: CLIP's initial temperature (scale 1/0.07 = 14.3) and the cap on its learned scale (Radford et al., 2021)
CLIP_TEMPERATURE = 0.07
CLIP_MAX_SCALE = 100.0


def _positive(value: Any, name: str) -> float:
    """Return ``value`` as float, raising ``ValueError`` naming ``name`` unless it is finite and > 0."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a positive number, got {value!r}") from None
    if not math.isfinite(out) or out <= 0:
        raise ValueError(f"`{name}` must be a positive finite number, got {value!r}")
    return out


class Temperature(nn.Module):
    """Base class: ``forward(similarity) = similarity * scale()``.

    Subclasses implement :meth:`scale`. :meth:`set_step` and :meth:`clamp_` are no-ops unless overridden.
    """

    def __init__(self) -> None:
        super().__init__()
        # Follows the module's device and dtype so scale() can be built where the module lives.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def scale(self) -> torch.Tensor:
        """Current multiplicative scale, a 0-dim tensor (> 0, unitless)."""
        raise NotImplementedError

    def forward(self, similarity: torch.Tensor) -> torch.Tensor:
        """Scale similarities into logits.

        Parameters
        ----------
        similarity : torch.Tensor, any shape

        Returns
        -------
        torch.Tensor, same shape: ``similarity * scale()``.
        """
        return similarity * self.scale()

    def value(self) -> float:
        """The current scale as a Python float, for logging."""
        return float(self.scale().detach())

    def set_step(self, step: int) -> None:
        """Set the training step (used by schedules; ignored otherwise)."""

    @torch.no_grad()
    def clamp_(self) -> "Temperature":
        """Project learnable parameters back into their allowed range (no-op unless learnable)."""
        return self


class NoTemperature(Temperature):
    """Scale 1: logits are the raw similarities."""

    def scale(self) -> torch.Tensor:  # noqa: D102
        return torch.ones((), dtype=self._anchor.dtype, device=self._anchor.device)

    def forward(self, similarity: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return similarity

    def extra_repr(self) -> str:  # noqa: D102
        return "scale=1"


class FixedTemperature(Temperature):
    """A constant scale.

    Parameters
    ----------
    scale : float
        The scale, > 0. Stored in the buffer ``fixed_scale``.
    """

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.register_buffer("fixed_scale", torch.tensor(_positive(scale, "scale")))

    def scale(self) -> torch.Tensor:  # noqa: D102
        return self.fixed_scale

    def extra_repr(self) -> str:  # noqa: D102
        return f"scale={self.value():.6g}"


class LearnableTemperature(Temperature):
    """CLIP's learnable scale: ``scale = exp(log_scale)`` clamped to [min_scale, max_scale].

    The clamp lives here, in :meth:`scale`, on ``log_scale`` (:func:`manifold_align.bounds.clamped`): the value
    never leaves the range. Its gradient is 0 while the scale is pinned at a bound and the loss pushes further
    out, and passes as soon as the loss pulls it back inside, so the scale can leave the cap; plain ``clamp``
    would freeze it there for good. :meth:`clamp_` additionally projects the parameter itself (what open_clip does
    in its train loop) -- optional, call it after ``optimizer.step()`` to keep optimizer state honest.

    Parameters
    ----------
    init : float, default CLIP_TEMPERATURE (0.07)
        Initial TEMPERATURE (> 0); the initial scale is ``1 / init``.
    max_scale : float, default CLIP_MAX_SCALE (100)
        Cap on the scale (> 0): 100 as in CLIP, 3.95 as in the oblique paper's runs.
    min_scale : float, default 0.0
        Floor on the scale (>= 0, < max_scale); 0 means no floor.
    """

    def __init__(self, init: float = CLIP_TEMPERATURE, max_scale: float = CLIP_MAX_SCALE, min_scale: float = 0.0) -> None:
        super().__init__()
        init = _positive(init, "init")
        self.max_scale = _positive(max_scale, "max_scale")
        self.min_scale = float(min_scale)
        if not (0.0 <= self.min_scale < self.max_scale):
            raise ValueError(f"`min_scale` must be in [0, max_scale={self.max_scale}), got {min_scale!r}")
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init)))

    def _log_bounds(self) -> tuple[float, float]:
        lo = math.log(self.min_scale) if self.min_scale > 0 else -math.inf
        return lo, math.log(self.max_scale)

    def scale(self) -> torch.Tensor:  # noqa: D102
        lo, hi = self._log_bounds()
        return clamped(self.log_scale, lo, hi).exp()

    @torch.no_grad()
    def clamp_(self) -> "LearnableTemperature":
        """Clamp the parameter ``log_scale`` in place to [log(min_scale), log(max_scale)]."""
        lo, hi = self._log_bounds()
        self.log_scale.clamp_(min=lo, max=hi)
        return self

    def extra_repr(self) -> str:  # noqa: D102
        return f"scale={self.value():.6g}, min_scale={self.min_scale:g}, max_scale={self.max_scale:g}"


class ScheduledTemperature(Temperature):
    """A scale annealed from ``start`` to ``end`` over training steps.

    ``scale(step) = start`` for ``step <= warmup``; ``end`` for ``step >= steps``; in between
    ``t = (step - warmup) / (steps - warmup)`` and

    * cosine: ``end + (start - end) * (1 + cos(pi * t)) / 2``
    * linear: ``start + (end - start) * t``
    * exponential: ``start * (end / start) ** t``

    Warmup holds ``start`` (rather than ramping from 1) so the scale is monotone over the whole run.

    Parameters
    ----------
    kind : {"cosine", "linear", "exponential"}
    start, end : float
        Scales (> 0) at step ``warmup`` and step ``steps``.
    steps : int
        Step at which ``end`` is reached (> warmup).
    warmup : int, default 0
        Steps held at ``start`` (>= 0).
    """

    kinds = ("cosine", "linear", "exponential")

    def __init__(self, kind: str, start: float, end: float, steps: int, warmup: int = 0) -> None:
        super().__init__()
        if kind not in self.kinds:
            raise ValueError(f"`kind` must be one of {', '.join(self.kinds)}, got {kind!r}")
        self.kind = kind
        self.start = _positive(start, "start")
        self.end = _positive(end, "end")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"`warmup` must be an integer >= 0, got {warmup!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps <= warmup:
            raise ValueError(f"`steps` must be an integer > warmup={warmup}, got {steps!r}")
        self.steps, self.warmup = steps, warmup
        # the buffer travels in state dicts; the host copy is what scale() reads, so that a GPU module
        # never reads device memory (a host-device sync) per call
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._host_step = 0

    def set_step(self, step: int) -> None:
        """Set the current step (>= 0)."""
        if int(step) < 0:
            raise ValueError(f"`step` must be >= 0, got {step!r}")
        self._host_step = int(step)
        self.step.fill_(self._host_step)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: D102
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "step" in state_dict:
            self._host_step = int(state_dict[prefix + "step"])

    def scale_at(self, step: int) -> float:
        """The scale at ``step`` as a float."""
        t = min(max((step - self.warmup) / (self.steps - self.warmup), 0.0), 1.0)
        if self.kind == "cosine":
            return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * t))
        if self.kind == "linear":
            return self.start + (self.end - self.start) * t
        return self.start * (self.end / self.start) ** t

    def scale(self) -> torch.Tensor:  # noqa: D102
        # a fill on the module's device: no host-to-device copy, no sync
        return self._anchor.new_full((), self.scale_at(self._host_step))

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"kind={self.kind}, start={self.start:g}, end={self.end:g}, steps={self.steps}, "
            f"warmup={self.warmup}, step={self._host_step}, scale={self.value():.6g}"
        )


def _schedule(kind: str):
    def factory(start: float, end: float, steps: int, warmup: int = 0) -> ScheduledTemperature:
        return ScheduledTemperature(kind, start=start, end=end, steps=steps, warmup=warmup)

    return factory


TEMPERATURES = Registry("temperature")
TEMPERATURES.register("none")(NoTemperature)
TEMPERATURES.register("fixed")(FixedTemperature)
TEMPERATURES.register("learnable")(LearnableTemperature)
for _kind in ScheduledTemperature.kinds:
    TEMPERATURES.register(_kind)(_schedule(_kind))


#: the name that defers to the geometry's own default temperature
AUTO = "auto"


def list_temperatures() -> list[str]:
    """Names accepted by :func:`get_temperature` (``"auto"`` needs its ``geometry``)."""
    return [*TEMPERATURES.names(), AUTO]


def get_temperature(
    name: Union[str, Mapping[str, Any], Temperature, None] = "none", *, geometry: Any = None, **kwargs: Any
) -> Temperature:
    """Build a temperature.

    Parameters
    ----------
    name : str, dict, Temperature or None
        One of :func:`list_temperatures`; a dict ``{"name": ..., **kwargs}``; an existing
        :class:`Temperature` (returned as is, no kwargs allowed); None means ``"none"``. ``"auto"``
        builds ``geometry.default_temperature`` (no kwargs allowed).
    geometry : Geometry or Geometry subclass, optional, keyword-only
        Needed by ``"auto"`` only; ignored otherwise.
    **kwargs
        Arguments of the chosen temperature (``scale``; ``init``, ``max_scale``, ``min_scale``;
        ``start``, ``end``, ``steps``, ``warmup``).

    Returns
    -------
    Temperature

    Raises
    ------
    ValueError
        Unknown name, unknown or missing keyword, or an out-of-range value; the message names the argument
        and the accepted values.
    """
    if isinstance(name, Temperature):
        if kwargs:
            raise ValueError(f"no keyword arguments allowed with a Temperature instance, got {sorted(kwargs)}")
        return name
    if name is None:
        name = "none"
    if isinstance(name, Mapping):
        cfg = dict(name)
        if "name" not in cfg:
            raise ValueError(f"a temperature dict needs a 'name' key, one of {', '.join(list_temperatures())}; "
                             f"got {cfg!r}")
        name = cfg.pop("name")
        kwargs = {**cfg, **kwargs}
    if name == AUTO:
        return get_temperature(resolve_auto({"name": AUTO, **kwargs}, geometry))
    if name not in TEMPERATURES:
        raise ValueError(f"unknown temperature {name!r} for argument `name`; accepted: "
                         f"{', '.join(list_temperatures())}")
    try:
        return TEMPERATURES.build(name, **kwargs)
    except TypeError as err:  # missing required keyword
        raise ValueError(f"temperature '{name}' needs arguments {TEMPERATURES.accepted_options(name)}: {err}") from None


def resolve_auto(name: Any, geometry: Any = None) -> Any:
    """``name`` with ``"auto"`` (or ``{"name": "auto"}``) replaced by ``geometry.default_temperature``.

    The one place ``"auto"`` is resolved: builders call it once, so a saved configuration names the concrete
    temperature and a resumed run keeps it whatever a later version's default is.

    Parameters
    ----------
    name : str, dict, Temperature or None
        Anything :func:`get_temperature` accepts; returned unchanged unless it is ``"auto"``.
    geometry : Geometry or Geometry subclass, optional
        Needed when ``name`` is ``"auto"``.

    Returns
    -------
    The concrete spec: a copy of the geometry's ``default_temperature`` dict, or ``name``.

    Raises
    ------
    ValueError
        ``"auto"`` without a geometry, with options, or with a geometry whose default is ``"auto"``.
    """
    if isinstance(name, Mapping) and name.get("name") == AUTO:
        options = sorted(set(name) - {"name"})
        if options:
            raise ValueError(f"temperature '{AUTO}' takes no options (it is the geometry's own default), "
                             f"got {options}")
    elif not (isinstance(name, str) and name == AUTO):
        return name
    spec = getattr(geometry, "default_temperature", None)
    if spec is None:
        raise ValueError(f"temperature '{AUTO}' is the geometry's own default: pass `geometry` (a Geometry), "
                         f"got {type(geometry).__name__}")
    if spec == AUTO or isinstance(spec, Mapping) and spec.get("name") == AUTO:
        raise ValueError(f"geometry {getattr(geometry, 'name', geometry)!r} declares default_temperature '{AUTO}'; "
                         f"it must name a concrete temperature")
    return dict(spec) if isinstance(spec, Mapping) else spec
