"""The fast mode's grid: plan, resume, power extension; the engine is :mod:`.fast`.

Two sweeps (:data:`.spec.SWEEPS`), each into its own results folder. ``--sweep main`` runs, in this order (each
*cell* is one topology at one noise and batch size, several seeds at once):

1. the main grid: every fast topology x caption noise, batch ``--batch-size``, the first ``--seeds`` seeds;
2. the k sweep: ``oblique-none`` at ``k`` in ``--k-values`` (k * d = 512), noise ``--k-noise``;
3. power: while a (topology, noise) cell's paired difference from ``sphere-learnable`` has a 95% half-width
   above ``--target`` points, ``--seeds`` more seeds for it and the baseline, up to ``--max-seeds``.

``--sweep batch`` runs the batch sweep: ``sphere-none``, ``oblique-none`` and ``sphere-learnable`` at noise 0 for
each of ``--batch-sizes``, in increasing N, on 800 training pairs per class with same-class pairs left out of
the negatives (every row says so: ``negatives``, ``train_pairs``).

Every finished cell appends its rows to ``results.csv`` (one row per seed) and ``trajectories.csv`` at once, so
an interrupted grid loses at most the cell in progress and resumes where it stopped. A run is never planned
twice: before each cell the grid rereads ``results.csv`` and trains only the seeds that have no row there (same
profile, topology, noise, batch size, steps, hidden width, negatives, training pairs and seed), one grid at a time holds the folder (a
lock file), and a row whose run is already in the file is refused. ``--time-budget`` stops starting new
cells after that many seconds, the first excepted (the GPU profile's default keeps the whole command under 10
minutes).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Optional

from . import results, spec, stats

#: results.csv columns, in order, before the geometries' learned values (which follow, by name)
COLUMNS = ("mode", "profile", "topology", "geometry", "k", "d", "temperature", "noise", "seed", "steps",
           "batch_size", "hidden", "negatives", "train_pairs", "zero_shot_top1", "retrieval_R@1", "zero_shot_top1_at_80pct", "scale",
           "scale_at_80pct", "final_loss", "loss_floor", "wall_time_seconds", "device")
TRAJECTORY_COLUMNS = ("profile", "topology", "noise", "batch_size", "steps", "hidden", "negatives", "train_pairs",
                      "seed", "step",
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
                                    batch_size=self.batch_size, steps=args.steps, hidden=args.hidden,
                                    negatives=args.negatives, train_pairs=args.train_pairs, seed=seed))

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


def first_pass(args: argparse.Namespace) -> list[Cell]:
    """The cells the sweep runs with its first seeds: parts 1-2 of ``main`` (no power extension), or the batch
    sweep."""
    seeds = tuple(range(args.seeds))
    if args.sweep == "batch":
        topos = [t for t in spec.BATCH_TOPOLOGIES if t in args.topologies]
        return _unique([Cell(t, 0.0, b, seeds, "batch") for b in sorted(args.batch_sizes) for t in topos])
    cells = [Cell(t, n, args.batch_size, seeds, "main") for n in args.noise for t in args.topologies]
    cells += [Cell(spec.k_name(k), n, args.batch_size, seeds, "k") for n in args.k_noise for k in args.k_values]
    return _unique(cells)


def cost_plan(args: argparse.Namespace, cells: list[Cell], path: Path) -> list[str]:
    """Lines that say how long ``cells`` take, from the seconds per step measured by
    ``benchmarks/batch_sweep_cost.py`` (its JSON at ``path``), or why that cannot be said.

    A cell's seconds: ``--steps`` times the measured seconds per step of its topology at ``--seeds`` seeds,
    log-log interpolated between the measured N (proportional to N below the smallest, to N^2 above the largest);
    ``sphere-none`` takes ``sphere-learnable``'s (the same scores; only the temperature differs). Two cores:
    half the one-thread total, the ideal (one cell at a time with ``--threads 2``; the matmuls scale nearly so).
    """
    if not path.is_file():
        return [f"# no step costs measured at {path}: run `python benchmarks/batch_sweep_cost.py` for the time plan"]
    measured = json.loads(path.read_text())
    points: dict[str, dict[int, float]] = {}
    for p in measured["points"]:
        if p["seeds"] == args.seeds:
            points.setdefault(p["topology"], {})[p["batch_size"]] = p["seconds_per_step"]
    lines, total = [], 0.0
    for cell in cells:
        name = "sphere-learnable" if cell.topology == "sphere-none" else cell.topology
        if name not in points:
            return [f"# {path} has no {args.seeds}-seed measurement of {name}: no time plan"]
        seconds = args.steps * _interpolate(points[name], cell.batch_size)
        total += seconds
        lines.append(f"#   {cell.topology} batch {cell.batch_size}: {seconds / 3600:.2f} h on one thread")
    loads = sorted({round(p["load_start"], 1) for p in measured["points"]})
    return [f"# time plan from {path.name} ({measured['machine']}; load average {loads[0]:g} to {loads[-1]:g} "
            f"while measuring), {args.steps} steps, {args.seeds} seeds per cell:", *lines,
            f"# total {total / 3600:.1f} h on one thread; on 2 cores at best {total / 7200:.1f} h (--threads 2)"]


def _interpolate(points: dict[int, float], n: int) -> float:
    sizes = sorted(points)
    if n <= sizes[0]:
        return points[sizes[0]] * n / sizes[0]
    if n >= sizes[-1]:
        return points[sizes[-1]] * (n / sizes[-1]) ** 2
    hi = next(i for i, m in enumerate(sizes) if m >= n)
    a, b = sizes[hi - 1], sizes[hi]
    t = math.log(n / a) / math.log(b / a)
    return math.exp((1 - t) * math.log(points[a]) + t * math.log(points[b]))


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
        data_cache[key] = build_data(cell.noise, cell.seeds, train_per_class=args.train_per_class)
    rows, traj = train(topo, data_cache[key], cell.seeds, steps=args.steps, batch_size=cell.batch_size,
                       hidden=args.hidden, device=args.device, negatives=args.negatives,
                       tile_size=spec.tile_size(args.profile, cell.batch_size))
    common = dict(mode="fast", profile=args.profile, topology=topo.name, geometry=topo.geometry,
                  k=topo.n_tokens, d=topo.token_dim, temperature=topo.temperature_label(), noise=cell.noise,
                  steps=args.steps, batch_size=cell.batch_size, hidden=args.hidden, negatives=args.negatives,
                  train_pairs=args.train_pairs,
                  loss_floor=spec.row_floor(cell.batch_size, args.negatives, args.train_pairs), device=args.device)
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
    """Run every unfinished cell (first pass, then the main sweep's power extension); return the cells run."""
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
        cells = first_pass(args)
        print(f"profile {args.profile}, {args.sweep} sweep: {len(cells)} first-pass cells x {args.seeds} seeds, "
              f"{args.steps} steps, hidden {args.hidden}, {args.train_pairs} training pairs, negatives "
              f"{args.negatives}, device {args.device}", flush=True)
        if not run(cells):
            return ran
        while args.sweep == "main":
            extra = [c for c in power_cells(results.read_csv(path), args) if c.missing(done(), args)]
            if not extra:
                break
            print(f"power: {len(extra)} cells need more seeds", flush=True)
            if not run(extra):
                return ran
    print(f"{ran} cells in {(time.perf_counter() - start) / 60:.1f} min of wall time", flush=True)
    return ran

