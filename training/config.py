"""Typed run configuration: dataclasses, YAML loading and dotted ``--set`` overrides.

The dataclass defaults *are* the default run (the embedded digits data, OB(32, 16), tiny towers, CPU);
``configs/digits-oblique.yaml`` spells the same values out and a test keeps the two equal.

A configuration is validated once, when it is built (:func:`load_config`, :func:`config_from_dict`):
unknown keys and values of the wrong type or outside their range raise :class:`ConfigError` naming the
dotted key and, for a misspelled key, the closest valid ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import yaml

from manifold_align.losses import SIGLIP_BIAS_INIT
from manifold_align.temperature import AUTO, CLIP_MAX_SCALE, CLIP_TEMPERATURE

from .typed_config import Check, ConfigError, apply_overrides, build_dataclass, checked, one_of

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
    "embed_config",
    "load_config",
]


def _positive(kind: str) -> Check:
    return Check(lambda v: v is None or v > 0, f"a positive {kind}")


def _non_negative(kind: str, note: str = "") -> Check:
    return Check(lambda v: v >= 0, f"a non-negative {kind}{note}")


_SHARE = Check(lambda v: 0.0 <= v <= 1.0, "a share in [0, 1]")


def _dataset_names() -> Sequence[str]:
    from .data.build import DATASETS

    return DATASETS


def _geometry_names() -> Sequence[str]:
    from manifold_align import list_geometries

    return list_geometries()


def _temperature_names() -> Sequence[str]:
    from manifold_align.temperature import list_temperatures

    return list_temperatures()


def _prototype_rules() -> Sequence[str]:
    from manifold_align.clip.prototypes import PROTOTYPE_RULES

    return PROTOTYPE_RULES


def _objective_names() -> Sequence[str]:
    from manifold_align.losses import OBJECTIVES

    return OBJECTIVES


@dataclass
class DataConfig:
    """Where the image-text pairs come from (read by ``manifold_align_train.data.build_data``).

    ``dataset`` is one of ``manifold_align_train.data.DATASETS``. ``batch_size`` is the GLOBAL batch (all
    processes together; each of ``world_size`` processes loads ``batch_size / world_size``), so a run gives
    the same batches on any number of processes. One optimizer step sees ``batch_size * train.accumulation``
    pairs. ``caption_noise`` and ``image_size`` apply to the embedded datasets (digits, digit-pairs,
    synthetic); ``num_samples`` to synthetic (training pairs) and webdataset (samples per epoch).
    """

    dataset: str = checked("digits", check=one_of(_dataset_names))
    train_data: Optional[str] = None
    val_data: Optional[str] = None
    csv_separator: str = "\t"
    csv_img_key: str = "filepath"
    csv_caption_key: str = "title"
    caption_noise: float = checked(0.2, check=_SHARE)
    image_size: int = checked(32, check=_positive("integer"))
    batch_size: int = checked(128, check=_positive("integer"))
    workers: int = checked(0, check=_non_negative("integer"))
    num_samples: Optional[int] = checked(None, check=_positive("integer or null"))


@dataclass
class ModelConfig:
    """The towers and the embedding geometry.

    ``name`` is a tiny config shipped with :mod:`manifold_align.clip` (``"digits-fast"``), an open_clip
    model name (``"ViT-B-16"``) or a path to a JSON file in open_clip's format. The embedding is
    ``n_tokens`` (k) vectors of ``token_dim`` (d) dims scored by ``geometry``, a registered name
    (``manifold_align.list_geometries()``, including geometries other installed packages declare), with
    ``geometry_options`` its keyword options (``euclidean``: ``squared``; ``lorentz``: ``curvature_init``,
    ``learn_curvature``, ``curvature_range``, ``max_radius``, ``entailment_weight``), empty for its own defaults.
    With the ``loss`` section's temperature and objective they make the model's
    :class:`~manifold_align.clip.EmbedConfig` (:func:`embed_config`), which checks them.

    ``lock_image`` freezes the image tower but its last ``lock_image_unlocked_groups`` groups (open_clip's
    groups: embeddings, each block, the last block with ``ln_post``, the projection), ``lock_text`` the text
    tower but its last ``lock_text_unlocked_layers`` groups (embeddings, each block, the last block with
    ``ln_final``, the projection); ``lock_text_freeze_layer_norm=false`` leaves the LayerNorms of the locked
    text layers trainable, and ``lock_image_freeze_bn_stats`` is passed to open_clip's image lock (a ViT has
    no BatchNorm). Locked parameters are left out of the optimizer.

    ``class_tokens`` is the number of class tokens each tower carries (``None``: ``n_tokens``, one
    per factor); it must divide ``n_tokens``, and each class token is split into
    ``n_tokens / class_tokens`` blocks of ``token_dim``. ``class_tokens=1`` with ``n_tokens=16,
    token_dim=32`` is the block control: one 512-d token in 16 normalized blocks of 32.
    """

    name: str = "digits-fast"
    n_tokens: int = 16
    token_dim: int = 32
    class_tokens: Optional[int] = None
    geometry: str = checked("oblique", check=one_of(_geometry_names))
    geometry_options: dict[str, Any] = field(default_factory=dict)
    pretrained: Optional[str] = None
    # LiT (Zhai et al. 2022), open_clip's --lock-image* / --lock-text* flags; see docs/training.md
    lock_image: bool = False
    lock_image_unlocked_groups: int = checked(0, check=_non_negative("integer"))
    lock_image_freeze_bn_stats: bool = False
    lock_text: bool = False
    lock_text_unlocked_layers: int = checked(0, check=_non_negative("integer"))
    lock_text_freeze_layer_norm: bool = False


@dataclass
class TemperatureConfig:
    """The softmax temperature, as a multiplicative *scale* on the geometry's scores.

    ``name`` is one of ``manifold_align.temperature.list_temperatures()``. Only the fields that ``name``
    uses are passed to ``manifold_align.get_temperature``: ``fixed`` -> ``scale``; ``learnable`` ->
    ``init`` (a temperature: the scale starts at ``1/init``), ``max_scale`` and ``min_scale``;
    ``cosine``/``linear``/``exponential`` -> ``start``, ``end`` (scales), ``steps`` (``None``:
    ``train.steps``) and ``warmup``; ``none`` -> nothing (scale 1). ``auto`` (the default) is replaced, when
    the configuration is built, by the geometry's own (``manifold_align.Geometry.default_temperature``: none for
    ``oblique``, CLIP's learnable one for ``cosine``, learnable from 1/20 for ``euclidean``, from 1 for
    ``lorentz``), so the saved configuration names the temperature the run trains with.
    """

    name: str = checked(AUTO, check=one_of(_temperature_names))
    scale: float = checked(1.0, check=_positive("number"))
    init: float = checked(CLIP_TEMPERATURE, check=_positive("number"))
    max_scale: float = checked(CLIP_MAX_SCALE, check=_positive("number"))
    min_scale: float = checked(0.0, check=_non_negative("number"))
    start: float = 1.0
    end: float = 10.0
    steps: Optional[int] = None
    warmup: int = 0

    def to_kwargs(self, default_steps: int) -> dict[str, Any]:
        """Return the ``get_temperature`` spec ``{"name": ..., **kwargs}`` for this temperature."""
        if self.name == "fixed":
            return {"name": "fixed", "scale": self.scale}
        if self.name == "learnable":
            return {"name": "learnable", "init": self.init, "max_scale": self.max_scale, "min_scale": self.min_scale}
        if self.name in ("cosine", "linear", "exponential"):
            steps = self.steps if self.steps is not None else default_steps
            return {"name": self.name, "start": self.start, "end": self.end, "steps": steps,
                    "warmup": self.warmup}
        return {"name": self.name}


@dataclass
class LossConfig:
    """Temperature and objective of the contrastive loss (the geometry is the model's: ``model.geometry``).

    ``objective`` is one of ``manifold_align.losses.OBJECTIVES``; ``bias_init`` the sigmoid objective's initial
    bias. ``gather_with_grad=True`` lets gradients flow through the all-gathered features, which makes a run on
    N processes match one process on the concatenated batch.
    """

    temperature: TemperatureConfig = field(default_factory=TemperatureConfig)
    objective: str = checked("softmax", check=one_of(_objective_names))
    bias_init: float = SIGLIP_BIAS_INIT
    local_loss: bool = False
    gather_with_grad: bool = True


def _early_warning_names() -> Sequence[str]:
    from .preemption import EARLY_WARNING_SIGNALS

    return EARLY_WARNING_SIGNALS


@dataclass
class TrainConfig:
    """Optimization. ``steps`` counts optimizer steps; ``lr`` is the peak of the cosine schedule.

    ``preempt_signal`` is the early-warning signal that, like SIGTERM, stops the run at the end of its step with
    a checkpoint (:mod:`manifold_align_train.preemption`; null: SIGTERM only). ``collective_timeout`` is how many
    seconds a collective waits for the other processes before the run fails (null: 60 on gloo, torch's default
    on NCCL), which bounds how long a job outlives a rank that hangs.
    """

    steps: int = checked(250, check=_positive("integer"))
    lr: float = checked(2e-3, check=_positive("number"))
    weight_decay: float = checked(0.1, check=_non_negative("number"))
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup: int = checked(25, check=_non_negative("integer"))
    min_lr_ratio: float = checked(0.0, check=Check(lambda v: 0.0 <= v <= 1.0, "a ratio in [0, 1]"))
    grad_clip: Optional[float] = checked(1.0, check=_positive("number or null"))
    accumulation: int = checked(1, check=_positive("integer"))
    accumulation_mode: Literal["exact", "independent"] = "exact"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_checkpointing: bool = False
    compile: bool = False
    checkpoint_every: int = checked(50, check=_non_negative("integer", " (0: only at the end)"))
    keep_checkpoints: int = checked(2, check=_positive("integer"))
    skip_nonfinite: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = False
    threads: Optional[int] = checked(None, check=_positive("integer or null"))
    preempt_signal: Optional[str] = checked("SIGUSR1", check=one_of(_early_warning_names))
    collective_timeout: Optional[float] = checked(None, check=_positive("number of seconds or null"))


@dataclass
class EvalConfig:
    """Zero-shot classification and retrieval, every ``every`` steps (0: only at the end).

    ``prototype`` is the class-prototype rule (``manifold_align.clip.PROTOTYPE_RULES``): ``geometry``, the
    model's own (per token on OB(d, k)), or ``whole``, clip_benchmark's (the whole flattened vector).
    ``datasets`` maps names to further evaluation sets, labelled images or retrieval pairs, each scored and
    logged under its name (``manifold_align_train.eval_sets.EvalSetConfig``).
    """

    every: int = checked(0, check=_non_negative("integer", " (0: only at the end)"))
    batch_size: int = checked(256, check=_positive("integer"))
    prototype: str = checked("geometry", check=one_of(_prototype_rules))
    datasets: dict[str, Any] = field(default_factory=dict)


@dataclass
class LogConfig:
    """Where metrics go: ``metrics.jsonl`` always, TensorBoard, a tqdm bar and Weights & Biases optionally.

    ``wandb`` (off by default; ``pip install manifold-align[wandb]``) logs the rows TensorBoard gets to the W&B
    project ``wandb_project`` (of ``wandb_entity``, null: your default), one W&B run per run folder; W&B's
    own environment variables apply (``WANDB_MODE=offline``, ``WANDB_API_KEY``).
    """

    every: int = checked(10, check=_positive("integer"))
    tensorboard: bool = True
    progress: bool = True
    wandb: bool = False
    wandb_project: str = "manifold-align"
    wandb_entity: Optional[str] = None


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


def embed_config(cfg: RunConfig):
    """The model's :class:`~manifold_align.clip.EmbedConfig` for this run: the ``model`` section's
    shape and geometry with the ``loss`` section's temperature and objective.

    The one place the two sections meet; building it checks them together (``ValueError``).
    """
    from manifold_align.clip.embed_config import EmbedConfig

    return EmbedConfig(
        n_tokens=cfg.model.n_tokens, token_dim=cfg.model.token_dim, class_tokens=cfg.model.class_tokens,
        geometry=cfg.model.geometry, geometry_options=dict(cfg.model.geometry_options),
        temperature=cfg.loss.temperature.to_kwargs(cfg.train.steps),
        objective=cfg.loss.objective, bias_init=cfg.loss.bias_init,
    )


# the configuration key each EmbedConfig field comes from (see embed_config)
_EMBED_KEYS = {"n_tokens": "model.n_tokens", "token_dim": "model.token_dim", "class_tokens": "model.class_tokens",
               "geometry": "model.geometry", "geometry_options": "model.geometry_options",
               "objective": "loss.objective", "temperature": "loss.temperature"}


def _resolve_auto_temperature(cfg: RunConfig) -> None:
    """Replace ``loss.temperature.name = auto`` by the geometry's own temperature, in place (done once, here)."""
    if cfg.loss.temperature.name != AUTO:
        return
    from manifold_align.geometries import geometry_class
    from manifold_align.temperature import resolve_auto

    spec = dict(resolve_auto(AUTO, geometry_class(cfg.model.geometry)))
    fields = {f.name for f in dataclasses.fields(TemperatureConfig)}
    unknown = sorted(set(spec) - fields)
    if unknown:
        raise ConfigError(f"geometry {cfg.model.geometry!r} declares a default temperature {spec!r} whose keys "
                          f"{unknown} are not 'loss.temperature' keys ({', '.join(sorted(fields))})")
    cfg.loss.temperature = build_dataclass(TemperatureConfig, spec, "loss.temperature")


def _check_cross_field(cfg: RunConfig) -> None:
    """Checks that involve more than one field, or the model registry; run before anything is built."""
    from manifold_align.clip.embed_config import EmbedConfigError
    from manifold_align.clip.registry import load_model_config

    try:
        load_model_config(cfg.model.name)
    except ValueError as exc:
        raise ConfigError(f"bad value {cfg.model.name!r} for 'model.name': {exc}") from None
    try:
        embed_config(cfg)
    except EmbedConfigError as exc:
        raise ConfigError(f"bad value for '{_EMBED_KEYS.get(exc.field, exc.field)}': {exc}") from None
    _check_locks(cfg.model)
    from .eval_sets import check_eval_sets
    from .wandb_log import check_wandb

    check_eval_sets(cfg)
    check_wandb(cfg)
    if cfg.data.dataset in ("csv", "webdataset") and not cfg.data.train_data:
        raise ConfigError(f"'data.train_data' is required when data.dataset is {cfg.data.dataset!r}")
    if cfg.train.warmup >= cfg.train.steps:
        raise ConfigError(
            f"bad value {cfg.train.warmup} for 'train.warmup': expected fewer warmup steps than "
            f"train.steps ({cfg.train.steps})"
        )


def _check_locks(model: ModelConfig) -> None:
    """A lock option without its lock would be silently ignored: refuse it."""
    for tower, options in (("image", ("unlocked_groups", "freeze_bn_stats")),
                           ("text", ("unlocked_layers", "freeze_layer_norm"))):
        if getattr(model, f"lock_{tower}"):
            continue
        for option in options:
            value = getattr(model, f"lock_{tower}_{option}")
            if value:
                raise ConfigError(f"bad value {value!r} for 'model.lock_{tower}_{option}': it applies only with "
                                  f"model.lock_{tower}=true")


# keys of configurations (and checkpoints) written before the geometry had its own home, and where they went
_MOVED_KEYS = {"similarity": "model.geometry", "similarity_options": "model.geometry_options",
               "entailment_weight": "model.geometry_options.entailment_weight"}


def _refuse_moved_keys(values: dict[str, Any] | None) -> None:
    loss = (values or {}).get("loss")
    moved = sorted(set(loss) & set(_MOVED_KEYS)) if isinstance(loss, dict) else []
    if moved:
        raise ConfigError(f"configuration keys {', '.join(f'loss.{key}' for key in moved)} are from manifold-align "
                          f"before geometries had their own section; this version reads "
                          f"{', '.join(_MOVED_KEYS[key] for key in moved)} instead (a checkpoint of that format "
                          f"cannot be resumed: retrain, or rename the keys in its YAML)")


def config_from_dict(values: dict[str, Any] | None) -> RunConfig:
    """Build and validate a :class:`RunConfig` from nested plain data (missing keys: defaults); ``auto``
    temperatures come back resolved."""
    _refuse_moved_keys(values)
    cfg = build_dataclass(RunConfig, values)
    _check_cross_field(cfg)
    _resolve_auto_temperature(cfg)
    return cfg


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Return ``cfg`` as nested plain data (YAML/JSON serializable)."""
    return dataclasses.asdict(cfg)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (an empty file is an empty mapping); a missing file is a :class:`ConfigError`."""
    if not Path(path).is_file():
        raise ConfigError(f"no configuration file at {str(path)!r}")
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
