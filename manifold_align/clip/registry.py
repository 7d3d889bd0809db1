"""Model configs: open_clip's registry plus the tiny configs shipped in ``model_configs/``.

The shipped configs (``tiny-vit-oblique``, ``tiny-vit-sphere``, ``tiny-vit-concat``, ``digits-tiny`` and
the trainer's default ``digits-fast``) are registered with ``open_clip.add_model_config`` on import, so
``open_clip.get_model_config("digits-fast")`` and ``open_clip.get_tokenizer("digits-fast")`` work too.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Union

import open_clip

__all__ = ["CONFIG_DIR", "ModelSpec", "list_models", "load_model_config"]

#: the shipped tiny configs
CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(CONFIG_DIR)

#: top-level keys of an open_clip config this package reads; ``custom_text`` only picks open_clip's state
#: dict layout and the multi-token text tower always lives under ``text.``
_CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "custom_text", "embed_cfg")

ModelSpec = Union[str, os.PathLike, Mapping[str, Any]]


def list_models() -> list[str]:
    """Names :func:`load_model_config` resolves: open_clip's configs and the shipped tiny ones."""
    return open_clip.list_models()


def _unknown_model(name: str) -> ValueError:
    close = difflib.get_close_matches(name, list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(
        f"unknown model {name!r} for `model_name_or_cfg`{hint} (accepted: a JSON file path, a config dict, "
        f"or one of the {len(list_models())} names of manifold_align.clip.list_models())"
    )


def load_model_config(model_name_or_cfg: ModelSpec) -> dict[str, Any]:
    """Resolve a model spec to a fresh config dict in open_clip's format.

    Parameters
    ----------
    model_name_or_cfg : str, path or dict
        A registered name (open_clip's or a shipped tiny one), a path to a JSON file, or a config dict
        (copied, never modified).

    Returns
    -------
    dict
        With ``vision_cfg``, ``text_cfg`` and possibly ``embed_dim``, ``quick_gelu``, ``embed_cfg``.

    Raises
    ------
    ValueError
        An unknown name (with the closest registered names), or a config with missing or unsupported keys.
    """
    if isinstance(model_name_or_cfg, Mapping):
        cfg = copy.deepcopy(dict(model_name_or_cfg))
    elif str(model_name_or_cfg).endswith(".json") or Path(model_name_or_cfg).is_file():
        with open(model_name_or_cfg, encoding="utf-8") as f:
            cfg = json.load(f)
    else:
        cfg = open_clip.get_model_config(str(model_name_or_cfg))
        if cfg is None:
            raise _unknown_model(str(model_name_or_cfg))
    missing = [key for key in ("vision_cfg", "text_cfg") if key not in cfg]
    unknown = sorted(set(cfg) - set(_CONFIG_KEYS))
    if missing or unknown:
        raise ValueError(
            f"model config has missing keys {missing} / unsupported keys {unknown}; accepted keys: {list(_CONFIG_KEYS)}"
        )
    return cfg
