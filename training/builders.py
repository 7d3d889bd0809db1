"""The pieces a run is built from: torch settings, model, loss, data, optimizer, schedule, precision.

Data flows one way, config -> these builders -> model, loss, trainer. Shared by the training loop
(:mod:`manifold_align_train.trainer`) and checkpoint evaluation (:mod:`manifold_align_train.evaluation`),
so that both build exactly the same model and held-out data.
"""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from typing import Callable, ContextManager

import torch

from manifold_align import ContrastiveLoss
from manifold_align.optim import RiemannianAdamW, parameter_groups

from .config import ConfigError, RunConfig, TrainConfig, embed_config
from .distributed_env import DistEnv

__all__ = [
    "autocast_for",
    "build_data_bundle",
    "build_loss",
    "build_model",
    "build_optimizer",
    "configure_torch",
    "lock_towers",
    "lr_factor",
]

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def configure_torch(cfg: RunConfig, env: DistEnv) -> Callable[[], None]:
    """Threads and determinism, before any model is built.

    Returns
    -------
    callable
        Undoes the process-wide float setting (subnormal flushing) once the run is over, so that a run
        started in-process (a notebook, a test) leaves the caller's arithmetic as it found it.
    """
    flushing = _flushes_subnormals()
    if env.device.type == "cpu":
        # Adam's second moments of rarely used embedding rows underflow to subnormals, which are
        # orders of magnitude slower on x86 CPUs; flushing them to zero changes nothing measurable.
        torch.set_flush_denormal(True)
        local = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size if env.distributed else 1))
        torch.set_num_threads(cfg.train.threads or max(1, (os.cpu_count() or 1) // local))
    elif cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        # cuBLAS needs this before its first call to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    return lambda: torch.set_flush_denormal(flushing)


def _flushes_subnormals() -> bool:
    """Whether the CPU flushes subnormal floats to zero now (torch has a setter but no getter)."""
    return float(torch.tensor([1e-40], dtype=torch.float32) * 1.0) == 0.0


def build_model(cfg: RunConfig, device: torch.device):
    """Create the model, its tokenizer and its image transforms.

    The model's embedding is :func:`manifold_align_train.config.embed_config`: the ``model`` section's
    shape and geometry with the ``loss`` section's temperature and objective (the model owns the geometry,
    the temperature and the sigmoid bias, so they are saved with its weights).

    The towers are locked as ``model.lock_*`` asks (:func:`lock_towers`), after the pretrained weights are
    loaded and before any optimizer sees the parameters.

    Returns
    -------
    (MultiTokenCLIP, tokenizer, (train_transform, val_transform))

    Raises
    ------
    ConfigError
        A geometry option value the geometry refuses, naming ``model.geometry_options``.
    """
    import open_clip

    from manifold_align.clip import create_model, get_tokenizer, load_model_config
    from manifold_align.clip.embed_config import EmbedConfigError

    try:
        model = create_model(cfg.model.name, embed_config(cfg), pretrained=cfg.model.pretrained).to(device)
    except EmbedConfigError as exc:
        raise ConfigError(f"bad value for 'model.{exc.field}': {exc}") from None
    lock_towers(model, cfg.model)
    image_size = load_model_config(cfg.model.name)["vision_cfg"].get("image_size", 224)
    transforms = (open_clip.image_transform(image_size, is_train=True),
                  open_clip.image_transform(image_size, is_train=False))
    return model, get_tokenizer(cfg.model.name), transforms


def lock_towers(model, model_cfg) -> None:
    """LiT: freeze the towers ``model_cfg`` (a ``ModelConfig``) locks, as open_clip's trainer does with its
    ``--lock-image*`` and ``--lock-text*`` flags (``model.lock_image_tower``, ``model.lock_text_tower``)."""
    if model_cfg.lock_image:
        model.lock_image_tower(unlocked_groups=model_cfg.lock_image_unlocked_groups,
                               freeze_bn_stats=model_cfg.lock_image_freeze_bn_stats)
    if model_cfg.lock_text:
        model.lock_text_tower(unlocked_layers=model_cfg.lock_text_unlocked_layers,
                              freeze_layer_norm=model_cfg.lock_text_freeze_layer_norm)


def build_loss(model, cfg: RunConfig, env: DistEnv) -> ContrastiveLoss:
    """The contrastive loss of this process, built from the model's own geometry instance.

    It is called with the model's ``logit_scale`` (and ``logit_bias``) from the model's forward output, as
    open_clip's losses are: it has no temperature or geometry of its own.
    """
    return ContrastiveLoss(
        model.geometry,
        objective=cfg.loss.objective,
        local_loss=cfg.loss.local_loss,
        gather_with_grad=cfg.loss.gather_with_grad,
        check_finite=not cfg.train.skip_nonfinite,  # skipping: non-finite features make a skipped step
        rank=env.rank,
        world_size=env.world_size,
    )


def build_data_bundle(cfg: RunConfig, env: DistEnv, tokenizer, transforms):
    """``manifold_align_train.data.build_data`` for this configuration and process, with the named
    evaluation sets of ``eval.datasets`` (``manifold_align_train.eval_sets.build_eval_sets``)."""
    from .data import build_data
    from .eval_sets import build_eval_sets

    bundle = build_data(cfg.data, preprocess_train=transforms[0], preprocess_val=transforms[1],
                        tokenizer=tokenizer, seed=cfg.seed, rank=env.rank, world_size=env.world_size,
                        pin_memory=env.device.type == "cuda")
    bundle.eval_sets = build_eval_sets(cfg, transforms[1], tokenizer)
    return bundle


def build_optimizer(model: torch.nn.Module, train_cfg: TrainConfig) -> torch.optim.Optimizer:
    """RiemannianAdamW over ``parameter_groups(model)``; each group remembers its ``initial_lr``."""
    groups = parameter_groups(model, train_cfg.weight_decay)
    for group in groups:
        group["initial_lr"] = train_cfg.lr
    return RiemannianAdamW(groups, lr=train_cfg.lr, betas=(train_cfg.beta1, train_cfg.beta2),
                           eps=train_cfg.eps, weight_decay=train_cfg.weight_decay)


def lr_factor(step: int, *, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Linear warmup from ``1/warmup`` to 1 over ``warmup`` steps, then a cosine decay to ``min_ratio``
    at ``total``.
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def autocast_for(precision: str, device: torch.device) -> Callable[[], ContextManager]:
    """A zero-argument factory of the autocast context for ``train.precision``."""
    if precision == "fp32":
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=_DTYPES[precision])
