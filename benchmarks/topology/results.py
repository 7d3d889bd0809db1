"""Results files of the topology benchmark: one row per run, read the same way for both modes.

``results.csv`` holds one row per run (a topology at one noise, batch size and seed, with the mode's budget
columns), ``trajectories.csv`` one row per run and logged step (the fast mode: its evaluations; the full
mode: the temperature scale and similarity gap of its logged steps). Both modes append a run's rows the
moment it finishes, under the folder's write lock (:func:`writing`, :func:`append_runs`), so several
processes can write into one folder. Full-mode folders written before then hold the trajectories in
``results.json`` (its rows with ``temperature_trajectory`` and ``gap_trajectory``), which :func:`load` still
reads. :func:`load` turns any folder into the report's rows and trajectory points, with the same column names:

- ``geometry`` (older files: ``similarity``), ``scale`` (the final temperature scale; full mode:
  ``final_temperature``), ``mode`` (``full`` where the file has no such column);
- a geometry's learned values (``curvature``, ``image_scale``, ... whatever its ``values()`` returned) are
  the columns that are not the benchmark's own (:func:`value_columns`);
- ``negatives`` and ``train_pairs`` of a fast-mode row written before those columns existed (empty there): what
  such runs were trained with, :data:`.spec.FAST_ROW_DEFAULTS` (every pair a negative, 5000 pairs).

A run is identified by :data:`RUN_KEY`; :func:`distinct` refuses a file that holds a run twice.
"""

from __future__ import annotations

import csv
import fcntl
import json
import math
import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

from . import spec

RESULTS, TRAJECTORIES = "results.csv", "trajectories.csv"
#: the lock file of a results folder: held while a process appends to it (:func:`writing`)
WRITE_LOCK = ".results.lock"
#: the columns that identify a run (a missing one counts as empty)
RUN_KEY = ("mode", "profile", "dataset", "model", "topology", "noise", "batch_size", "steps", "hidden", "negatives",
           "train_pairs", "seed")
#: columns whose differences between two copies of a run are not results (timing, paths, what trained it)
INCIDENTAL = ("wall_time_seconds", "run_dir", "hardware")
TEXT_COLUMNS = {"mode", "profile", "topology", "geometry", "similarity", "temperature", "device", "dataset",
                "data", "zero_shot_set", "retrieval_set", "model", "run_dir", "negatives", "hardware"}
INT_COLUMNS = {"k", "d", "seed", "steps", "batch_size", "hidden", "step", "train_pairs"}
#: the benchmark's own columns, both modes; any other numeric column is a learned value of the geometry
OWN_COLUMNS = TEXT_COLUMNS | INT_COLUMNS | {
    "noise", "class_tokens", "zero_shot_top1", "zero_shot_top5", "image_to_text_R@1", "text_to_image_R@1",
    "retrieval_R@1", "zero_shot_top1_at_80pct", "scale", "scale_at_80pct", "final_temperature",
    "positive_similarity", "negative_similarity", "gap", "gap_normalized", "final_loss", "loss", "loss_floor",
    "wall_time_seconds"}


class DuplicateRunError(ValueError):
    """A results file holds the same run (:data:`RUN_KEY`) more than once."""


def _parse(key: str, value: Optional[str]) -> Any:
    if key in TEXT_COLUMNS:
        return value or ""
    if value in ("", None):
        return math.nan
    if key in INT_COLUMNS:
        return int(value)
    return float(value)


def normalize(row: dict[str, Any], mode: str = "full") -> dict[str, Any]:
    """One row in the report's column names (see the module docstring), ``mode`` where it has none; a new dict."""
    out = dict(row)
    if "similarity" in out:
        out.setdefault("geometry", out.pop("similarity"))
    if "scale" not in out and "final_temperature" in out:
        out["scale"] = out["final_temperature"]
    out.setdefault("mode", mode)
    return _fast_defaults(out)


def _fast_defaults(row: dict[str, Any]) -> dict[str, Any]:
    """A fast-mode row with :data:`.spec.FAST_ROW_DEFAULTS` where it has no value (``row`` itself otherwise)."""
    def missing(value):
        return value in (None, "") or (isinstance(value, float) and math.isnan(value))

    if row.get("mode") != "fast" or not any(missing(row.get(k)) for k in spec.FAST_ROW_DEFAULTS):
        return row
    return {**row, **{k: v for k, v in spec.FAST_ROW_DEFAULTS.items() if missing(row.get(k))}}


def read_csv(path: Path, mode: str = "full") -> list[dict[str, Any]]:
    """Rows of a results or trajectories CSV, numbers as numbers (empty cells NaN), normalized."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [normalize({key: _parse(key, value) for key, value in raw.items()}, mode)
                for raw in csv.DictReader(handle)]


def run_key(row: dict[str, Any]) -> tuple:
    """The identity of the run a row belongs to (:data:`RUN_KEY`; noise rounded to 1e-6; a fast-mode row without
    ``negatives`` or ``train_pairs`` has :data:`.spec.FAST_ROW_DEFAULTS`')."""
    row = _fast_defaults(row)

    def value(key):
        v = row.get(key, "")
        if isinstance(v, float):
            return "" if math.isnan(v) else round(v, 6)
        return v

    return tuple(value(key) for key in RUN_KEY)


def summarize(keys: Sequence[tuple]) -> str:
    """Run keys in words, grouped by cell: ``sphere-none noise 0.2 batch 128 seeds 20-24 (300 steps)``."""
    cells: dict[tuple, list[int]] = {}
    for key in keys:
        row = dict(zip(RUN_KEY, key))
        cells.setdefault(tuple(v for k, v in row.items() if k != "seed"), []).append(row["seed"])
    out = []
    for cell_key, seeds in cells.items():
        row = dict(zip([k for k in RUN_KEY if k != "seed"], cell_key))
        seeds = sorted(seeds)
        span = (f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"
                if seeds == list(range(seeds[0], seeds[-1] + 1)) else "seeds " + ", ".join(map(str, seeds)))
        out.append(f"{row['topology']} noise {row['noise']:g} batch {row['batch_size']} {span} ({row['steps']} steps)")
    return "; ".join(out)


def duplicates(rows: Iterable[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """The runs that appear more than once, each with its rows."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(run_key(row), []).append(row)
    return {key: copies for key, copies in groups.items() if len(copies) > 1}


def _same_results(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def equal(x, y):
        return x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))

    keys = (set(a) | set(b)) - set(INCIDENTAL)
    return all(equal(a.get(k), b.get(k)) for k in keys)


def distinct(rows: Sequence[dict[str, Any]], *, drop_identical: bool = False,
             source: str = "results.csv") -> tuple[list[dict[str, Any]], list[tuple]]:
    """``rows`` with every run once, and the keys of the runs that were repeated.

    Parameters
    ----------
    rows : sequence of dict
    drop_identical : bool, keyword-only
        Keep the first row of a repeated run when its copies agree in every result (all columns but
        :data:`INCIDENTAL`), instead of refusing. Copies that disagree are refused either way: which one
        to report is not the report's to choose.
    source : str, keyword-only
        Named in the error.

    Raises
    ------
    DuplicateRunError
        Naming the repeated runs (and how many rows they add).
    """
    repeated = duplicates(rows)
    if not repeated:
        return list(rows), []
    differ = [key for key, copies in repeated.items() if not all(_same_results(copies[0], c) for c in copies[1:])]
    if not drop_identical or differ:
        shown = differ or list(repeated)
        extra = sum(len(c) - 1 for c in repeated.values())
        what = "with different results" if differ else "with identical results (--drop-duplicates keeps the first)"
        raise DuplicateRunError(
            f"{source} holds {len(repeated)} runs more than once ({extra} extra rows), {what}: "
            + summarize(shown) + ". Each run must appear once: a repeated run would count twice in every mean and interval.")
    seen, out = set(), []
    for row in rows:
        key = run_key(row)
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out, list(repeated)


def distinct_points(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trajectory points with each (run, step) once (the first); copies of a run repeated in results.csv."""
    seen, out = set(), []
    for point in points:
        key = (run_key(point), point["step"])
        if key not in seen:
            seen.add(key)
            out.append(point)
    return out


def _cell_text(value: Any) -> Any:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _write_atomic(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    # written beside the file and renamed over it: a reader never sees half a file
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            writer.writerows({c: _cell_text(r.get(c)) for c in columns} for r in rows)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def header(path: Path) -> list[str]:
    """The column names of a CSV file (``[]`` when it does not exist)."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return next(csv.reader(handle), [])


def append_rows(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Append ``rows`` to a CSV, flushed to disk before returning.

    ``columns`` are the file's own columns (those of a new file, in order; other keys of the rows are left
    out), followed by the geometries' learned values (keys that are not :data:`OWN_COLUMNS`). A learned value
    the file has no column for yet (a geometry not seen before), or one of ``columns`` an older file lacks
    (``negatives``, ``train_pairs``), rewrites the file with that column added, atomically; its older rows leave
    it empty. An older file's ``similarity`` column becomes ``geometry``.
    """
    existing = header(path)
    extra = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in OWN_COLUMNS and k not in columns]
    renamed = ["geometry" if c == "similarity" else c for c in existing]
    missing = [c for c in columns if c not in renamed] if existing else []
    if existing and not missing and set(extra) <= set(existing):
        with path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=existing, extrasaction="ignore")
            # an older file names the geometry column `similarity`
            writer.writerows({c: _cell_text(r.get("geometry") if c == "similarity" else r.get(c)) for c in existing}
                             for r in rows)
            handle.flush()
            os.fsync(handle.fileno())
        return
    if not existing:
        _write_atomic(path, rows, [*columns, *extra])
        return
    with path.open(newline="") as handle:  # the old rows as written, renamed, not reparsed
        old = [{("geometry" if k == "similarity" else k): v for k, v in raw.items()} for raw in csv.DictReader(handle)]
    _write_atomic(path, [*old, *rows], list(dict.fromkeys([*renamed, *missing, *extra])))


def value_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The geometry's learned values among the rows' columns: numeric columns that are not the benchmark's own,
    with a value in at least one row, in first-seen order."""
    out: dict[str, None] = {}
    for row in rows:
        for key, value in row.items():
            if key not in OWN_COLUMNS and isinstance(value, (int, float)) and not math.isnan(value):
                out.setdefault(key)
    return list(out)


#: a full-mode row's trajectories (lists of ``[step, value]``) and the trajectory column each becomes
FULL_TRAJECTORIES = {"temperature_trajectory": "scale", "gap_trajectory": "gap_normalized"}


def trajectory_points(row: dict[str, Any]) -> list[dict[str, Any]]:
    """A full-mode row's trajectories as points: its :data:`RUN_KEY` columns, ``step``, ``scale``,
    ``gap_normalized`` (NaN for a value a step lacks), in step order."""
    by_step: dict[int, dict[str, Any]] = {}
    for key, column in FULL_TRAJECTORIES.items():
        for step, value in row.get(key) or []:
            by_step.setdefault(int(step), {})[column] = math.nan if value is None else float(value)
    base = {k: row.get(k, "") for k in RUN_KEY}
    return [{**base, "step": step, **{c: values.get(c, math.nan) for c in FULL_TRAJECTORIES.values()}}
            for step, values in sorted(by_step.items())]


def full_trajectories(path: Path) -> list[dict[str, Any]]:
    """Trajectory points of a full-mode ``results.json`` (folders written before ``trajectories.csv``)."""
    if not path.is_file():
        return []
    points = []
    for raw in json.loads(path.read_text()):
        row = normalize({k: (math.nan if v is None else v) for k, v in raw.items() if k not in FULL_TRAJECTORIES})
        points += trajectory_points({**row, **{k: raw.get(k) for k in FULL_TRAJECTORIES}})
    return points


# --------------------------------------------------------------------------------------------------
# writing: one process at a time per folder, a run's rows at once
# --------------------------------------------------------------------------------------------------
# flock excludes other open files of the lock, not other threads of one process on a filesystem (NFS) that
# maps it to POSIX locks, which belong to the process: the threads of one process also take this
_THREADS = threading.Lock()


@contextmanager
def writing(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s write lock (:data:`WRITE_LOCK`) for the duration, waiting for it if another process
    (or thread) holds it: read-check-append sequences inside never interleave with another writer's."""
    folder.mkdir(parents=True, exist_ok=True)
    with _THREADS, open(folder / WRITE_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def keys(folder: Path) -> set[tuple]:
    """The run keys of ``folder``'s ``results.csv``."""
    return {run_key(r) for r in read_csv(folder / RESULTS)}


def append_runs(folder: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str],
                points: Sequence[dict[str, Any]] = (), point_columns: Sequence[str] = ()) -> None:
    """Append finished runs' ``rows`` to ``folder/results.csv`` and their trajectory ``points`` to
    ``folder/trajectories.csv``; the caller holds :func:`writing`.

    The points go first: a run counts as done once its row is written, so an interruption between the two
    leaves no row without its trajectory (a run trained again after such an interruption repeats points,
    which :func:`load` reads once).

    Raises
    ------
    RuntimeError
        When a row's run is already in ``results.csv`` (nothing is written): a bug upstream, never a state
        to write, since the report would refuse the file.
    """
    path = folder / RESULTS
    present = keys(folder)
    again = [run_key(r) for r in rows if run_key(r) in present]
    if again:
        raise RuntimeError(f"refusing to write runs already in {path}: {summarize(again)}")
    if point_columns:
        append_rows(folder / TRAJECTORIES, points, point_columns)
    append_rows(path, rows, columns)


def load(folder: Path, *, profile: Optional[str] = None, drop_duplicates: bool = False
         ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[tuple]]:
    """``(rows, trajectory points, repeated run keys)`` of a results folder of either mode.

    The points are those of ``trajectories.csv`` and, in a full-mode folder written before that file
    existed, of ``results.json``. ``profile`` keeps the fast-mode rows of that profile only. Raises
    :class:`DuplicateRunError` as :func:`distinct` does.
    """
    rows = read_csv(folder / RESULTS)
    if profile is not None:
        rows = [r for r in rows if r.get("profile", profile) == profile]
    rows, repeated = distinct(rows, drop_identical=drop_duplicates, source=str(folder / RESULTS))
    points = read_csv(folder / TRAJECTORIES, mode="fast")  # the fast mode's file has no mode column
    if profile is not None:
        points = [p for p in points if p.get("profile", profile) == profile]
    points += full_trajectories(folder / "results.json")
    return rows, distinct_points(points), repeated
