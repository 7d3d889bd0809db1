# --- model dev: the multi-token model's names, imported lazily (importing open_clip takes seconds and
# `training.config` / the CLI's argument parsing should not pay for it)
_MODEL_EXPORTS = {
    "EmbedConfig": "embed_config",  # cheap: no open_clip import
    "MultiTokenCLIP": "model",
    "create_model": "model",
    "create_stock_model": "model",
    "get_tokenizer": "model",
    "load_model_config": "model",
    "from_open_clip": "pretrained",
    "build_zero_shot_classifier": "zero_shot",
    "zero_shot_accuracy": "zero_shot",
    "zero_shot_logits": "zero_shot",
    "retrieval_metrics": "zero_shot",
}


def __getattr__(name):
    if name in _MODEL_EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_MODEL_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- trainer dev: the typed configuration (cheap to import) and the training entry points (lazy)
from .config import ConfigError, RunConfig, load_config  # noqa: E402

_MODEL_EXPORTS.update({"train": "trainer", "Trainer": "trainer", "NonFiniteLossError": "trainer",
                       "evaluate_checkpoint": "trainer"})

__all__ = ["ConfigError", "RunConfig", "load_config", *_MODEL_EXPORTS]
