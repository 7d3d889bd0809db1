"""A typed-configuration engine: nested dataclasses built from plain data, checked key by key.

:func:`build_dataclass` builds a (nested) dataclass from a mapping, refusing unknown keys (with the closest valid
ones) and values of the wrong type or outside the range a field's :class:`Check` states;
:func:`apply_overrides` merges dotted ``key=value`` items into plain data. The schema, the run configuration's
dataclasses, lives in :mod:`manifold_align_train.config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional, Sequence, Union

import yaml

__all__ = ["Check", "ConfigError", "apply_overrides", "build_dataclass", "checked", "one_of"]


class ConfigError(ValueError):
    """A configuration key is unknown or its value has the wrong type or range."""


@dataclass(frozen=True)
class Check:
    """A field's range check: ``accepts(value)`` must hold; ``expected`` says what is accepted, in words.

    ``expected`` may be a zero-argument callable, for lists of names read from a registry when the check
    fails (a geometry registered after import is accepted).
    """

    accepts: Callable[[Any], bool]
    expected: Union[str, Callable[[], str]]
    #: the accepted names, for "did you mean" hints; None for numeric checks
    names: Optional[Callable[[], Sequence[str]]] = None

    def describe(self, value: Any) -> str:
        """What is accepted, in words, with the closest accepted name to ``value`` if there is one."""
        text = self.expected() if callable(self.expected) else self.expected
        if self.names is not None and isinstance(value, str):
            close = difflib.get_close_matches(value, list(self.names()), n=1)
            if close:
                text += f"; did you mean {close[0]!r}?"
        return text


def checked(default: Any = dataclasses.MISSING, *, check: Check, default_factory: Any = dataclasses.MISSING):
    """A dataclass field that carries its range check (run by :func:`config_from_dict`)."""
    return field(default=default, default_factory=default_factory, metadata={"check": check})


def one_of(names: Callable[[], Sequence[str]]) -> Check:
    """Accept the names a registry lists at check time."""
    return Check(lambda v: v in names(), lambda: "one of " + ", ".join(repr(n) for n in names()), names)


def _unknown_key(key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"unknown configuration key '{key}'{hint} (valid keys here: {', '.join(valid)})")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the field type ``tp``; return it (ints widen to float)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"bad value {value!r} for '{key}': expected {_type_name(tp)}{hint}")
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"bad value {value!r} for '{key}': expected {_type_name(tp)}")
    if origin is dict or tp is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"bad value {value!r} for '{key}': expected a mapping of names to values")
        return dict(value)
    # bool is an int subclass: keep `steps: true` from passing as 1.
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp)
    if ok is None:
        raise TypeError(f"configuration field '{key}' has an unsupported type {tp!r}")
    if not ok:
        raise ConfigError(
            f"bad value {value!r} ({type(value).__name__}) for '{key}': expected {_type_name(tp)}"
        )
    return float(value) if tp is float else value


def build_dataclass(cls: type, values: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys and types recursively."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"'{prefix or 'config'}' must be a mapping of keys to values, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise _unknown_key(dotted, list(fields))
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build_dataclass(tp, value, dotted)
            continue
        kwargs[key] = _coerce(value, tp, dotted)
        check = fields[key].metadata.get("check")
        if check is not None and kwargs[key] is not None and not check.accepts(kwargs[key]):
            raise ConfigError(f"bad value {value!r} for '{dotted}': expected {check.describe(value)}")
    return cls(**kwargs)


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like key=value, e.g. model.geometry=cosine")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse the value of override {item!r}: {exc}") from None
    return key.strip().split("."), value


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Merge dotted ``key=value`` overrides into nested plain data (values parsed as YAML).

    Parameters
    ----------
    values : dict
        Nested plain data, e.g. a loaded YAML file; not modified.
    overrides : list of str
        ``["model.geometry=cosine", "train.steps=500"]``.

    Returns
    -------
    dict
        A new nested dict; unknown keys are caught later, by :func:`config_from_dict`.
    """
    merged = _deep_copy(values)
    for item in overrides:
        path, value = _parse_override(item)
        node = merged
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if not isinstance(child, dict):
                if child is not None:
                    raise ConfigError(f"'{'.'.join(path[: i + 1])}' is a value, not a section")
                child = node[part] = {}
            node = child
        node[path[-1]] = value
    return merged


def _deep_copy(values: Any) -> Any:
    if isinstance(values, dict):
        return {k: _deep_copy(v) for k, v in values.items()}
    return values
