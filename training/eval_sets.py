"""Named evaluation sets: zero-shot classification on labelled images, retrieval on any pairs, each under its name.

``eval.datasets`` maps a name to a set (``manifold-align eval --images ...`` adds one from the command line)::

    eval:
      datasets:
        imagenet-val:                 # keys of its metrics: imagenet-val/zero_shot_top1, ...
          path: /data/imagenet/val    # class-per-folder tree, or a CSV/TSV of image path and label
          classnames: imagenet        # or a file (one name per class, in class order); default: folder names
          templates: openai           # or simple, or a file (one template per line, with {})
        coco-val:
          task: retrieval
          path: /data/coco/val.tsv    # CSV/TSV of image path and caption, or webdataset shards

A set is checked when the configuration is (the path exists, the templates and class names are readable), and
built once per run (:func:`build_eval_sets`). The trainer evaluates every set at each evaluation and logs its
metrics under ``NAME/``, next to those of the run's own held-out data.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Literal, Optional, Union

from .config import RunConfig
from .typed_config import ConfigError, build_dataclass
from .data.labelled_images import BUILTIN_CLASSNAMES, BUILTIN_TEMPLATES, csv_separator, read_classnames, \
    read_templates, zero_shot_task
from .data.tasks import RetrievalTask, ZeroShotTask

__all__ = ["EvalSet", "EvalSetConfig", "build_eval_sets", "check_eval_sets", "eval_set_configs"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class EvalSetConfig:
    """One named evaluation set (a value of ``eval.datasets``).

    ``task`` is ``zero_shot`` (labelled images: ``path`` a class-per-folder tree or a CSV/TSV with
    ``csv_img_key`` and ``csv_label_key`` columns; ``classnames`` ``imagenet`` or a file, default the folder
    names or labels; ``templates`` ``openai``, ``simple`` or a file) or ``retrieval`` (``path`` a CSV/TSV with
    ``csv_img_key`` and ``csv_caption_key`` columns, or webdataset shards). ``csv_separator`` defaults to a tab
    for ``.tsv`` files and a comma otherwise.
    """

    path: Optional[str] = None
    task: Literal["zero_shot", "retrieval"] = "zero_shot"
    classnames: Optional[str] = None
    templates: str = "openai"
    csv_img_key: str = "filepath"
    csv_label_key: str = "label"
    csv_caption_key: str = "title"
    csv_separator: Optional[str] = None


@dataclass
class EvalSet:
    """A built evaluation set: ``task`` a ZeroShotTask or RetrievalTask (its ``bad``: the items the last
    evaluation left out, by name)."""

    name: str
    task: Union[ZeroShotTask, RetrievalTask]


def _is_shards(path: str) -> bool:
    return path.endswith(".tar") or "{" in path or "::" in path


def _check_set(name: str, set_cfg: EvalSetConfig) -> None:
    key = f"eval.datasets.{name}"
    if not set_cfg.path:
        raise ConfigError(f"'{key}.path' is required: a class-per-folder tree or a CSV/TSV of labelled images "
                          f"(task zero_shot), or a CSV/TSV or webdataset shards of pairs (task retrieval)")
    path = set_cfg.path
    if set_cfg.task == "retrieval":
        if not (_is_shards(path) or os.path.isfile(path)):
            raise ConfigError(f"bad value {path!r} for '{key}.path': expected a CSV/TSV file of image path and "
                              f"caption or webdataset shards (.tar, brace pattern); no such file")
        return
    if not (os.path.isdir(path) or os.path.isfile(path)):
        raise ConfigError(f"bad value {path!r} for '{key}.path': expected a class-per-folder tree or a CSV/TSV "
                          f"of image path and label; no such folder or file")
    for option, reader, builtins in (("templates", read_templates, BUILTIN_TEMPLATES),
                                     ("classnames", read_classnames, BUILTIN_CLASSNAMES)):
        spec = getattr(set_cfg, option)
        if spec is None:
            continue
        try:
            reader(spec)
        except (OSError, ValueError) as error:
            raise ConfigError(f"bad value {spec!r} for '{key}.{option}': expected one of "
                              f"{', '.join(builtins)} or a readable file ({error})") from None


def eval_set_configs(cfg: RunConfig) -> Dict[str, EvalSetConfig]:
    """The checked sets of ``eval.datasets`` (a ``null`` value switches a set off).

    Raises
    ------
    ConfigError
        Naming the key (``eval.datasets.NAME.path``), what was expected and what arrived.
    """
    out = {}
    for name, values in cfg.eval.datasets.items():
        if values is None:
            continue
        if not _NAME.match(name):
            raise ConfigError(f"bad set name {name!r} in 'eval.datasets': expected letters, digits, '_', '.' "
                              f"and '-' (it prefixes the set's metric names)")
        set_cfg = build_dataclass(EvalSetConfig, values, f"eval.datasets.{name}")
        _check_set(name, set_cfg)
        out[name] = set_cfg
    return out


def check_eval_sets(cfg: RunConfig) -> None:
    """Check ``eval.datasets`` (:func:`eval_set_configs`), for the configuration's validation."""
    eval_set_configs(cfg)


def build_eval_sets(cfg: RunConfig, transform: Callable, tokenizer: Callable) -> List[EvalSet]:
    """Build the sets of ``eval.datasets`` (files listed; images read only when evaluated).

    Parameters
    ----------
    cfg : RunConfig
    transform : callable
        The model's validation transform, ``PIL.Image -> torch.Tensor (3, H, W)``.
    tokenizer : callable
        For the captions of retrieval sets.
    """
    from .data.csv_dataset import CsvDataset
    from .data.webdataset_source import HeldOutShards

    sets = []
    for name, set_cfg in eval_set_configs(cfg).items():
        sep = csv_separator(set_cfg.path, set_cfg.csv_separator)
        if set_cfg.task == "zero_shot":
            task = zero_shot_task(set_cfg.path, transform, classnames=set_cfg.classnames,
                                  templates=set_cfg.templates, img_key=set_cfg.csv_img_key,
                                  label_key=set_cfg.csv_label_key, sep=set_cfg.csv_separator)
        elif _is_shards(set_cfg.path):
            task = RetrievalTask(HeldOutShards(set_cfg.path, transform, tokenizer))
        else:
            task = RetrievalTask(CsvDataset(set_cfg.path, transform, tokenizer, img_key=set_cfg.csv_img_key,
                                            caption_key=set_cfg.csv_caption_key, sep=sep))
        sets.append(EvalSet(name, task))
    return sets


def cli_eval_set(args: Any) -> Dict[str, Any]:
    """``manifold-align eval``'s ``--images``/``--pairs`` options as one ``eval.datasets`` entry (plain data)."""
    path = args.images or args.pairs
    values: Dict[str, Any] = {"path": path, "task": "zero_shot" if args.images else "retrieval"}
    for option in ("classnames", "templates", "csv_img_key", "csv_label_key", "csv_caption_key", "csv_separator"):
        value = getattr(args, option)
        if value is not None:
            values[option] = value
    return values


def default_set_name(path: str) -> str:
    """A set name from its path: the folder's or file's name without extension, made a valid name."""
    stem = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.") or "set"
    return name if _NAME.match(name) else f"set-{name}"
