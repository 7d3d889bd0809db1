"""The fast mode's grid: plan, resume, power extension; the engine is :mod:`.fast`.

What runs, in this order (each *cell* is one topology at one noise and batch size, several seeds at once):

1. the main grid: every fast topology x caption noise, batch ``--batch-size``, the first ``--seeds`` seeds;
2. the k sweep: ``oblique-none`` at ``k`` in ``--k-values`` (k * d = 512), noise ``--k-noise``;
3. the batch sweep: ``sphere-none``, ``oblique-none`` and ``sphere-learnable`` at noise 0 for each batch size
   up to ``--cheap-batch`` (their batch ``--batch-size`` runs are the main grid's);
4. power: while a (topology, noise) cell's paired difference from ``sphere-learnable`` has a 95% half-width
   above ``--target`` points, ``--seeds`` more seeds for it and the baseline, up to ``--max-seeds``;
5. the batch sweep's larger batch sizes.

Every finished cell appends its rows to ``results.csv`` (one row per seed) and ``trajectories.csv`` at once, so
an interrupted grid loses at most the cell in progress and resumes where it stopped. A run is never planned
twice: before each cell the grid rereads ``results.csv`` and trains only the seeds that have no row there (same
profile, topology, noise, batch size, steps, hidden width and seed), one grid at a time holds the folder (a
lock file), and a row whose run is already in the file is refused. ``--time-budget`` stops starting new
cells after that many seconds, the first excepted (the GPU profile's default keeps the whole command under 10
minutes).
"""

from __future__ import annotations

import argparse
import fcntl
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Optional

from . import results, spec, stats

#: results.csv columns, in order, before the geometries' learned values (which follow, by name)
COLUMNS = ("mode", "profile", "topology", "geometry", "k", "d", "temperature", "noise", "seed", "steps",
           "batch_size", "hidden", "zero_shot_top1", "retrieval_R@1", "zero_shot_top1_at_80pct", "scale",
           "scale_at_80pct", "final_loss", "loss_floor", "wall_time_seconds", "device")
TRAJECTORY_COLUMNS = ("profile", "topology", "noise", "batch_size", "steps", "hidden", "seed", "step",
                      "zero_shot_top1", "loss", "scale")
LOCK = ".grid.lock"


@dataclass(frozen=True)
class Cell:
    """One vectorized run: a topology at one noise and batch size, several seeds."""

    topology: str
    noise: float
    batch_size: int
    seeds: tuple[int, ...]
    part: str  # "main", "k", "batch", "power"

    def key(self, seed: int, args: argparse.Namespace) -> tuple:
        """The run key (:func:`results.run_key`) of seed ``seed``'s row."""
        return results.run_key(dict(mode="fast", profile=args.profile, topology=self.topology, noise=self.noise,
                                    batch_size=self.batch_size, steps=args.steps, hidden=args.hidden, seed=seed))

    def missing(self, done: set, args: argparse.Namespace) -> Optional["Cell"]:
        """This cell with only the seeds that have no row in ``done`` (None when every seed has one)."""
        seeds = tuple(s for s in self.seeds if self.key(s, args) not in done)
        return replace(self, seeds=seeds) if seeds else None


def _unique(cells: list[Cell]) -> list[Cell]:
    seen, out = set(), []
    for cell in cells:
        key = (cell.topology, cell.noise, cell.batch_size, cell.seeds)
        if key not in seen:
            seen.add(key)
            out.append(cell)
    return out


def first_pass(args: argparse.Namespace) -> tuple[list[Cell], list[Cell]]:
    """Parts 1-3 and, second, part 5: the cells the grid runs with its first seeds (no power extension)."""
    seeds = tuple(range(args.seeds))
    cells = [Cell(t, n, args.batch_size, seeds, "main") for n in args.noise for t in args.topologies]
    cells += [Cell(spec.k_name(k), n, args.batch_size, seeds, "k") for n in args.k_noise for k in args.k_values]
    batch_topos = [t for t in spec.BATCH_TOPOLOGIES if t in args.topologies]
    cheap = [b for b in args.batch_sizes if b <= args.cheap_batch]
    cells += [Cell(t, 0.0, b, seeds, "batch") for b in cheap for t in batch_topos]
    tail = [Cell(t, 0.0, b, seeds, "batch") for b in args.batch_sizes if b > args.cheap_batch for t in batch_topos]
    return _unique(cells), _unique(tail)


def power_cells(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[Cell]:
    """The next seed chunk for each main-grid (topology, noise) whose paired half-width exceeds the target."""
    rows = [r for r in rows if (r.get("profile"), r["steps"], r.get("hidden"), r["batch_size"])
            == (args.profile, args.steps, args.hidden, args.batch_size)]
    cells = []
    for noise in args.noise:
        for topo in args.topologies:
            if topo == spec.BASELINE:
                continue
            mean, half, n = stats.t_interval([100 * d for d in stats.paired(rows, topo, spec.BASELINE, noise)])
            if n < args.seeds or (not math.isnan(half) and half <= args.target) or n >= args.max_seeds:
                continue
            seeds = tuple(range(n, min(n + args.seeds, args.max_seeds)))
            cells += [Cell(topo, noise, args.batch_size, seeds, "power"),
                      Cell(spec.BASELINE, noise, args.batch_size, seeds, "power")]
    return _unique(cells)


def run_cell(cell: Cell, args: argparse.Namespace, data_cache: dict) -> tuple[list[dict], list[dict]]:
    """Train a cell; return its results rows and trajectory rows."""
    from .fast import build_data, train

    topo = spec.topology(cell.topology)
    key = (cell.noise, cell.seeds)
    if key not in data_cache:
        data_cache.clear()  # one noise level's features at a time
        data_cache[key] = build_data(cell.noise, cell.seeds)
    rows, traj = train(topo, data_cache[key], cell.seeds, steps=args.steps, batch_size=cell.batch_size,
                       hidden=args.hidden, device=args.device)
    common = dict(mode="fast", profile=args.profile, topology=topo.name, geometry=topo.geometry,
                  k=topo.n_tokens, d=topo.token_dim, temperature=topo.temperature_label(), noise=cell.noise,
                  steps=args.steps, batch_size=cell.batch_size, hidden=args.hidden,
                  loss_floor=spec.loss_floor(cell.batch_size), device=args.device)
    out_rows, out_traj = [], []
    at_80 = 0.8 * args.steps
    for seed, row, points in zip(cell.seeds, rows, traj):
        before = min(points, key=lambda p: abs(p["step"] - at_80))
        out_rows.append({**common, **row, "seed": seed, "zero_shot_top1_at_80pct": before["zero_shot_top1"],
                         "scale_at_80pct": before["scale"]})
        out_traj += [{**common, "seed": seed, **p} for p in points]
    return out_rows, out_traj


@contextmanager
def holding(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s grid lock for the duration, or exit with a message when another process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"--output {folder}: another grid is running into this folder (it holds {LOCK}); "
                             "two at once would train the same runs twice") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _append(args: argparse.Namespace, rows: list[dict], traj: list[dict]) -> None:
    with results.writing(args.output):  # a run already in the file is refused there
        results.append_runs(args.output, rows, COLUMNS, traj, TRAJECTORY_COLUMNS)


def execute(args: argparse.Namespace) -> int:
    """Run every unfinished cell (first pass, power extension, large batches); return the cells run."""
    path = args.output / "results.csv"
    start, ran, cache = time.perf_counter(), 0, {}

    def done() -> set:
        return {results.run_key(r) for r in results.read_csv(path)}

    def run(cells: list[Cell]) -> bool:
        nonlocal ran
        todo = [c for c in (cell.missing(done(), args) for cell in cells) if c is not None]
        for i, planned in enumerate(todo, 1):
            # the first cell always runs, so that every launch makes progress however small the budget
            if args.time_budget is not None and ran and time.perf_counter() - start > args.time_budget:
                print(f"time budget of {args.time_budget:g} s spent; stopping (run again to resume)", flush=True)
                return False
            cell = planned.missing(done(), args)  # reread: never train a run that has a row
            if cell is None:
                continue
            t0 = time.perf_counter()
            rows, traj = run_cell(cell, args, cache)
            _append(args, rows, traj)
            ran += 1
            accs = ", ".join(f"{100 * r['zero_shot_top1']:.1f}" for r in rows)
            print(f"[{cell.part} {i}/{len(todo)}] {cell.topology} noise {cell.noise:g} batch {cell.batch_size} "
                  f"seeds {cell.seeds[0]}-{cell.seeds[-1]}: top-1 {accs} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
        return True

    with holding(args.output):
        cells, tail = first_pass(args)
        print(f"profile {args.profile}: {len(cells) + len(tail)} first-pass cells x {args.seeds} seeds, "
              f"{args.steps} steps, hidden {args.hidden}, device {args.device}", flush=True)
        if not run(cells):
            return ran
        while True:
            extra = [c for c in power_cells(results.read_csv(path), args) if c.missing(done(), args)]
            if not extra:
                break
            print(f"power: {len(extra)} cells need more seeds", flush=True)
            if not run(extra):
                return ran
        run(tail)
    print(f"{ran} cells in {(time.perf_counter() - start) / 60:.1f} min of wall time", flush=True)
    return ran

