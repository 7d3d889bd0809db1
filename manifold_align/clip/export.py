"""Share models the way open_clip does: a directory in open_clip's ``local-dir`` / Hugging Face Hub layout.

A saved directory holds, under open_clip's file names (``open_clip.constants``):

- ``open_clip_config.json``: ``{"model_cfg": ..., "preprocess_cfg": ..., "manifold_align": ...}``. ``model_cfg``
  is the towers' open_clip config (``embed_dim`` = k * d), ``preprocess_cfg`` the image preprocessing
  (open_clip's ``PreprocessCfg``), and ``manifold_align`` what open_clip does not know: the
  :class:`~manifold_align.clip.EmbedConfig` (k, d, geometry, temperature, objective) and which weight layout
  the safetensors file uses. open_clip reads the first two keys and ignores the third.
- ``open_clip_model.safetensors``: the weights. A model that *is* a stock CLIP (``k = 1``, one class token,
  a ``cosine`` or ``oblique`` geometry, which coincide at ``k = 1``) is written in stock open_clip's
  layout (text tower at the top level, a 1-d class token, ``logit_scale`` = log of the current temperature
  scale, ``logit_bias`` for the sigmoid objective), so that stock
  ``open_clip.create_model_and_transforms("local-dir:DIR")`` (or ``"hf-hub:org/name"`` once uploaded) loads it.
  Any other model is written in :class:`~manifold_align.clip.MultiTokenCLIP`'s own layout.
- ``manifold_align_state.safetensors`` (stock layout only): our tensors the stock layout has no key for (the
  temperature's), so that our loader restores the model exactly. open_clip's loader picks
  ``open_clip_model.safetensors`` by name.

:func:`manifold_align.clip.create_model` loads such a directory by its path (``"DIR"`` or ``"local-dir:DIR"``).
Uploading it to the Hub is ``huggingface_hub.upload_folder(repo_id="org/name", folder_path=DIR)``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME

from .embed_config import EmbedConfig
from .model import MultiTokenCLIP
from .registry import ModelSpec, load_model_config

__all__ = [
    "EXTRA_WEIGHTS_NAME",
    "FORMAT_VERSION",
    "LOCAL_DIR_PREFIX",
    "is_export_dir",
    "is_stock_clip",
    "export_model_config",
    "load_pretrained_dir",
    "preprocess_from_dir",
    "read_export_config",
    "save_pretrained",
    "to_stock_state_dict",
]

EXTRA_WEIGHTS_NAME = "manifold_align_state.safetensors"
LOCAL_DIR_PREFIX = "local-dir:"
FORMAT_VERSION = 1
_OURS = "manifold_align"  # the config's key for what open_clip does not read
_STOCK_GEOMETRIES = ("cosine", "oblique")  # L2 normalization of the one token, dot-product score, at k = 1
# keys of ours that the stock layout has no place for (its logit_scale and logit_bias are written from them)
_OWN_PREFIXES = ("temperature.", "geometry.", "logit_bias")


def _strip_prefix(path: Union[str, os.PathLike]) -> Path:
    text = os.fspath(path)
    return Path(text[len(LOCAL_DIR_PREFIX):] if text.startswith(LOCAL_DIR_PREFIX) else text)


def is_export_dir(path: Any) -> bool:
    """Whether ``path`` (optionally ``local-dir:``-prefixed) is a directory holding ``open_clip_config.json``."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    return (_strip_prefix(path) / HF_CONFIG_NAME).is_file()


def is_stock_clip(model: MultiTokenCLIP) -> bool:
    """Whether ``model`` is a stock open_clip CLIP: one token of one class token, L2-normalized, dot-product score."""
    embed = model.embed_cfg
    # a geometry with parameters or buffers (lorentz's curvature, say) has no place in a stock CLIP
    return (embed.n_tokens == 1 and embed.tower_tokens == 1 and model.geometry.name in _STOCK_GEOMETRIES
            and not model.geometry.state_dict())


def to_stock_state_dict(model: MultiTokenCLIP) -> dict[str, torch.Tensor]:
    """The weights of a stock-CLIP model (:func:`is_stock_clip`) in open_clip's ``CLIP`` layout.

    The inverse of :func:`manifold_align.clip.pretrained.convert_stock_state_dict` at ``k = 1``: the text tower
    moves to the top level, the class token becomes 1-d, ``logit_scale`` is the log of the temperature's current
    scale (0-dim) and, for the sigmoid objective, ``logit_bias`` the model's bias.
    """
    if not is_stock_clip(model):
        raise ValueError(f"only a k = 1 model with one class token and geometry in {_STOCK_GEOMETRIES} has "
                         f"open_clip's layout; got k = {model.embed_cfg.n_tokens}, geometry {model.geometry.name!r}")
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith(_OWN_PREFIXES):
            continue
        out[key[len("text."):] if key.startswith("text.") else key] = value
    out["visual.class_embedding"] = out["visual.class_embedding"][0]
    with torch.no_grad():
        out["logit_scale"] = model.temperature.scale().detach().float().log().reshape(())
        if model.logit_bias is not None:
            out["logit_bias"] = model.logit_bias.detach().reshape(())
    return out


def _tower_config(model: MultiTokenCLIP, model_cfg: ModelSpec) -> dict[str, Any]:
    """The open_clip config of the towers, checked against the model's weights (names and shapes)."""
    cfg = load_model_config(model_cfg)
    cfg.pop("embed_cfg", None)
    cfg.pop("custom_text", None)
    cfg["embed_dim"] = model.embed_cfg.width
    with torch.device("meta"):
        reference = MultiTokenCLIP(cfg["vision_cfg"], cfg["text_cfg"], model.embed_cfg,
                                   quick_gelu=cfg.get("quick_gelu", False))
    expected = {key: tuple(value.shape) for key, value in reference.state_dict().items()}
    actual = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    if expected != actual:
        differ = sorted(key for key in expected.keys() | actual.keys() if expected.get(key) != actual.get(key))
        raise ValueError(f"`model_cfg` does not describe this model: {len(differ)} weight(s) differ in name or "
                         f"shape, e.g. {differ[:5]}")
    return cfg


def _save_tensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """safetensors file, written to a temporary name in the folder and renamed: never half-written."""
    from safetensors.torch import save_file

    # contiguous copies: safetensors refuses views and tensors that share storage
    plain = {key: value.detach().cpu().contiguous().clone() for key, value in tensors.items()}
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        save_file(plain, temporary, metadata={"format": "pt"})
        os.chmod(temporary, 0o666 & ~_umask())  # as open() would create it, not mkstemp's 0600
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_pretrained(model: MultiTokenCLIP, path: Union[str, os.PathLike], model_cfg: ModelSpec, *,
                    preprocess_cfg: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``model`` as a directory in open_clip's local-dir / Hub layout (see the module docstring).

    Parameters
    ----------
    model : MultiTokenCLIP
    path : str or path
        The directory; created if missing. Files of the layout already there are replaced.
    model_cfg : str, path or dict
        The open_clip config the model's towers were built from (name, JSON path or dict), e.g. the run's
        ``model.name``; checked against the model's weights.
    preprocess_cfg : mapping, optional, keyword-only
        Fields of open_clip's ``PreprocessCfg`` (``mean``, ``std``, ``interpolation``, ...); default: open_clip's
        defaults at the config's ``image_size`` (the trainer's transforms).

    Returns
    -------
    Path
        The directory.
    """
    from open_clip.transform import PreprocessCfg

    cfg = _tower_config(model, model_cfg)
    preprocess = dataclasses.asdict(PreprocessCfg(size=cfg["vision_cfg"].get("image_size", 224),
                                                  **dict(preprocess_cfg or {})))
    stock = is_stock_clip(model)
    if stock and model.logit_bias is not None:
        cfg["init_logit_bias"] = float(model.logit_bias.detach())  # stock CLIP creates its logit_bias only with it
    directory = _strip_prefix(path)
    directory.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    if stock:
        _save_tensors(to_stock_state_dict(model), directory / HF_SAFE_WEIGHTS_NAME)
        _save_tensors({k: v for k, v in state.items() if k.startswith(_OWN_PREFIXES)}, directory / EXTRA_WEIGHTS_NAME)
    else:
        _save_tensors(state, directory / HF_SAFE_WEIGHTS_NAME)
        (directory / EXTRA_WEIGHTS_NAME).unlink(missing_ok=True)
    config = {"model_cfg": cfg, "preprocess_cfg": preprocess,
              _OURS: {"version": FORMAT_VERSION, "weights_layout": "open_clip" if stock else "manifold_align",
                      "embed_cfg": dataclasses.asdict(model.embed_cfg)}}
    text = json.dumps(config, indent=2) + "\n"
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{HF_CONFIG_NAME}.", suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(text)
    os.chmod(temporary, 0o666 & ~_umask())
    os.replace(temporary, directory / HF_CONFIG_NAME)
    return directory


def read_export_config(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """The ``open_clip_config.json`` of an exported directory, checked to be one of ours.

    Raises
    ------
    ValueError
        No config file, or one without our ``manifold_align`` key (a stock open_clip directory: load it with
        :func:`manifold_align.clip.from_open_clip` after open_clip has built it) or of a newer format.
    """
    file = _strip_prefix(path) / HF_CONFIG_NAME
    if not file.is_file():
        raise ValueError(f"`path`: {str(path)!r} is not an exported model directory (no {HF_CONFIG_NAME})")
    config = json.loads(file.read_text(encoding="utf-8"))
    ours = config.get(_OURS)
    if not isinstance(ours, Mapping) or "embed_cfg" not in ours or "model_cfg" not in config:
        raise ValueError(f"{file} was not written by manifold_align.clip.save_pretrained (no '{_OURS}' key with "
                         f"an embed_cfg); a stock open_clip directory loads with open_clip and converts with "
                         f"manifold_align.clip.from_open_clip")
    if int(ours.get("version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{file} has format version {ours['version']}; this manifold_align reads up to "
                         f"{FORMAT_VERSION}: upgrade manifold-align")
    return config


def export_model_config(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """The towers' config of an exported directory in this package's format (for ``get_tokenizer``, ...)."""
    cfg = dict(read_export_config(path)["model_cfg"])
    cfg.pop("init_logit_bias", None)  # stock CLIP's argument, not a config key of ours
    return cfg


def preprocess_from_dir(path: Union[str, os.PathLike]):
    """The ``open_clip.transform.PreprocessCfg`` of an exported directory (``open_clip.image_transform_v2``)."""
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    return PreprocessCfg(**merge_preprocess_dict(PreprocessCfg(), read_export_config(path).get("preprocess_cfg", {})))


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise ValueError(f"exported model directory {str(path.parent)!r} has no {path.name}")
    return load_file(str(path))


def load_pretrained_dir(path: Union[str, os.PathLike],
                        embed_cfg: Union[EmbedConfig, Mapping[str, Any], None] = None) -> MultiTokenCLIP:
    """Load a directory written by :func:`save_pretrained`: float32, CPU, training mode.

    Parameters
    ----------
    path : str or path
        The directory, optionally ``local-dir:``-prefixed.
    embed_cfg : EmbedConfig or dict, optional
        Must be None or equal to the stored one (the weights belong to it).
    """
    config = read_export_config(path)
    stored = EmbedConfig.from_dict(config[_OURS]["embed_cfg"])
    if embed_cfg is not None and dataclasses.asdict(EmbedConfig.from_dict(embed_cfg)) != dataclasses.asdict(stored):
        raise ValueError(f"`embed_cfg` differs from the one stored in {str(path)!r} ({dataclasses.asdict(stored)}); pass "
                         f"None, or load the weights into another geometry with create_model(name, embed_cfg, "
                         f"pretrained=path)")
    cfg = export_model_config(path)
    model = MultiTokenCLIP(cfg["vision_cfg"], cfg["text_cfg"], stored, quick_gelu=cfg.get("quick_gelu", False))
    directory = _strip_prefix(path)
    state = _read_tensors(directory / HF_SAFE_WEIGHTS_NAME)
    if config[_OURS].get("weights_layout") == "open_clip":
        from .pretrained import convert_stock_state_dict

        state = convert_stock_state_dict(state, 1, stored.width, noise_std=0.0)
        state.update(_read_tensors(directory / EXTRA_WEIGHTS_NAME))
    model.load_state_dict(state, strict=True)
    return model
