"""Labelled images for zero-shot classification: an image folder or a CSV/TSV of image path and label.

Two layouts, as the field keeps its evaluation sets:

- an image folder with one sub-folder per class (torchvision's ``ImageFolder`` layout, an ImageNet validation
  folder): classes are the sub-folders in sorted order, listed by torchvision's own ``find_classes`` and
  ``make_dataset`` with its image extensions;
- a CSV/TSV with an image-path column and a label column (relative paths resolved against the file's folder):
  a label is a class name, or a class index when every label is an integer.

Class names come from the folder names (or the distinct CSV labels, sorted), or from a file with one name per
line (in class order: the sorted sub-folders, or the indices), or from a built-in list (``imagenet``: open_clip's
``IMAGENET_CLASSNAMES``, for ImageNet's sorted WordNet-id folders). Prompt templates come from a file (one per
line, each with one ``{}``) or a built-in set (``openai``, ``simple``: open_clip's ``zero_shot_metadata``).

Images are read when the evaluation streams them (:func:`manifold_align_train.data.held_out.held_out_batches`); an
unreadable or missing image is an item ``None``, left out, counted and named by the evaluation, never a crash.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

import torch
from torch.utils.data import Dataset

from .csv_dataset import load_image
from .tasks import ZeroShotTask

__all__ = [
    "BUILTIN_CLASSNAMES",
    "BUILTIN_TEMPLATES",
    "LabelledImages",
    "csv_separator",
    "labelled_csv",
    "labelled_folder",
    "labelled_images",
    "read_classnames",
    "read_templates",
    "zero_shot_task",
]

#: names of the built-in template sets, each read from ``open_clip.zero_shot_metadata`` when used
BUILTIN_TEMPLATES = {"openai": "OPENAI_IMAGENET_TEMPLATES", "simple": "SIMPLE_IMAGENET_TEMPLATES"}
#: names of the built-in class-name lists, likewise
BUILTIN_CLASSNAMES = {"imagenet": "IMAGENET_CLASSNAMES"}

Template = Union[str, Callable[[str], str]]


def _metadata(name: str):
    from open_clip import zero_shot_metadata

    return getattr(zero_shot_metadata, name)


def _lines(path: str, what: str) -> List[str]:
    """The non-blank lines of a text file, stripped; lines starting with ``#`` are comments."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: no file at {path!r}")
    with open(path, encoding="utf-8") as handle:
        lines = [line.strip() for line in handle]
    return [line for line in lines if line and not line.startswith("#")]


def read_templates(spec: str) -> List[Template]:
    """Prompt templates: a built-in set name (``openai``, ``simple``) or a file with one template per line.

    Raises
    ------
    ValueError
        An empty file, or a line without exactly one ``{}`` (naming the line).
    FileNotFoundError
        Neither a built-in name nor a file.
    """
    if spec in BUILTIN_TEMPLATES:
        return list(_metadata(BUILTIN_TEMPLATES[spec]))
    templates = _lines(spec, f"templates {spec!r} (accepted: {', '.join(BUILTIN_TEMPLATES)} or a file)")
    if not templates:
        raise ValueError(f"templates file {spec!r} holds no template")
    for template in templates:
        try:
            fits = template.count("{}") == 1 and bool(template.format("x"))
        except (IndexError, KeyError, ValueError):  # another field, e.g. clip_benchmark's '{c}'
            fits = False
        if not fits:
            raise ValueError(f"templates file {spec!r}: each line must hold exactly one '{{}}' for the class "
                             f"name, got {template!r}")
    return templates


def read_classnames(spec: str) -> List[str]:
    """Class names: a built-in list name (``imagenet``) or a file with one name per line, in class order."""
    if spec in BUILTIN_CLASSNAMES:
        return list(_metadata(BUILTIN_CLASSNAMES[spec]))
    names = _lines(spec, f"classnames {spec!r} (accepted: {', '.join(BUILTIN_CLASSNAMES)} or a file)")
    if not names:
        raise ValueError(f"classnames file {spec!r} holds no class name")
    return names


class LabelledImages(Dataset):
    """Image files with class labels; item ``i`` is image ``i`` through ``transform``, or None if unreadable.

    Parameters
    ----------
    paths : sequence of str, length N
    labels : torch.Tensor, shape (N,), long in [0, C)
    classes : list of str, length C
        The class of each index as the source names it (folder names or CSV labels).
    transform : callable
        ``PIL.Image -> torch.Tensor (3, H, W)``.
    where : sequence of str, length N, optional
        Where each item comes from, for people (a CSV line); default: its path.
    """

    def __init__(self, paths: Sequence[str], labels: torch.Tensor, classes: List[str], transform: Callable,
                 where: Optional[Sequence[str]] = None):
        self.paths, self.labels, self.classes, self.transform = list(paths), labels, classes, transform
        self.where = list(where) if where is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def source(self, index: int) -> str:
        """Item ``index`` for people: its file (and CSV line)."""
        return self.paths[index] + (f" ({self.where[index]})" if self.where is not None else "")

    def __getitem__(self, index: int) -> Optional[torch.Tensor]:
        where = f" ({self.where[index]})" if self.where is not None else ""
        image = load_image(self.paths[index], where=where)
        return None if image is None else self.transform(image)


def labelled_folder(root: str, transform: Callable) -> LabelledImages:
    """The images of a class-per-folder tree, listed as torchvision's ``ImageFolder`` lists them.

    Raises
    ------
    ValueError
        No class sub-folder, or no image file at all.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    try:
        classes, class_to_idx = find_classes(root)
    except FileNotFoundError:
        raise ValueError(f"image folder {root!r} has no class sub-folder (expected one folder per class, "
                         f"the ImageFolder layout)") from None
    # an empty class folder is a class without images, not an error (it still gets a prompt)
    samples = make_dataset(root, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise ValueError(f"image folder {root!r}: no image file ({', '.join(IMG_EXTENSIONS)}) in its "
                         f"{len(classes)} class folders")
    labels = torch.tensor([label for _, label in samples], dtype=torch.long)
    return LabelledImages([path for path, _ in samples], labels, classes, transform)


def csv_separator(path: str, separator: Optional[str] = None) -> str:
    """``separator``, or the one a file's extension implies: tab for ``.tsv``, comma otherwise."""
    if separator is not None:
        return separator
    return "\t" if path.lower().endswith(".tsv") else ","


def _is_index(label: str) -> bool:
    return label.isdigit()


def labelled_csv(path: str, transform: Callable, *, img_key: str = "filepath", label_key: str = "label",
                 sep: Optional[str] = None, classnames: Optional[List[str]] = None) -> LabelledImages:
    """The rows of a CSV/TSV of image path and label.

    Parameters
    ----------
    path : str
    transform : callable
    img_key, label_key : str, keyword-only
        Column names.
    sep : str, optional, keyword-only
        Field separator; default from the extension (:func:`csv_separator`).
    classnames : list of str, optional, keyword-only
        The class names in class order. Labels that are all integers are indices into it (then it is
        required); other labels are names, looked up in it (default: the distinct labels, sorted).

    Raises
    ------
    ValueError
        A missing column, an empty label, an index out of range or a name not in ``classnames``, naming the line.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"labelled CSV not found: {path}")
    sep = csv_separator(path, sep)
    root = os.path.dirname(os.path.abspath(path))
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter=sep)
        missing = [key for key in (img_key, label_key) if key not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: column(s) {missing} not found (image column {img_key!r}, label column "
                             f"{label_key!r}, separator {sep!r}); the header has {reader.fieldnames}")
        rows = [(reader.line_num, (row[img_key] or "").strip(), (row[label_key] or "").strip()) for row in reader]
    empty = [line for line, _, label in rows if not label]
    if empty:
        raise ValueError(f"{path}: empty label on line(s) {empty[:10]}")
    labels = [label for _, _, label in rows]
    if labels and all(_is_index(label) for label in labels):
        if classnames is None:
            raise ValueError(f"{path}: the labels are class indices; give the class names (a classnames file)")
        classes = list(classnames)
        index = [int(label) for label in labels]
        bad = [(line, i) for (line, _, _), i in zip(rows, index) if i >= len(classes)]
        if bad:
            raise ValueError(f"{path}: class index {bad[0][1]} on line {bad[0][0]} is out of range for "
                             f"{len(classes)} class names")
    else:
        classes = list(classnames) if classnames is not None else sorted(set(labels))
        lookup = {name: i for i, name in enumerate(classes)}
        unknown = [(line, label) for line, _, label in rows if label not in lookup]
        if unknown:
            raise ValueError(f"{path}: label {unknown[0][1]!r} on line {unknown[0][0]} is not one of the "
                             f"{len(classes)} class names")
        index = [lookup[label] for label in labels]
    paths = [os.path.join(root, image) for _, image, _ in rows]
    return LabelledImages(paths, torch.tensor(index, dtype=torch.long), classes, transform,
                          where=[f"{path} line {line}" for line, _, _ in rows])


def labelled_images(path: str, transform: Callable, *, img_key: str = "filepath", label_key: str = "label",
                    sep: Optional[str] = None, classnames: Optional[List[str]] = None) -> LabelledImages:
    """A folder (:func:`labelled_folder`) or a CSV/TSV file (:func:`labelled_csv`), by what ``path`` is."""
    if Path(path).is_dir():
        return labelled_folder(path, transform)
    return labelled_csv(path, transform, img_key=img_key, label_key=label_key, sep=sep, classnames=classnames)


def zero_shot_task(path: str, transform: Callable, *, classnames: Optional[str] = None, templates: str = "openai",
                   img_key: str = "filepath", label_key: str = "label",
                   sep: Optional[str] = None) -> ZeroShotTask:
    """A :class:`~manifold_align_train.data.ZeroShotTask` of labelled images.

    Parameters
    ----------
    path : str
        A class-per-folder tree or a CSV/TSV of image path and label.
    transform : callable
        ``PIL.Image -> torch.Tensor (3, H, W)`` (the model's validation transform).
    classnames : str, optional, keyword-only
        ``imagenet`` or a file, one name per class in class order; default: the folder names or labels.
    templates : str, keyword-only
        ``openai``, ``simple`` or a file.
    img_key, label_key, sep : keyword-only
        CSV columns and separator.

    Raises
    ------
    ValueError
        The number of class names differs from the number of classes of the folder.
    """
    names = read_classnames(classnames) if classnames is not None else None
    images = labelled_images(path, transform, img_key=img_key, label_key=label_key, sep=sep, classnames=names)
    if names is not None and len(names) != len(images.classes):
        raise ValueError(f"classnames {classnames!r} has {len(names)} names for the {len(images.classes)} "
                         f"classes of {path!r}")
    return ZeroShotTask(images, images.labels, names if names is not None else list(images.classes),
                        read_templates(templates))
