"""Checkpoint files: atomic writes, the latest N kept, ``latest`` resolution.

A checkpoint is one ``torch.save`` file ``checkpoints/step_00000100.pt`` holding tensors and plain data
(dicts, lists, numbers, strings: state dicts, RNG states as tensors, the data position, the config), so it
loads with ``torch.load(..., weights_only=True)``: a file carrying any other pickled object is refused
unopened (:class:`UnsafeCheckpointError`), because unpickling it could run arbitrary code.
It is written by :func:`manifold_align_train.atomic_write.atomic_write`: a temporary file in the same folder, flushed
and fsynced, then renamed over the final name with ``os.replace`` -- a crash at any moment leaves either the
previous set of checkpoints or the new complete file, never a partial one under a checkpoint name.

Each checkpoint has a SHA-256 next to it, ``step_00000100.pt.sha256`` in ``sha256sum`` format (so
``sha256sum -c`` checks it too), hashed while the file is written; :func:`load_checkpoint` verifies it, so a
file that lost its tail or some bytes on a shared filesystem is refused (:class:`DamagedCheckpointError`)
instead of loaded, and :func:`load_newest_intact` skips it for the newest intact one. A checkpoint without
the file (written before checksums, or by a run killed between the two renames) is still read, and torch's
own zip reader still refuses a truncated one. A full disk while writing (``ENOSPC``) leaves the previous
checkpoints as they were, removes the partial file and raises :class:`CheckpointSpaceError`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

from .atomic_write import atomic_write

__all__ = [
    "CHECKPOINT_DIR",
    "CheckpointSpaceError",
    "DamagedCheckpointError",
    "RunFolderError",
    "UnsafeCheckpointError",
    "check_run_folder",
    "atomic_torch_save",
    "checksum_path",
    "find_latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_newest_intact",
    "prune_checkpoints",
    "quarantine",
    "save_checkpoint",
]

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step_(\d+)\.pt$")
_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


class RunFolderError(ValueError):
    """The run folder holds checkpoints that this run would mix with its own; nothing was written."""


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds a pickled Python object beyond tensors and plain data; it was not loaded."""


class DamagedCheckpointError(ValueError):
    """A checkpoint file does not match its SHA-256, or cannot be read (truncated, not a checkpoint)."""


class CheckpointSpaceError(RuntimeError):
    """The disk filled up while a checkpoint was written; the partial file is removed, older ones are intact."""


_CHUNK = 1 << 22  # bytes hashed at a time when a checkpoint is verified


class _HashingWriter:
    """A binary file that hashes what goes through it (``torch.save`` writes to any object with ``write``)."""

    def __init__(self, handle: BinaryIO):
        self.handle, self.digest = handle, hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def checksum_path(path: str | Path) -> Path:
    """The SHA-256 file of checkpoint ``path``: ``path`` + ``.sha256``."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path) -> None:
    """Raise :class:`DamagedCheckpointError` unless ``path`` matches its SHA-256 file (if it has one)."""
    sums = checksum_path(path)
    try:
        expected = sums.read_text().split()[0]
    except (FileNotFoundError, IndexError):
        return
    actual = _file_sha256(path)
    if actual != expected:
        raise DamagedCheckpointError(
            f"{path} is damaged: its SHA-256 ({actual[:12]}...) does not match {sums.name} ({expected[:12]}...; "
            f"{path.stat().st_size} bytes on disk: truncated or overwritten since it was written)")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (:func:`manifold_align_train.atomic_write.atomic_write`).

    Parameters
    ----------
    obj : Any
        Anything ``torch.save`` accepts.
    path : str or Path
        Final file name; its folder is created if missing.

    Returns
    -------
    Path
        ``path``. On any error the temporary file is removed and ``path`` is untouched.
    """
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def checkpoint_path(directory: str | Path, step: int) -> Path:
    """Return ``directory/step_{step:08d}.pt``."""
    return Path(directory) / f"step_{step:08d}.pt"


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """Return ``[(step, path), ...]`` of the complete checkpoints in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry))
    return sorted(found)


def find_latest_checkpoint(directory: str | Path) -> Path | None:
    """Return the checkpoint with the highest step in ``directory``, or ``None``."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def prune_checkpoints(directory: str | Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints; return the deleted paths."""
    found = list_checkpoints(directory)
    doomed = [path for _, path in found[: max(len(found) - keep, 0)]]
    for path in doomed:
        path.unlink(missing_ok=True)
        checksum_path(path).unlink(missing_ok=True)
    return doomed


def save_checkpoint(state: dict[str, Any], directory: str | Path, step: int, *, keep: int) -> Path:
    """Write ``state`` as the checkpoint of ``step`` and keep only the ``keep`` newest.

    Parameters
    ----------
    state : dict
        Plain state (state dicts, RNG states, step, data position, config).
    directory : str or Path
        The run's checkpoint folder.
    step : int
        Optimizer steps done; part of the file name.
    keep : int
        How many checkpoints to keep (>= 1); older ones are deleted after the new one is complete.

    Raises
    ------
    CheckpointSpaceError
        The disk (or quota) filled up: the partial file is removed, the previous checkpoints are untouched.
    """
    path = checkpoint_path(directory, step)
    sums = checksum_path(path)
    writer: list[_HashingWriter] = []

    def write(handle: BinaryIO) -> None:
        writer.append(_HashingWriter(handle))
        torch.save(state, writer[0])
        # an older file of this step is about to be replaced: its checksum must not outlive it
        sums.unlink(missing_ok=True)

    try:
        atomic_write(path, write)
        atomic_write(sums, lambda handle: handle.write(f"{writer[0].digest.hexdigest()}  {path.name}\n".encode()))
    except Exception as error:
        if not _disk_full(error):
            raise
        raise CheckpointSpaceError(_space_message(state, Path(directory), path)) from error
    prune_checkpoints(directory, keep)
    return path


def _disk_full(error: BaseException | None) -> bool:
    """Whether ``error`` or an error it was raised during is ENOSPC or EDQUOT: torch's zip writer, failing to
    close the archive after the write failed, raises a RuntimeError of its own ("unexpected pos")."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _space_message(state: dict[str, Any], directory: Path, path: Path) -> str:
    older = [p for _, p in list_checkpoints(directory) if p != path]
    # a checkpoint is mostly its tensors; an older one of the run is the better measure when there is one
    needed = max([_tensor_bytes(state)] + [p.stat().st_size for p in older[-1:]])
    free = shutil.disk_usage(directory).free
    kept = f"the previous checkpoints are intact (newest: {older[-1].name})" if older else "no checkpoint is lost"
    return (f"no space left in {directory} to write {path.name}: a checkpoint needs about {needed / 2**20:.1f} MiB "
            f"and {free / 2**20:.1f} MiB are free (the newest train.keep_checkpoints stay until the next one is "
            f"complete); the partial file was removed and {kept}; free some space and continue with --resume "
            f"latest")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` onto the CPU, tensors and plain data only.

    Raises
    ------
    DamagedCheckpointError
        If the file does not match its SHA-256 file, or torch cannot read it (a truncated zip archive).
    UnsafeCheckpointError
        If the file holds any other pickled object (a class, a function, a numpy array): nothing of it is
        executed. Checkpoints written before RNG states were stored as tensors hold numpy arrays and are
        refused too.
    """
    path = Path(path)
    _verify(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = _GLOBAL.search(str(error))
        what = found.group(1) if found else str(error).splitlines()[0]
        raise UnsafeCheckpointError(
            f"{path}: refused to load: it holds a pickled Python object ({what}), not only tensors and plain "
            f"data; unpickling it could run arbitrary code (checkpoints written before RNG states were "
            f"stored as tensors hold numpy arrays and are refused too)"
        ) from None
    except (RuntimeError, EOFError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DamagedCheckpointError(f"{path} cannot be read ({reason}): truncated, or not a checkpoint") from None


def quarantine(path: str | Path) -> Path:
    """Rename a damaged checkpoint (and its SHA-256 file) to ``<name>.damaged``, out of ``list_checkpoints``'
    sight but kept for inspection; return the new name. Every process of a job may call it (the renames of
    those that come second find nothing to rename)."""
    path = Path(path)
    target = path.with_name(path.name + ".damaged")
    for source, dest in ((path, target), (checksum_path(path), checksum_path(target))):
        try:
            os.replace(source, dest)
        except FileNotFoundError:
            pass
    return target


def load_newest_intact(directory: str | Path, *, skipped: Callable[[Path, str], None]) -> tuple[Path, dict] | None:
    """Load the newest checkpoint of ``directory`` that is intact; the damaged newer ones are quarantined.

    Parameters
    ----------
    directory : str or Path
        A run's checkpoint folder.
    skipped : callable
        Called as ``skipped(path, reason)`` for each damaged checkpoint passed over (before it is renamed
        to ``<name>.damaged`` by :func:`quarantine`).

    Returns
    -------
    (Path, dict) or None
        The checkpoint and its state; None when no intact checkpoint is left.
    """
    for _, path in reversed(list_checkpoints(directory)):
        try:
            return path, load_checkpoint(path)
        except FileNotFoundError:
            continue  # another process of the job found it damaged first and renamed it
        except DamagedCheckpointError as error:
            skipped(path, str(error))
            quarantine(path)
    return None


def check_run_folder(output: Path, resume_step: int | None) -> None:
    """Refuse a run folder whose checkpoints a run would mix with its own (pruning keeps the highest steps,
    so it would delete the new ones).

    Parameters
    ----------
    output : Path
        The run folder (it may not exist yet).
    resume_step : int or None
        The step of the checkpoint the run resumes from; None for a new run.

    Raises
    ------
    RunFolderError
        A new run into a folder with checkpoints, or a resume into one with later checkpoints.
    """
    found = list_checkpoints(output / CHECKPOINT_DIR)
    if resume_step is None and found:
        raise RunFolderError(f"{output} already holds checkpoints ({found[-1][1].name}); continue that run with "
                             f"--resume latest, or choose another --output")
    newer = [path.name for step, path in found if resume_step is not None and step > resume_step]
    if newer:
        raise RunFolderError(f"resuming at step {resume_step} into {output}, which holds later checkpoints "
                             f"{newer}; move them away or choose another --output")
