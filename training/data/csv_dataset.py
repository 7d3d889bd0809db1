"""Image path + caption tables (open_clip's CSV/TSV format)."""

from __future__ import annotations

import csv
import logging
import os
from typing import Callable, List, Optional

import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["CsvDataset", "load_image"]

log = logging.getLogger(__name__)


def load_image(path: str, where: str = "") -> Optional[Image.Image]:
    """Open and fully decode ``path`` as RGB, or return ``None`` (and log why, adding ``where``) if that fails."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # convert() forces the decode, so truncation shows here
    except FileNotFoundError:
        log.warning("skipping missing image %s%s", path, where)
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ... on bad files
        log.warning("skipping unreadable image %s%s (%s: %s)", path, where, type(error).__name__, error)
    return None


class CsvDataset(Dataset):
    """Rows of an image path and a caption, read from a delimited text file.

    Parameters
    ----------
    path : str
        The CSV/TSV file. Relative image paths are resolved against its folder.
    transform : callable
        ``PIL.Image -> torch.Tensor (3, H, W)``.
    tokenizer : callable
        ``list[str] -> torch.LongTensor (N, L)``.
    img_key, caption_key : str
        Column names (open_clip's defaults ``"filepath"`` and ``"title"``).
    sep : str
        Field separator (``"\\t"`` for TSV, ``","`` for CSV).

    Notes
    -----
    Items are ``(image (3, H, W), tokens (L,))``, or ``None`` for a missing or unreadable image or
    an empty caption; :class:`manifold_align_train.data.loader.ResumableLoader` replaces and counts them.
    """

    def __init__(
        self,
        path: str,
        transform: Callable,
        tokenizer: Callable,
        *,
        img_key: str = "filepath",
        caption_key: str = "title",
        sep: str = "\t",
    ):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"`data.train_data`/`data.val_data` CSV not found: {path}")
        root = os.path.dirname(os.path.abspath(path))
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter=sep)
            columns = reader.fieldnames or []
            missing = [k for k in (img_key, caption_key) if k not in columns]
            if missing:
                raise ValueError(
                    f"{path}: column(s) {missing} not found (`data.csv_img_key`={img_key!r}, "
                    f"`data.csv_caption_key`={caption_key!r}, `data.csv_separator`={sep!r}); "
                    f"the header has {columns}"
                )
            rows, self.lines = [], []
            for row in reader:
                rows.append(row)
                # line_num is where the row ENDS; a quoted caption may span lines (blank lines are skipped)
                breaks = sum(str(v).count("\n") for v in row.values() if v is not None)
                self.lines.append(reader.line_num - breaks)
        self.paths: List[str] = [os.path.join(root, row[img_key] or "") for row in rows]
        self.captions: List[str] = [(row[caption_key] or "") for row in rows]
        self.transform = transform
        self.tokenizer = tokenizer
        self.path = path

    def __len__(self) -> int:
        return len(self.paths)

    def source(self, index: int) -> str:
        """Row ``index`` for people: its image file and the line of the CSV it is on (1-based, header included)."""
        return f"{self.paths[index]} ({self.path} line {self.lines[index]})"

    def __getitem__(self, index: int):
        caption = self.captions[index].strip()
        if not caption:
            log.warning("skipping %s: empty caption", self.source(index))
            return None
        image = load_image(self.paths[index], where=f" ({self.path} line {self.lines[index]})")
        if image is None:
            return None
        tokens: torch.Tensor = self.tokenizer([caption])[0]
        return self.transform(image), tokens
