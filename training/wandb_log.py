"""Weights & Biases logging (``log.wandb=true``, off by default): the rows TensorBoard gets, to a W&B run.

An optional extra: ``pip install manifold-align[wandb]``. One W&B run per run folder: its id is kept in
``<run folder>/wandb_run_id``, so a resumed run (``--resume latest``) continues the same W&B run. W&B's files go
to ``<run folder>/wandb/``; its own environment variables apply (``WANDB_MODE=offline`` writes them without a
network, ``wandb sync`` uploads them later; ``WANDB_API_KEY`` logs in).
"""

from __future__ import annotations

import importlib.util
import secrets
from pathlib import Path
from typing import Any, Mapping

from .atomic_write import atomic_write_text
from .config import ConfigError, RunConfig, config_to_dict

__all__ = ["RUN_ID_FILE", "WandbLog", "check_wandb"]

RUN_ID_FILE = "wandb_run_id"


def check_wandb(cfg: RunConfig) -> None:
    """With ``log.wandb=true``, wandb must be importable: checked with the configuration, before any work."""
    if cfg.log.wandb and importlib.util.find_spec("wandb") is None:
        raise ConfigError("'log.wandb' is true but wandb is not installed: pip install manifold-align[wandb] "
                          "(or pip install wandb)")


class WandbLog:
    """A sink of :class:`manifold_align_train.metrics_log.MetricsLog`: each row's numbers as ``kind/name``.

    Parameters
    ----------
    output_dir : str or Path
        The run folder (rank 0 only).
    cfg : RunConfig
        Its ``log.wandb_project`` and ``log.wandb_entity``, and the whole configuration as the W&B run's config.
    """

    def __init__(self, output_dir: str | Path, cfg: RunConfig):
        import wandb

        output_dir = Path(output_dir)
        id_file = output_dir / RUN_ID_FILE
        if id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            run_id = secrets.token_hex(4)  # W&B run ids: lower-case letters and digits
            atomic_write_text(id_file, run_id + "\n")
        self.run = wandb.init(project=cfg.log.wandb_project, entity=cfg.log.wandb_entity,
                              name=cfg.name or output_dir.name, id=run_id, resume="allow", dir=str(output_dir),
                              config=config_to_dict(cfg))

    def log(self, step: int, kind: str, values: Mapping[str, Any]) -> None:
        """Log ``values`` (numbers) as ``kind/name`` at ``step``, as TensorBoard's tags are named."""
        self.run.log({f"{kind}/{name}": value for name, value in values.items()}, step=step)

    def close(self) -> None:
        """Finish the W&B run (writes its summary, and in offline mode its files)."""
        self.run.finish()
