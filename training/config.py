"""Typed run configuration: dataclasses, YAML loading and dotted ``--set`` overrides.

The dataclass defaults *are* the default run (the embedded digits data, OB(32, 16), tiny towers, CPU);
``configs/digits-oblique.yaml`` spells the same values out and a test keeps the two equal.

A configuration is validated once, when it is built (:func:`load_config`, :func:`config_from_dict`):
unknown keys and values of the wrong type or outside their range raise :class:`ConfigError` naming the
dotted key and, for a misspelled key, the closest valid ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

__all__ = [
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "LogConfig",
    "LossConfig",
    "ModelConfig",
    "RunConfig",
    "TemperatureConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "dump_config",
    "load_config",
]


class ConfigError(ValueError):
    """A configuration key is unknown or its value has the wrong type or range."""


@dataclass
class DataConfig:
    """Where the image-text pairs come from (read by ``training.data.build_data``).

    ``batch_size`` is the GLOBAL batch (all processes together; each of ``world_size`` processes
    loads ``batch_size / world_size``), so a run gives the same batches on any number of processes.
    One optimizer step sees ``batch_size * train.accumulation`` pairs.
    """

    dataset: Literal["digits", "digit-pairs", "synthetic", "csv", "webdataset"] = "digits"
    train_data: Optional[str] = None
    val_data: Optional[str] = None
    csv_separator: str = "\t"
    csv_img_key: str = "filepath"
    csv_caption_key: str = "title"
    caption_noise: float = 0.2
    image_size: int = 32
    batch_size: int = 128
    workers: int = 0
    num_samples: Optional[int] = None


@dataclass
class ModelConfig:
    """The towers and the embedding geometry.

    ``name`` is a tiny config shipped in ``training/model_configs`` (``"digits-tiny"``), an open_clip
    model name (``"ViT-B-16"``) or a path to a JSON file in open_clip's format. The embedding is
    ``n_tokens`` (k) vectors of ``token_dim`` (d) dims; the similarity, temperature and objective
    live in the ``loss`` section and the trainer passes them into the model's ``EmbedConfig``.

    ``class_tokens`` is the number of class tokens each tower carries (``None``: ``n_tokens``, one
    per sphere); it must divide ``n_tokens``, and each class token is split into
    ``n_tokens / class_tokens`` blocks of ``token_dim``, each normalized on its own sphere.
    ``class_tokens=1`` with ``n_tokens=16, token_dim=32`` is the block control: one 512-d token in
    16 normalized blocks of 32.
    """

    name: str = "digits-fast"
    n_tokens: int = 16
    token_dim: int = 32
    class_tokens: Optional[int] = None
    pretrained: Optional[str] = None


@dataclass
class TemperatureConfig:
    """The softmax temperature, as a multiplicative *scale* on the similarity.

    Only the fields that ``name`` uses are passed to ``manifold_align.get_temperature``:
    ``fixed`` -> ``scale``; ``learnable`` -> ``init`` (a temperature: the scale starts at ``1/init``)
    and ``max_scale``; ``cosine``/``linear``/``exponential`` -> ``start``, ``end`` (scales),
    ``steps`` (``None``: ``train.steps``) and ``warmup``; ``none`` -> nothing (scale 1).
    """

    name: Literal["none", "fixed", "learnable", "cosine", "linear", "exponential"] = "none"
    scale: float = 1.0
    init: float = 0.07
    max_scale: float = 100.0
    start: float = 1.0
    end: float = 10.0
    steps: Optional[int] = None
    warmup: int = 0

    def to_kwargs(self, default_steps: int) -> dict[str, Any]:
        """Return the ``get_temperature`` spec ``{"name": ..., **kwargs}`` for this temperature."""
        if self.name == "fixed":
            return {"name": "fixed", "scale": self.scale}
        if self.name == "learnable":
            return {"name": "learnable", "init": self.init, "max_scale": self.max_scale}
        if self.name in ("cosine", "linear", "exponential"):
            steps = self.steps if self.steps is not None else default_steps
            return {"name": self.name, "start": self.start, "end": self.end, "steps": steps,
                    "warmup": self.warmup}
        return {"name": "none"}


@dataclass
class LossConfig:
    """Similarity, temperature and objective of the contrastive loss.

    ``gather_with_grad=True`` lets gradients flow through the all-gathered features, which makes a
    run on N processes match one process on the concatenated batch.
    """

    similarity: str = "oblique"
    temperature: TemperatureConfig = field(default_factory=TemperatureConfig)
    objective: Literal["softmax", "sigmoid"] = "softmax"
    bias_init: float = -10.0
    local_loss: bool = False
    gather_with_grad: bool = True


@dataclass
class TrainConfig:
    """Optimization. ``steps`` counts optimizer steps; ``lr`` is the peak of the cosine schedule."""

    steps: int = 250
    lr: float = 2e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup: int = 25
    min_lr_ratio: float = 0.0
    grad_clip: Optional[float] = 1.0
    accumulation: int = 1
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_checkpointing: bool = False
    compile: bool = False
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    skip_nonfinite: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = False
    threads: Optional[int] = None


@dataclass
class EvalConfig:
    """Zero-shot classification and retrieval, every ``every`` steps (0: only at the end)."""

    every: int = 0
    batch_size: int = 256


@dataclass
class LogConfig:
    """Where metrics go: ``metrics.jsonl`` always, TensorBoard and a tqdm bar optionally."""

    every: int = 10
    tensorboard: bool = True
    progress: bool = True


@dataclass
class RunConfig:
    """A whole run. ``name`` names the output folder ``runs/<name>`` (``None``: a timestamp)."""

    seed: int = 0
    name: Optional[str] = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)


# Range checks run after type checks: dotted key -> (predicate, expectation in words).
_RANGES: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "data.caption_noise": (lambda v: 0.0 <= v <= 1.0, "a share in [0, 1]"),
    "data.image_size": (lambda v: v > 0, "a positive integer"),
    "data.batch_size": (lambda v: v > 0, "a positive integer"),
    "data.workers": (lambda v: v >= 0, "a non-negative integer"),
    "model.n_tokens": (lambda v: v > 0, "a positive integer"),
    "model.token_dim": (lambda v: v > 0, "a positive integer"),
    "model.class_tokens": (lambda v: v is None or v > 0, "a positive integer or null"),
    "loss.temperature.scale": (lambda v: v > 0, "a positive number"),
    "loss.temperature.init": (lambda v: v > 0, "a positive number"),
    "loss.temperature.max_scale": (lambda v: v > 0, "a positive number"),
    "train.steps": (lambda v: v > 0, "a positive integer"),
    "train.lr": (lambda v: v > 0, "a positive number"),
    "train.weight_decay": (lambda v: v >= 0, "a non-negative number"),
    "train.warmup": (lambda v: v >= 0, "a non-negative integer"),
    "train.min_lr_ratio": (lambda v: 0.0 <= v <= 1.0, "a ratio in [0, 1]"),
    "train.grad_clip": (lambda v: v is None or v > 0, "a positive number or null"),
    "train.accumulation": (lambda v: v > 0, "a positive integer"),
    "train.checkpoint_every": (lambda v: v >= 0, "a non-negative integer (0: only at the end)"),
    "train.keep_checkpoints": (lambda v: v > 0, "a positive integer"),
    "train.threads": (lambda v: v is None or v > 0, "a positive integer or null"),
    "eval.every": (lambda v: v >= 0, "a non-negative integer (0: only at the end)"),
    "eval.batch_size": (lambda v: v > 0, "a positive integer"),
    "log.every": (lambda v: v > 0, "a positive integer"),
}


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


def _build(cls: type, values: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys and types recursively."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"'{prefix or 'config'}' must be a mapping of keys to values, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise _unknown_key(dotted, names)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, dotted)
        else:
            kwargs[key] = _coerce(value, tp, dotted)
            check = _RANGES.get(dotted)
            if check is not None and kwargs[key] is not None and not check[0](kwargs[key]):
                raise ConfigError(f"bad value {value!r} for '{dotted}': expected {check[1]}")
    return cls(**kwargs)


def _check_cross_field(cfg: RunConfig) -> None:
    """Checks that involve the core's registry or more than one field."""
    try:
        from manifold_align import list_similarities
    except ImportError:  # the core is optional for reading a config
        list_similarities = None
    if list_similarities is not None:
        names = list(list_similarities())
        if cfg.loss.similarity not in names:
            close = difflib.get_close_matches(cfg.loss.similarity, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"bad value {cfg.loss.similarity!r} for 'loss.similarity': expected one of "
                f"{', '.join(repr(n) for n in names)}{hint}"
            )
    tokens = cfg.model.class_tokens
    if tokens is not None and cfg.model.n_tokens % tokens:
        raise ConfigError(
            f"bad value {tokens} for 'model.class_tokens': expected a divisor of model.n_tokens "
            f"({cfg.model.n_tokens}) or null"
        )
    if cfg.data.dataset in ("csv", "webdataset") and not cfg.data.train_data:
        raise ConfigError(f"'data.train_data' is required when data.dataset is {cfg.data.dataset!r}")
    if cfg.train.warmup >= cfg.train.steps:
        raise ConfigError(
            f"bad value {cfg.train.warmup} for 'train.warmup': expected fewer warmup steps than "
            f"train.steps ({cfg.train.steps})"
        )


def config_from_dict(values: dict[str, Any] | None) -> RunConfig:
    """Build and validate a :class:`RunConfig` from nested plain data (missing keys: defaults)."""
    cfg = _build(RunConfig, values, "")
    _check_cross_field(cfg)
    return cfg


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Return ``cfg`` as nested plain data (YAML/JSON serializable)."""
    return dataclasses.asdict(cfg)


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like key=value, e.g. loss.similarity=cosine")
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
        ``["loss.similarity=cosine", "train.steps=500"]``.

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


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (an empty file is an empty mapping)."""
    text = Path(path).read_text()
    values = yaml.safe_load(text) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level of a configuration must be a mapping")
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                *, base: dict[str, Any] | None = None) -> RunConfig:
    """Load a configuration: defaults <- ``base`` or YAML file ``path`` <- dotted ``overrides``.

    Parameters
    ----------
    path : str or Path, optional
        A YAML file; its keys override the dataclass defaults.
    overrides : list of str, optional
        ``key=value`` items applied last.
    base : dict, optional
        Plain-data configuration used instead of ``path`` (e.g. one stored in a checkpoint).
    """
    values = base if base is not None else (read_yaml(path) if path is not None else {})
    try:
        return config_from_dict(apply_overrides(values, overrides or []))
    except ConfigError as exc:
        if path is not None:
            raise ConfigError(f"{path}: {exc}") from None
        raise


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML (keys in declaration order)."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
