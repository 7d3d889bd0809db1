"""Atomic file writes: a temporary file in the same folder, flushed and fsynced, renamed over the target.

A crash at any moment leaves either the previous file or the complete new one under the target name,
never a partial one. Checkpoints, ``summary.json`` and the rewritten ``metrics.jsonl`` all go through here.

The file gets the permissions ``open()`` would give it (``0o666`` less the umask: ``0644`` under umask ``022``),
not ``tempfile.mkstemp``'s ``0600``: on a shared filesystem other users and jobs must be able to read a run.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = ["atomic_write", "atomic_write_text"]


def _fsync_dir(directory: Path) -> None:
    # The rename itself is only durable once the directory entry is flushed.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _create_temporary(path: Path) -> tuple[int, Path]:
    """Create and open a new hidden file next to ``path``, mode ``0o666`` less the umask; return ``(fd, name)``."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            # O_EXCL: never open a file someone else made; the kernel applies the umask as for open()
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(handle)`` on a temporary binary file, then rename it over ``path``.

    Parameters
    ----------
    path : str or Path
        Final file name; its folder is created if missing.
    write : callable
        Writes the content to the open binary handle it is given.

    Returns
    -------
    Path
        ``path``, with mode ``0o666`` less the umask. On any error (in ``write`` too) the temporary file is
        removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; see :func:`atomic_write`."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))
