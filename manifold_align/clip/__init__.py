"""The multi-token CLIP model: open_clip towers with ``k`` class tokens, its factory and its evaluation.

Importable without the trainer. The names below are loaded on first use, so that reading
:class:`EmbedConfig` (the trainer's configuration check) does not import open_clip.

==========================  ===========================================================================
module                      what it holds
==========================  ===========================================================================
``embed_config``            :class:`EmbedConfig`: k, d, geometry, temperature, objective
``towers``                  the multi-token open_clip vision and text towers
``model``                   :class:`MultiTokenCLIP`
``registry``                model configs: open_clip's and the shipped tiny ones (``model_configs/``)
``pretrained``              :func:`from_open_clip`: a stock open_clip CLIP converted, offline
``factory``                 :func:`create_model`, :func:`create_stock_model`
``tokenizer``               :func:`get_tokenizer`, :func:`caption_length` (the caption-padding rule)
``zero_shot``               zero-shot classifier and accuracy in the model's own geometry
``retrieval``               image-text retrieval recalls
``prototypes``              the two class-prototype rules: the model's geometry (ours) or the whole vector
                            (clip_benchmark's)
``export``                  :func:`save_pretrained`: open_clip's local-dir / Hub directory layout
``benchmark_bridge``        the model as clip_benchmark's evaluate functions take it; its command line
==========================  ===========================================================================
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "EmbedConfig": "embed_config",
    "MultiTokenCLIP": "model",
    "CONFIG_DIR": "registry",
    "list_models": "registry",
    "load_model_config": "registry",
    "from_open_clip": "pretrained",
    "create_model": "factory",
    "create_stock_model": "factory",
    "caption_length": "tokenizer",
    "get_tokenizer": "tokenizer",
    "trim_padding": "tokenizer",
    "build_zero_shot_classifier": "zero_shot",
    "classification_metrics": "zero_shot",
    "encode_images": "zero_shot",
    "encode_texts": "zero_shot",
    "zero_shot_accuracy": "zero_shot",
    "zero_shot_logits": "zero_shot",
    "retrieval_metrics": "retrieval",
    "PROTOTYPE_RULES": "prototypes",
    "class_prototypes": "prototypes",
    "prototype_logits": "prototypes",
    "whole_vector_classifier": "prototypes",
    "save_pretrained": "export",
    "is_export_dir": "export",
    "ClipBenchmarkModel": "benchmark_bridge",
    "for_clip_benchmark": "benchmark_bridge",
    "save_geometry_classifier": "benchmark_bridge",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
