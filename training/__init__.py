"""manifold_align_train: the CLIP trainer of manifold-align (command line ``manifold-align``).

Installed from the repository's ``training/`` folder under the import name ``manifold_align_train``. The
model it trains is library code, :mod:`manifold_align.clip`; this package holds what runs jobs: the typed
configuration, the data pipelines, the training loop, checkpoints, logs and the command line.
``python -m manifold_align_train ...`` is ``manifold-align ...`` (what torchrun launches).
"""

from .config import ConfigError, RunConfig, load_config

_EXPORTS = {"train": "trainer", "Trainer": "trainer", "NonFiniteLossError": "trainer",
            "evaluate_checkpoint": "evaluation"}

__all__ = ["ConfigError", "RunConfig", "load_config", *_EXPORTS]


def __getattr__(name):
    # the training loop imports torch and open_clip: load it on first use, not for reading a config
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
