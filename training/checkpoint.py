"""Checkpoint files: atomic writes, the latest N kept, ``latest`` resolution.

A checkpoint is one ``torch.save`` file ``checkpoints/step_00000100.pt`` holding tensors and plain data
(dicts, lists, numbers, strings: state dicts, RNG states as tensors, the data position, the config), so it
loads with ``torch.load(..., weights_only=True)``: a file carrying any other pickled object is refused
unopened (:class:`UnsafeCheckpointError`), because unpickling it could run arbitrary code.
It is written by :func:`manifold_align_train.atomic_write.atomic_write`: a temporary file in the same folder, flushed
and fsynced, then renamed over the final name with ``os.replace`` -- a crash at any moment leaves either the
previous set of checkpoints or the new complete file, never a partial one under a checkpoint name.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from .atomic_write import atomic_write

__all__ = [
    "CHECKPOINT_DIR",
    "RunFolderError",
    "UnsafeCheckpointError",
    "check_run_folder",
    "atomic_torch_save",
    "find_latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "save_checkpoint",
]

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step_(\d+)\.pt$")
_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


class RunFolderError(ValueError):
    """The run folder holds checkpoints that this run would mix with its own; nothing was written."""


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds a pickled Python object beyond tensors and plain data; it was not loaded."""


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
    """
    path = atomic_torch_save(state, checkpoint_path(directory, step))
    prune_checkpoints(directory, keep)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` onto the CPU, tensors and plain data only.

    Raises
    ------
    UnsafeCheckpointError
        If the file holds any other pickled object (a class, a function, a numpy array): nothing of it is
        executed. Checkpoints written before RNG states were stored as tensors hold numpy arrays and are
        refused too.
    """
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = _GLOBAL.search(str(error))
        what = found.group(1) if found else str(error).splitlines()[0]
        raise UnsafeCheckpointError(
            f"{path}: refused to load: it holds a pickled Python object ({what}), not only tensors and plain "
            f"data; unpickling it could run arbitrary code (checkpoints written before RNG states were "
            f"stored as tensors hold numpy arrays and are refused too)"
        ) from None


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
