"""The full mode: the project's towers trained by ``manifold-align train``, one subprocess per run.

Every run is ``python -m manifold_align_train train`` with the topology expressed as ``--set`` overrides of the
run configuration (:meth:`.spec.Topology.overrides`). Reported per run: zero-shot top-1 on the held-out data,
retrieval R@1, the final temperature scale and its trajectory, and the mean positive/negative similarity gap
(from ``metrics.jsonl``). An interrupted grid resumes where it stopped: runs with a ``summary.json`` are
skipped, runs with a checkpoint continue with ``--resume latest``, the others start again.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from .spec import K_SWEEP_BASE, Topology, k_sweep_topology, topology

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "topologies"
DEFAULT_RUNS = REPO / "runs" / "bench-topologies"

# Defaults of the full grid; the budget arithmetic behind DEFAULT_STEPS is in docs/benchmarks-topologies.md.
DEFAULT_DATASET = "digit-pairs"
DEFAULT_STEPS = 150
DEFAULT_BATCH = 128
DEFAULT_NOISE = (0.0, 0.2, 0.4, 0.6, 0.8)
DEFAULT_SEEDS = 3
DEFAULT_K_VALUES = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_K_NOISE = (0.4,)
#: every run appends one train row to metrics.jsonl per LOG_EVERY steps (the gap and scale trajectories)
LOG_EVERY = 5

QUICK = {"steps": 20, "noise": (0.0, 0.6), "seeds": 1, "k_values": (1, 16, 64)}


# --------------------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSpec:
    """One training run: a topology at one caption noise and seed."""

    topology: Topology
    noise: float
    seed: int

    @property
    def name(self) -> str:
        """Run folder name, e.g. ``oblique-none_noise0.40_seed2``."""
        return f"{self.topology.name}_noise{self.noise:.2f}_seed{self.seed}"


def plan_runs(topologies: Sequence[str], noise: Sequence[float], seeds: Sequence[int],
              k_values: Sequence[int], k_noise: Sequence[float], k_base: str = K_SWEEP_BASE) -> list[RunSpec]:
    """The main grid (topology x noise x seed) then the k sweep (k x k_noise x seed), without repeats."""
    specs = [RunSpec(topology(t), float(n), s) for t in topologies for n in noise for s in seeds]
    specs += [RunSpec(k_sweep_topology(k, k_base), float(n), s) for k in k_values for n in k_noise
              for s in seeds]
    seen, unique = set(), []
    for spec in specs:
        if spec.name not in seen:
            seen.add(spec.name)
            unique.append(spec)
    return unique


def base_overrides(args: argparse.Namespace) -> list[str]:
    """Benchmark settings applied before the user's ``--set`` (so the user can change them)."""
    items = []
    if args.config is None:  # a config file brings its own data, device and budget
        items += [f"data.dataset={DEFAULT_DATASET}", "train.device=cpu"]
    steps = args.steps if args.steps is not None else (None if args.config else DEFAULT_STEPS)
    if steps is not None:
        items += [f"train.steps={steps}", f"train.warmup={steps // 10}",
                  f"train.checkpoint_every={max(1, steps // 3)}"]
    batch = args.batch_size if args.batch_size is not None else (None if args.config else DEFAULT_BATCH)
    if batch is not None:
        items.append(f"data.batch_size={batch}")
    items += ["train.threads=1", "train.keep_checkpoints=1", f"log.every={LOG_EVERY}",
              "log.tensorboard=false", "log.progress=false"]
    return items


def run_overrides(spec: RunSpec, args: argparse.Namespace) -> list[str]:
    """All ``--set`` items of a run: benchmark defaults < user ``--set`` < topology, noise, seed."""
    return [*base_overrides(args), *args.overrides, *spec.topology.overrides(),
            f"data.caption_noise={spec.noise}", f"seed={spec.seed}", f"name={spec.name}"]


def _latest_checkpoint(run_dir: Path) -> Optional[Path]:
    from manifold_align_train.checkpoint import CHECKPOINT_DIR, find_latest_checkpoint

    return find_latest_checkpoint(run_dir / CHECKPOINT_DIR)


def run_state(run_dir: Path) -> str:
    """``"done"`` (summary.json exists), ``"resume"`` (a checkpoint exists) or ``"new"``."""
    if (run_dir / "summary.json").is_file():
        return "done"
    if _latest_checkpoint(run_dir) is not None:
        return "resume"
    return "new"


def train_command(spec: RunSpec, args: argparse.Namespace, run_dir: Path, state: str) -> list[str]:
    """The subprocess command line of one run."""
    cmd = [sys.executable, "-m", "manifold_align_train", "train", "--output", str(run_dir)]
    if args.config:
        cmd += ["--config", str(Path(args.config).resolve())]
    if state == "resume":
        cmd += ["--resume", "latest"]
    for item in run_overrides(spec, args):
        cmd += ["--set", item]
    return cmd


def _run_one(spec: RunSpec, args: argparse.Namespace, runs_dir: Path) -> tuple[RunSpec, int, float]:
    run_dir = runs_dir / spec.name
    state = run_state(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if state == "new":
        # a run killed before its first checkpoint starts over: drop its partial metrics
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    cmd = train_command(spec, args, run_dir, state)
    (run_dir / "command.txt").write_text(" ".join(cmd) + "\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    start = time.perf_counter()
    with (run_dir / "train.log").open("a") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO).returncode
    if rc == 0 and not args.keep_checkpoints:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return spec, rc, time.perf_counter() - start


def execute(specs: Sequence[RunSpec], args: argparse.Namespace, runs_dir: Path) -> list[str]:
    """Run the unfinished runs, ``args.jobs`` at a time; return the names of the failed ones."""
    todo = [s for s in specs if run_state(runs_dir / s.name) != "done"]
    print(f"{len(specs)} runs planned, {len(specs) - len(todo)} already done, {len(todo)} to run "
          f"({args.jobs} at a time)", flush=True)
    failed = []
    start = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=args.jobs)
    try:
        futures = [pool.submit(_run_one, s, args, runs_dir) for s in todo]
        for i, future in enumerate(as_completed(futures), 1):
            spec, rc, seconds = future.result()
            status = "ok" if rc == 0 else f"FAILED (exit {rc}; see {runs_dir / spec.name / 'train.log'})"
            print(f"[{i}/{len(todo)}] {spec.name}: {status}, {seconds:.0f} s", flush=True)
            if rc != 0:
                failed.append(spec.name)
    finally:
        # on Ctrl-C the running children get the signal too; queued runs must not start
        pool.shutdown(wait=True, cancel_futures=True)
    print(f"{len(todo)} runs in {(time.perf_counter() - start) / 60:.1f} min of wall time", flush=True)
    return failed


# --------------------------------------------------------------------------------------------------
# collecting results
# --------------------------------------------------------------------------------------------------
def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``metrics.jsonl``; a resumed run may repeat steps, the last row of a (kind, step) wins."""
    rows: dict[tuple[str, int], dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[(row.get("kind", "train"), int(row["step"]))] = row
    return [rows[key] for key in sorted(rows, key=lambda kv: (kv[1], kv[0]))]


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def collect_row(spec: RunSpec, run_dir: Path) -> Optional[dict[str, Any]]:
    """One results row from a finished run folder, or None if it has no summary.

    The final gap and similarities are means over the last quarter of the logged train rows (at least
    one row), each row being the batch of one logged step.
    """
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    cfg, final = summary["config"], summary["final_metrics"]
    train = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "train"]
    tail = train[-max(1, len(train) // 4):] if train else []

    def tail_mean(key: str) -> float:
        values = [_float(r.get(key)) for r in tail]
        return statistics.fmean(values) if values else float("nan")

    i2t, t2i = _float(final.get("image_to_text_R@1")), _float(final.get("text_to_image_R@1"))
    topo = spec.topology
    gap = tail_mean("gap")
    return {
        "topology": topo.name,
        "geometry": topo.geometry,
        "k": cfg["model"]["n_tokens"],
        "d": cfg["model"]["token_dim"],
        "class_tokens": cfg["model"].get("class_tokens"),
        "temperature": topo.temperature_label(),
        "noise": spec.noise,
        "seed": spec.seed,
        "dataset": cfg["data"]["dataset"],
        "model": cfg["model"]["name"],
        "steps": summary["final_step"],
        "batch_size": cfg["data"]["batch_size"],
        "zero_shot_top1": _float(final.get("zero_shot_top1")),
        "zero_shot_top5": _float(final.get("zero_shot_top5")),
        "image_to_text_R@1": i2t,
        "text_to_image_R@1": t2i,
        "retrieval_R@1": (i2t + t2i) / 2,
        "final_temperature": _float(summary.get("final_temperature")),
        "positive_similarity": tail_mean("positive_similarity"),
        "negative_similarity": tail_mean("negative_similarity"),
        "gap": gap,
        "gap_normalized": gap / topo.blocks,
        "final_loss": _float(summary.get("final_loss")),
        "wall_time_seconds": _float(summary.get("wall_time_seconds")),
        "run_dir": str(run_dir),
        # the geometry's learned values (its values(), e.g. a curvature), by name; none for most
        **{key: _float(value) for key, value in (summary.get("final_geometry") or {}).items()},
        "temperature_trajectory": [[r["step"], _float(r.get("temperature"))] for r in train],
        "gap_trajectory": [[r["step"], _float(r.get("gap")) / topo.blocks] for r in train],
    }


TRAJECTORY_KEYS = ("temperature_trajectory", "gap_trajectory")


def write_results(rows: list[dict[str, Any]], output: Path) -> None:
    """``results.json`` (all fields) and ``results.csv`` (without the trajectories)."""
    output.mkdir(parents=True, exist_ok=True)
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
    (output / "results.json").write_text(json.dumps(clean, indent=1) + "\n")
    columns = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in TRAJECTORY_KEYS]
    with (output / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
