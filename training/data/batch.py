"""One training batch, and the collate function that drops bad samples."""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple

import torch

__all__ = ["Batch", "BadDataError", "all_bad_error", "collate_skip_bad"]


class BadDataError(RuntimeError):
    """Every sample of a batch (or of the whole data source) was bad.

    Bad means an unreadable or missing image, or an empty caption. One bad sample is skipped and
    counted; nothing left to train on means the data source itself is broken, so it is an error
    that names the files.
    """


def all_bad_error(what: str, sources: Optional[Sequence[str]] = None) -> BadDataError:
    """The :class:`BadDataError` for "all of ``what`` are bad", naming up to 10 ``sources``.

    Parameters
    ----------
    what : str
        The set that turned out bad, e.g. ``"all 8 samples of the batch"``.
    sources : sequence of str, optional
        File paths (or shard and key) of the bad samples.
    """
    if sources is not None and len(sources) > 0:
        shown = ", ".join(str(s) for s in list(sources)[:10])
        more = f" (and {len(sources) - 10} more)" if len(sources) > 10 else ""
        names = f": {shown}{more}"
    else:
        names = " (sources unknown)"
    return BadDataError(f"{what} are bad (unreadable or missing image, or empty caption){names}")


class Batch(NamedTuple):
    """A collated batch of image-text pairs.

    Attributes
    ----------
    images : torch.Tensor, shape (B, 3, H, W), float
        Preprocessed images.
    texts : torch.Tensor, shape (B, L), long
        Token ids.
    n_skipped : int
        Bad samples met while filling this batch. The training loaders replace each one (the batch
        stays full); :func:`collate_skip_bad` drops them (then ``B + n_skipped`` is the nominal
        batch size).
    bad : tuple of str
        Names (file path, CSV line, shard and key) of the bad samples met, one per encounter where
        the name is known; the loaders collect the distinct ones for the run's report.
    """

    images: torch.Tensor
    texts: torch.Tensor
    n_skipped: int = 0
    bad: Tuple[str, ...] = ()

    def to(self, device, *, non_blocking: bool = False) -> "Batch":
        """Return a copy with ``images`` and ``texts`` moved to ``device``."""
        return Batch(
            self.images.to(device, non_blocking=non_blocking),
            self.texts.to(device, non_blocking=non_blocking),
            self.n_skipped,
            self.bad,
        )


def collate_skip_bad(batch: Sequence, *, sources: Optional[Sequence[str]] = None) -> Batch:
    """Stack the good samples of ``batch`` and count the bad ones.

    Parameters
    ----------
    batch : sequence of (torch.Tensor (3, H, W), torch.Tensor (L,)) or None
        Dataset items; ``None`` marks a bad sample.
    sources : sequence of str, optional
        One name per item (file path, shard and key), quoted by :class:`BadDataError`.

    Returns
    -------
    Batch
        ``images`` (B, 3, H, W), ``texts`` (B, L) long, ``n_skipped`` = number of ``None`` items,
        ``bad`` = their ``sources`` (empty without ``sources``).

    Raises
    ------
    BadDataError
        If every item is ``None`` (or ``batch`` is empty); names the sources when given.
    """
    good = [item for item in batch if item is not None]
    n_skipped = len(batch) - len(good)
    if not good:
        raise all_bad_error(f"all {len(batch)} samples of the batch", sources)
    images = torch.stack([item[0] for item in good])
    texts = torch.stack([torch.as_tensor(item[1], dtype=torch.long) for item in good])
    bad = tuple(str(name) for item, name in zip(batch, sources) if item is None) if sources is not None else ()
    return Batch(images, texts, n_skipped, bad)
