"""The fast-mode grid of the topology benchmark: plan, resume, results.csv, the GPU profile.

``python benchmarks/topologies.py --mode fast [flags]`` (or ``python benchmarks/topology_grid.py [flags]``).
The engine is :mod:`topology_fast`; the tables and plots are :mod:`topology_report`.

What runs, in this order (each *cell* is one topology at one noise and batch size, several seeds at once):

1. the main grid: every fast topology x caption noise, batch ``--batch-size``, the first ``--seeds`` seeds;
2. the k sweep: ``oblique-none`` at ``k`` in ``--k-values`` (k * d = 512), noise ``--k-noise``;
3. the batch sweep: ``sphere-none``, ``oblique-none`` and ``sphere-learnable`` at noise 0 for each batch size
   up to ``--cheap-batch`` (their batch ``--batch-size`` runs are the main grid's);
4. power: while a (topology, noise) cell's paired difference from ``sphere-learnable`` has a 95% half-width
   above ``--target`` points, ``--seeds`` more seeds for it and the baseline, up to ``--max-seeds``;
5. the batch sweep's larger batch sizes.

Every finished cell appends its rows to ``results.csv`` (one row per seed) and ``trajectories.csv`` at once, so
an interrupted grid loses at most the cell in progress and resumes where it stopped: a cell whose rows are all
in ``results.csv`` (same profile, topology, noise, batch size, steps, hidden width and seed) is skipped.
``--time-budget`` stops starting new cells after that many seconds (the GPU profile's default keeps the whole
command under 10 minutes).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import topologies as bench  # benchmarks/ is on sys.path: scripts run from there

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "topologies-fast"

#: per-profile defaults; the GPU profile is the same grid at a wider tower and larger batch and seed chunks
PROFILES: dict[str, dict[str, Any]] = {
    "cpu": dict(device="cpu", hidden=128, steps=300, batch_size=128, seeds=5, max_seeds=80,
                batch_sizes=(32, 64, 128, 256, 512, 1024, 2048, 4096), cheap_batch=512, time_budget=None),
    "gpu": dict(device="cuda", hidden=1024, steps=300, batch_size=512, seeds=10, max_seeds=40,
                batch_sizes=(32, 64, 128, 256, 512, 1024, 2048, 4096), cheap_batch=4096, time_budget=540.0),
}
NOISE = (0.0, 0.2, 0.4, 0.6, 0.8)
K_VALUES = (1, 2, 4, 8, 16, 32, 64)
K_NOISE = (0.4,)
#: the paired differences' target: 95% half-width in points of zero-shot top-1
TARGET = 1.5
#: topologies of the batch sweep (claim 1)
BATCH_TOPOLOGIES = ("sphere-none", "oblique-none", "sphere-learnable")
#: in fast mode an MLP's k * d outputs are the same whether read as k tokens or as one token cut into blocks,
#: so the two controls are their counterparts exactly, and so is euclidean at k = 16 (a sum of squared block
#: distances is the squared distance of the whole vector); they are reported as such, not trained twice
ALIASES = {"joint-control": "sphere-learnable", "block-control": "oblique-none", "euclidean-k16": "euclidean-k1"}
BASELINE = bench.PAIRED_BASELINE

#: results.csv columns, in order; the key of a row is KEY
COLUMNS = ("mode", "profile", "topology", "similarity", "k", "d", "temperature", "noise", "seed", "steps",
           "batch_size", "hidden", "zero_shot_top1", "retrieval_R@1", "zero_shot_top1_at_80pct", "scale",
           "scale_at_80pct", "curvature", "image_scale", "text_scale", "final_loss", "loss_floor",
           "wall_time_seconds", "device")
KEY = ("profile", "topology", "noise", "batch_size", "steps", "hidden", "seed")
TRAJECTORY_COLUMNS = ("profile", "topology", "noise", "batch_size", "steps", "hidden", "seed", "step",
                      "zero_shot_top1", "loss", "scale", "curvature", "image_scale", "text_scale")


def loss_floor(n: int) -> float:
    """``log(1 + (N - 1) / e)``: InfoNCE at scale 1 with positives at similarity 1 and negatives at 0."""
    return math.log(1.0 + (n - 1) / math.e)


def fast_topologies() -> list[str]:
    """The topologies trained in fast mode: all of ``topologies.TOPOLOGIES`` but the aliased controls."""
    return [t for t in bench.TOPOLOGIES if t not in ALIASES]


def topology(name: str) -> "bench.Topology":
    """A topology by name: one of ``TOPOLOGIES`` or a k-sweep variant ``oblique-none-k<k>``."""
    if name in bench.TOPOLOGIES:
        return bench.TOPOLOGIES[name]
    prefix = f"{bench.K_SWEEP_BASE}-k"
    if name.startswith(prefix):
        return bench.k_sweep_topology(int(name[len(prefix):]))
    raise ValueError(f"unknown topology {name!r}; accepted: {', '.join(bench.TOPOLOGIES)} or {prefix}<k>")


def k_name(k: int) -> str:
    """The k-sweep topology name of ``k`` (``oblique-none`` itself at its own k)."""
    return bench.k_sweep_topology(k).name


@dataclass(frozen=True)
class Cell:
    """One vectorized run: a topology at one noise and batch size, several seeds."""

    topology: str
    noise: float
    batch_size: int
    seeds: tuple[int, ...]
    part: str  # "main", "k", "batch", "power"

    def keys(self, steps: int, hidden: int, profile: str) -> list[tuple]:
        """The results.csv keys of its rows."""
        return [_key(dict(profile=profile, topology=self.topology, noise=self.noise, batch_size=self.batch_size,
                          steps=steps, hidden=hidden, seed=s)) for s in self.seeds]


def _key(row: dict) -> tuple:
    return (str(row["profile"]), str(row["topology"]), round(float(row["noise"]), 6), int(row["batch_size"]),
            int(row["steps"]), int(row["hidden"]), int(row["seed"]))


# --------------------------------------------------------------------------------------------------
# results files
# --------------------------------------------------------------------------------------------------
def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a results.csv, numbers as numbers (empty cells as NaN)."""
    if not path.is_file():
        return []
    text_columns = {"mode", "profile", "topology", "similarity", "temperature", "device"}
    int_columns = {"k", "d", "seed", "steps", "batch_size", "hidden", "step"}
    rows = []
    with path.open(newline="") as handle:
        for raw in csv.DictReader(handle):
            row = {}
            for key, value in raw.items():
                if key in text_columns:
                    row[key] = value
                elif key in int_columns:
                    row[key] = int(value)
                else:
                    row[key] = float(value) if value not in ("", None) else math.nan
            rows.append(row)
    return rows


def append_rows(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Append rows (header first if the file is new), flushed to disk before returning."""
    new = not path.is_file()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows({c: ("" if isinstance(r.get(c), float) and math.isnan(r[c]) else r.get(c, ""))
                          for c in columns} for r in rows)
        handle.flush()
        os.fsync(handle.fileno())


# --------------------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------------------
def first_pass(args: argparse.Namespace) -> tuple[list[Cell], list[Cell]]:
    """Parts 1-3 and, second, part 5: the cells the grid runs with its first seeds (no power extension)."""
    seeds = tuple(range(args.seeds))
    cells = [Cell(t, n, args.batch_size, seeds, "main") for n in args.noise for t in args.topologies]
    cells += [Cell(k_name(k), n, args.batch_size, seeds, "k") for n in args.k_noise for k in args.k_values]
    batch_topos = [t for t in BATCH_TOPOLOGIES if t in args.topologies]
    cheap = [b for b in args.batch_sizes if b <= args.cheap_batch]
    cells += [Cell(t, 0.0, b, seeds, "batch") for b in cheap for t in batch_topos]
    tail = [Cell(t, 0.0, b, seeds, "batch") for b in args.batch_sizes if b > args.cheap_batch for t in batch_topos]
    return _unique(cells), _unique(tail)


def _unique(cells: list[Cell]) -> list[Cell]:
    seen, out = set(), []
    for cell in cells:
        key = (cell.topology, cell.noise, cell.batch_size, cell.seeds)
        if key not in seen:
            seen.add(key)
            out.append(cell)
    return out


def power_cells(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[Cell]:
    """The next seed chunk for each main-grid (topology, noise) whose paired half-width exceeds the target."""
    from topology_report import paired

    rows = [r for r in rows if r["batch_size"] == args.batch_size]
    cells = []
    for noise in args.noise:
        for topo in args.topologies:
            if topo == BASELINE:
                continue
            diffs = paired(rows, topo, BASELINE, noise)
            mean, half, n = bench.t_interval([100 * d for d in diffs])
            if n < args.seeds or (not math.isnan(half) and half <= args.target) or n >= args.max_seeds:
                continue
            seeds = tuple(range(n, min(n + args.seeds, args.max_seeds)))
            cells += [Cell(topo, noise, args.batch_size, seeds, "power"),
                      Cell(BASELINE, noise, args.batch_size, seeds, "power")]
    return _unique(cells)


# --------------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------------
def run_cell(cell: Cell, args: argparse.Namespace, data_cache: dict) -> tuple[list[dict], list[dict]]:
    """Train a cell; return its results rows and trajectory rows."""
    from topology_fast import build_data, train

    topo = topology(cell.topology)
    key = (cell.noise, cell.seeds)
    if key not in data_cache:
        data_cache.clear()  # one noise level's features at a time
        data_cache[key] = build_data(cell.noise, cell.seeds)
    rows, traj = train(topo.similarity, topo.n_tokens, topo.token_dim, topo.temperature, data_cache[key],
                       cell.seeds, steps=args.steps, batch_size=cell.batch_size, hidden=args.hidden,
                       device=args.device)
    common = dict(mode="fast", profile=args.profile, topology=topo.name, similarity=topo.similarity,
                  k=topo.n_tokens, d=topo.token_dim, temperature=topo.temperature_label(), noise=cell.noise,
                  steps=args.steps, batch_size=cell.batch_size, hidden=args.hidden,
                  loss_floor=loss_floor(cell.batch_size), device=args.device)
    out_rows, out_traj = [], []
    at_80 = 0.8 * args.steps
    for seed, row, points in zip(cell.seeds, rows, traj):
        before = min(points, key=lambda p: abs(p["step"] - at_80))
        out_rows.append({**common, **row, "seed": seed, "zero_shot_top1_at_80pct": before["zero_shot_top1"],
                         "scale_at_80pct": before["scale"]})
        out_traj += [{**common, "seed": seed, **p} for p in points]
    return out_rows, out_traj


def execute(args: argparse.Namespace) -> int:
    """Run every unfinished cell (first pass, power extension, large batches); return cells run."""
    results, trajectories = args.output / "results.csv", args.output / "trajectories.csv"
    args.output.mkdir(parents=True, exist_ok=True)
    start, ran, cache = time.perf_counter(), 0, {}

    def done() -> set:
        return {_key(r) for r in read_rows(results)}

    def run(cells: list[Cell]) -> bool:
        nonlocal ran
        finished = done()
        todo = [c for c in cells if not set(c.keys(args.steps, args.hidden, args.profile)) <= finished]
        for i, cell in enumerate(todo, 1):
            if args.time_budget is not None and time.perf_counter() - start > args.time_budget:
                print(f"time budget of {args.time_budget:g} s spent; stopping (run again to resume)", flush=True)
                return False
            t0 = time.perf_counter()
            rows, traj = run_cell(cell, args, cache)
            append_rows(trajectories, traj, TRAJECTORY_COLUMNS)
            append_rows(results, rows, COLUMNS)  # last: a cell counts as done once its rows are here
            ran += 1
            accs = ", ".join(f"{100 * r['zero_shot_top1']:.1f}" for r in rows)
            print(f"[{cell.part} {i}/{len(todo)}] {cell.topology} noise {cell.noise:g} batch {cell.batch_size} "
                  f"seeds {cell.seeds[0]}-{cell.seeds[-1]}: top-1 {accs} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
        return True

    cells, tail = first_pass(args)
    print(f"profile {args.profile}: {len(cells) + len(tail)} first-pass cells x {args.seeds} seeds, "
          f"{args.steps} steps, hidden {args.hidden}, device {args.device}", flush=True)
    if not run(cells):
        return ran
    while True:
        extra = power_cells(read_rows(results), args)
        if not extra:
            break
        print(f"power: {len(extra)} cells need more seeds", flush=True)
        if not run(extra):
            return ran
    run(tail)
    print(f"{ran} cells in {(time.perf_counter() - start) / 60:.1f} min of wall time", flush=True)
    return ran


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the fast mode."""
    p = argparse.ArgumentParser(prog="benchmarks/topologies.py --mode fast",
                                description="Fast mode: fixed inputs, 2-layer MLP towers, the library's "
                                            "similarities, temperatures, geometries, loss and optimizer.")
    p.add_argument("--profile", choices=tuple(PROFILES), default="cpu",
                   help="cpu (default) or gpu: the same grid at hidden 1024, batch 512, device cuda, "
                        "10-seed chunks, a 540 s budget")
    p.add_argument("--output", type=Path, help=f"results folder (default {DEFAULT_OUTPUT.relative_to(REPO)}, "
                   "with -gpu appended for the gpu profile)")
    p.add_argument("--device", help="torch device (default: the profile's)")
    p.add_argument("--steps", type=int, help="optimizer steps per run (cpu 300, gpu 300)")
    p.add_argument("--hidden", type=int, help="towers' hidden width (cpu 128, gpu 1024)")
    p.add_argument("--batch-size", type=int, help="batch of the main grid and k sweep (cpu 128, gpu 512)")
    p.add_argument("--seeds", type=int, help="seeds per chunk (cpu 5, gpu 10)")
    p.add_argument("--max-seeds", type=int, help="seeds the power extension may reach (cpu 80, gpu 40)")
    p.add_argument("--target", type=float, default=TARGET, help="paired half-width target, points (1.5)")
    p.add_argument("--topologies", type=lambda s: tuple(x for x in s.split(",") if x),
                   help=f"comma list (default {','.join(fast_topologies())})")
    p.add_argument("--noise", type=bench.comma_floats, default=NOISE, help="caption noise levels (0,0.2,0.4,0.6,0.8)")
    p.add_argument("--k-values", type=bench.comma_ints, default=K_VALUES, help="k sweep (1,2,4,8,16,32,64; '' none)")
    p.add_argument("--k-noise", type=bench.comma_floats, default=K_NOISE, help="noise of the k sweep (0.4)")
    p.add_argument("--batch-sizes", type=bench.comma_ints, help="batch sweep (32,...,4096; '' none)")
    p.add_argument("--cheap-batch", type=int, help="batch sizes above this run last (cpu 512, gpu 4096)")
    p.add_argument("--time-budget", type=float, help="seconds after which no new cell starts (gpu 540)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1)")
    p.add_argument("--dry-run", action="store_true", help="print the first-pass plan, train nothing")
    p.add_argument("--report-only", action="store_true", help="tables and plots from results.csv only")
    p.add_argument("--docs-img", type=Path, help="also copy the plots here (docs/img/topologies-fast for the cpu "
                   "profile's default output; none otherwise)")
    return p


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the profile's defaults for unset flags; validate."""
    profile = PROFILES[args.profile]
    for key in ("device", "hidden", "steps", "batch_size", "seeds", "max_seeds", "batch_sizes", "cheap_batch",
                "time_budget"):
        if getattr(args, key) is None:
            setattr(args, key, profile[key])
    default_output = args.output is None
    if default_output:
        args.output = DEFAULT_OUTPUT.with_name(DEFAULT_OUTPUT.name + ("" if args.profile == "cpu" else "-gpu"))
    args.output = args.output.resolve()
    if args.docs_img is None and default_output and args.profile == "cpu":
        args.docs_img = REPO / "docs" / "img" / "topologies-fast"
    if args.topologies is None:
        args.topologies = tuple(fast_topologies())
    unknown = [t for t in args.topologies if t not in bench.TOPOLOGIES]
    if unknown:
        raise SystemExit(f"unknown topology {unknown}; accepted: {', '.join(bench.TOPOLOGIES)}")
    args.topologies = tuple(dict.fromkeys(ALIASES.get(t, t) for t in args.topologies))
    if any(not 0 <= n <= 1 for n in (*args.noise, *args.k_noise)):
        raise SystemExit("caption noise must be in [0, 1]")
    if any(k < 1 or bench.WIDTH % k for k in args.k_values):
        raise SystemExit(f"k must divide {bench.WIDTH}")
    if args.seeds < 1 or args.steps < 2 or args.max_seeds < args.seeds:
        raise SystemExit("--seeds >= 1, --steps >= 2 and --max-seeds >= --seeds")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status."""
    import shlex

    import torch

    from topology_report import write_report

    argv = list(sys.argv[1:] if argv is None else argv)
    args = resolve_args(build_parser().parse_args(argv))
    torch.set_num_threads(args.threads)
    if args.dry_run:
        cells, tail = first_pass(args)
        for cell in cells + tail:
            print(f"{cell.part}: {cell.topology} noise {cell.noise:g} batch {cell.batch_size} seeds "
                  f"{cell.seeds[0]}-{cell.seeds[-1]}")
        print(f"# {len(cells) + len(tail)} cells, then seed chunks until the paired half-width is <= "
              f"{args.target:g} points (at most {args.max_seeds} seeds)")
        return 0
    if not args.report_only:
        execute(args)
    command = shlex.join(["python", "benchmarks/topologies.py", "--mode", "fast", *argv])
    written = write_report(args.output, profile=args.profile, command=command, images_to=args.docs_img)
    print(f"report -> {', '.join(p.name for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
