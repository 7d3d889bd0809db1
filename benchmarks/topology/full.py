"""The full mode: the project's towers trained by ``manifold-align train``, one subprocess per run.

Every run is ``<launcher> train`` (``python -m manifold_align_train train``, or a ``torchrun`` job) with the
topology expressed as ``--set`` overrides of the run configuration (:meth:`.spec.Topology.overrides`).
Reported per run: zero-shot top-1 on the held-out data, retrieval R@1, the final temperature scale and its
trajectory, and the mean positive/negative similarity gap (from ``metrics.jsonl``).

Each finished run appends its row to ``results.csv`` and its trajectory to ``trajectories.csv`` at once,
under the folder's write lock, so any number of processes (``--shard i/n`` of a SLURM array, machines
sharing the folders) write into one results folder and an interruption loses only the runs in progress.
A run is claimed before it starts (:func:`claim`: a lock file in its run folder, held while it trains), so
two processes never train one run; one claimed elsewhere is left to its owner. A run folder with a
``summary.json`` and no row is adopted (its row collected, nothing trained); one with a checkpoint continues
with ``--resume latest``; any other starts again. After the first pass, cells whose paired difference is
wider than ``--target`` get more seeds (:func:`power_runs`), up to ``--max-seeds``.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from . import results, stats
from .spec import BASELINE, K_SWEEP_BASE, Topology, k_name, k_sweep_topology, topology

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
#: what trains one run: ``<launcher> train --output ... --set ...``
DEFAULT_LAUNCHER = (sys.executable, "-m", "manifold_align_train")
#: a run's claim, in its run folder (:func:`claim`), and the mark of its last attempt's failure
CLAIM, FAILED = ".claim", ".failed"
#: seconds between two looks at the shared results while other processes finish runs the plan needs
WAIT_SECONDS = 5.0

QUICK = {"steps": 20, "noise": (0.0, 0.6), "seeds": 1, "k_values": (1, 16, 64)}

#: results.csv columns, in order, before the geometries' learned values (which follow, by name)
COLUMNS = ("mode", "topology", "geometry", "k", "d", "class_tokens", "temperature", "noise", "seed", "dataset",
           "data", "model", "steps", "batch_size", "zero_shot_top1", "zero_shot_top5", "zero_shot_set",
           "image_to_text_R@1", "text_to_image_R@1", "retrieval_R@1", "retrieval_set", "final_temperature",
           "positive_similarity", "negative_similarity", "gap", "gap_normalized", "final_loss", "hardware",
           "wall_time_seconds", "run_dir")
TRAJECTORY_COLUMNS = ("mode", "dataset", "model", "topology", "noise", "batch_size", "steps", "seed", "step",
                      "scale", "gap_normalized")


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


def _unique(specs: Sequence[RunSpec]) -> list[RunSpec]:
    seen, unique = set(), []
    for spec in specs:
        if spec.name not in seen:
            seen.add(spec.name)
            unique.append(spec)
    return unique


def plan_runs(topologies: Sequence[str], noise: Sequence[float], seeds: Sequence[int],
              k_values: Sequence[int], k_noise: Sequence[float], k_base: str = K_SWEEP_BASE) -> list[RunSpec]:
    """The main grid (topology x noise x seed) then the k sweep (k x k_noise x seed), without repeats."""
    specs = [RunSpec(topology(t), float(n), s) for t in topologies for n in noise for s in seeds]
    specs += [RunSpec(k_sweep_topology(k, k_base), float(n), s) for k in k_values for n in k_noise
              for s in seeds]
    return _unique(specs)


def first_pass(args: argparse.Namespace) -> list[RunSpec]:
    """The runs of the first ``--seeds`` seeds (:func:`plan_runs` of the flags)."""
    return plan_runs(args.topologies, args.noise, range(args.seeds), args.k_values, args.k_noise)


def power_runs(rows: Sequence[dict[str, Any]], args: argparse.Namespace) -> list[RunSpec]:
    """The next ``--seeds`` seeds of each cell whose paired difference is wider than ``args.target``.

    A cell is a main-grid topology at one noise, paired by seed with :data:`.spec.BASELINE` at that noise, or
    a k-sweep variant at one ``--k-noise``, paired with :data:`.spec.K_SWEEP_BASE`. With ``n`` pairs in
    ``rows`` (at least ``args.seeds``: a cell whose first pass is unfinished is left alone), a half-width
    above ``args.target`` points and ``n < args.max_seeds``, it gets seeds ``n, n + 1, ...`` (at most
    ``args.seeds`` of them, below ``args.max_seeds``) for both sides. ``rows`` are those of this setting.
    """
    cells = [(t, n, BASELINE) for n in args.noise for t in args.topologies
             if BASELINE in args.topologies and topology(t).name != BASELINE]
    cells += [(k_name(k), n, K_SWEEP_BASE) for n in args.k_noise for k in args.k_values
              if k_name(k) != K_SWEEP_BASE]
    out = []
    for name, noise, reference in cells:
        name = topology(name).name
        _, half, n = stats.t_interval([100 * d for d in stats.paired(rows, name, reference, noise)])
        if n < args.seeds or n >= args.max_seeds or (not math.isnan(half) and half <= args.target):
            continue
        seeds = range(n, min(n + args.seeds, args.max_seeds))
        out += [RunSpec(topology(t), float(noise), s) for t in (name, reference) for s in seeds]
    return _unique(out)


# --------------------------------------------------------------------------------------------------
# shards
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    """Part ``index`` of ``count`` (0-based, as ``$SLURM_ARRAY_TASK_ID`` of ``--array=0-<count-1>``)."""

    index: int = 0
    count: int = 1

    def owns(self, run: RunSpec) -> bool:
        """Whether ``run`` is in this part (:func:`shard_of`)."""
        return shard_of(run, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"i/n"`` -> :class:`Shard` ``(i, n)``, 0 <= i < n.

    Raises
    ------
    ValueError
        Saying what was expected and what arrived.
    """
    parts = text.split("/")
    try:
        index, count = (int(p) for p in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        index = count = None
    if index is None or count < 1 or not 0 <= index < count:
        raise ValueError(f"expected I/N with 0 <= I < N (0-based: shard 0/8 is $SLURM_ARRAY_TASK_ID 0 of "
                         f"--array=0-7), got {text!r}")
    return Shard(index, count)


def shard_of(run: RunSpec, count: int) -> int:
    """The part of ``count`` that trains ``run``: a cell's seeds go round the parts from a point set by a
    stable hash of the cell (topology and noise), so each part gets its share of every cell and of every
    later seed chunk, whatever the rest of the plan is."""
    digest = hashlib.sha256(f"{run.topology.name}_noise{run.noise:.2f}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") + run.seed) % count


def _shard_lock(output: Path, index: int, count: int) -> Path:
    return output / f".shard-{index}-of-{count}.lock"


@contextmanager
def running_as(output: Path, shard: Shard) -> Iterator[None]:
    """Mark ``shard`` as running in ``output`` for the duration (a shared lock others can test:
    :func:`shard_running`); several processes of one part may hold it."""
    output.mkdir(parents=True, exist_ok=True)
    with open(_shard_lock(output, shard.index, shard.count), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _held(path: Path) -> bool:
    """Whether a process holds a lock on the file ``path`` (one that does not exist is not held)."""
    try:
        handle = open(path, "r")
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def shard_running(output: Path, index: int, count: int) -> bool:
    """Whether a process of part ``index`` of ``count`` is running into ``output``."""
    return _held(_shard_lock(output, index, count))


# --------------------------------------------------------------------------------------------------
# one run
# --------------------------------------------------------------------------------------------------
@contextmanager
def claim(run_dir: Path) -> Iterator[bool]:
    """Try to claim the run of ``run_dir`` for the duration: yields True when this process holds it, False
    when another process (or thread) does.

    The claim is an exclusive lock on ``run_dir/.claim`` (which names its holder, ``host pid``); the system
    releases it when the holder ends, however it ends, so a killed run is free to resume at once.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / CLAIM, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{socket.gethostname()} {os.getpid()}\n")
            handle.flush()
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def claimed(run_dir: Path) -> bool:
    """Whether a process holds the claim of the run of ``run_dir``."""
    return _held(run_dir / CLAIM)


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


def run_config(args: argparse.Namespace):
    """The configuration every run shares (``--config``, the benchmark's defaults, ``--set``), as the trainer
    loads it: a ``manifold_align_train.config.RunConfig``.

    Raises
    ------
    SystemExit
        With the trainer's message for a configuration it would refuse.
    """
    from manifold_align_train.config import load_config
    from manifold_align_train.typed_config import ConfigError

    try:
        return load_config(args.config, [*base_overrides(args), *args.overrides])
    except (ConfigError, OSError, ValueError) as exc:
        raise SystemExit(f"--config/--set: {exc}") from None


@dataclass(frozen=True)
class Setting:
    """What every run of one invocation shares and its row records: the data, the towers, the budget."""

    dataset: str
    data: str  # the training data's path for csv/webdataset, "" for an embedded dataset
    model: str
    batch_size: int
    steps: int

    @classmethod
    def of(cls, cfg) -> "Setting":
        """The setting of a ``RunConfig``."""
        return cls(cfg.data.dataset, data_path(cfg.data.dataset, cfg.data.train_data), cfg.model.name,
                   cfg.data.batch_size, cfg.train.steps)

    def key(self, run: RunSpec) -> tuple:
        """The run key (:func:`.results.run_key`) of ``run``'s row."""
        return results.run_key(dict(mode="full", dataset=self.dataset, model=self.model, topology=run.topology.name,
                                    noise=run.noise, batch_size=self.batch_size, steps=self.steps, seed=run.seed))

    def rows(self, output: Path) -> list[dict[str, Any]]:
        """The rows of ``output/results.csv`` made in this setting (of any topology, noise and seed)."""
        return [r for r in results.read_csv(output / results.RESULTS)
                if (r["mode"], r.get("dataset"), r.get("model"), r.get("batch_size"), r.get("steps"))
                == ("full", self.dataset, self.model, self.batch_size, self.steps)]


def data_path(dataset: str, train_data: Optional[str]) -> str:
    """What a row says of its training data beyond the dataset's name: the path of csv/webdataset data."""
    from manifold_align_train.data import EMBEDDED_DATASETS

    return "" if dataset in EMBEDDED_DATASETS else str(train_data or "")


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
    """The subprocess command line of one run: ``args.launcher`` (default :data:`DEFAULT_LAUNCHER`), then
    ``train`` and its arguments."""
    cmd = [*(getattr(args, "launcher", None) or DEFAULT_LAUNCHER), "train", "--output", str(run_dir)]
    if args.config:
        cmd += ["--config", str(Path(args.config).resolve())]
    if state == "resume":
        cmd += ["--resume", "latest"]
    for item in run_overrides(spec, args):
        cmd += ["--set", item]
    return cmd


def _append(output: Path, rows: Sequence[dict[str, Any]]) -> None:
    # the trajectories go to trajectories.csv, one row per logged step; the rest is the run's row
    rows = [{"mode": "full", **r} for r in rows]
    points = [p for r in rows for p in results.trajectory_points(r)]
    flat = [{k: v for k, v in r.items() if k not in results.FULL_TRAJECTORIES} for r in rows]
    results.append_runs(output, flat, COLUMNS, points, TRAJECTORY_COLUMNS)


def record(output: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Append finished runs' rows (from :func:`collect_row`) and their trajectories to ``output``'s
    ``results.csv`` and ``trajectories.csv``, under its write lock; a run already there is refused."""
    with results.writing(output):
        _append(output, rows)


def _train(spec: RunSpec, args: argparse.Namespace, run_dir: Path) -> int:
    state = run_state(run_dir)
    if state == "new":
        # a run killed before its first checkpoint starts over: drop its partial metrics
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    cmd = train_command(spec, args, run_dir, state)
    (run_dir / "command.txt").write_text(" ".join(cmd) + "\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with (run_dir / "train.log").open("a") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO).returncode
    if rc == 0 and not args.keep_checkpoints:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return rc


def run_one(spec: RunSpec, args: argparse.Namespace, runs_dir: Path, output: Path, setting: Setting
            ) -> tuple[RunSpec, str, float]:
    """Claim, train (or adopt) and record one run; returns ``(spec, outcome, seconds)``.

    ``outcome``: ``trained``, ``adopted`` (a finished folder without a row: its row collected),
    ``recorded`` (its row was there already), ``claimed elsewhere`` (left to the process that holds it)
    or ``FAILED ...`` (a failed run, or a finished folder made in another setting).
    """
    run_dir = runs_dir / spec.name
    start = time.perf_counter()
    with claim(run_dir) as mine:
        if not mine:
            return spec, "claimed elsewhere", 0.0
        (run_dir / FAILED).unlink(missing_ok=True)
        adopted = run_state(run_dir) == "done"
        if not adopted:
            rc = _train(spec, args, run_dir)
            if rc != 0:
                return spec, f"FAILED (exit {rc}; see {run_dir / 'train.log'})", time.perf_counter() - start
        row = collect_row(spec, run_dir)
        if row is None:
            return spec, f"FAILED (no summary.json; see {run_dir / 'train.log'})", time.perf_counter() - start
        if results.run_key(row) != setting.key(spec):
            return spec, (f"FAILED ({run_dir} holds a finished run of another setting: {results.summarize([results.run_key(row)])}; "
                          f"expected {results.summarize([setting.key(spec)])}; use another --runs-dir)"), 0.0
        with results.writing(output):
            # another process may have adopted it between our look and our claim
            if adopted and setting.key(spec) in results.keys(output):
                return spec, "recorded", 0.0
            _append(output, [row])
    return spec, "adopted" if adopted else "trained", time.perf_counter() - start


# --------------------------------------------------------------------------------------------------
# the grid
# --------------------------------------------------------------------------------------------------
def plan(args: argparse.Namespace, rows: Sequence[dict[str, Any]]) -> list[RunSpec]:
    """The first pass and the power extension that ``rows`` (this setting's) call for."""
    return _unique([*first_pass(args), *power_runs(rows, args)])


def _run_batch(todo: Sequence[RunSpec], args: argparse.Namespace, runs_dir: Path, output: Path,
               setting: Setting) -> dict[str, str]:
    """Run ``todo``, ``args.jobs`` at a time; return the failed runs' names and messages."""
    failed = {}
    pool = ThreadPoolExecutor(max_workers=args.jobs)
    try:
        futures = [pool.submit(run_one, s, args, runs_dir, output, setting) for s in todo]
        for i, future in enumerate(as_completed(futures), 1):
            spec, outcome, seconds = future.result()
            print(f"[{i}/{len(todo)}] {spec.name}: {outcome}" + (f", {seconds:.0f} s" if seconds else ""), flush=True)
            if outcome.startswith("FAILED"):
                failed[spec.name] = outcome
                # for the other processes: nobody is training it (the next attempt removes the mark)
                (runs_dir / spec.name / FAILED).write_text(outcome + "\n")
    finally:
        # on Ctrl-C the running children get the signal too; queued runs must not start
        pool.shutdown(wait=True, cancel_futures=True)
    return failed


def execute(args: argparse.Namespace, runs_dir: Path, output: Path, setting: Setting) -> list[str]:
    """Run this process's part (``args.shard``) of the plan until it is complete; return the failed runs.

    Each round rereads the shared ``results.csv``, plans the first pass and the power extension it calls
    for (:func:`plan`), and runs the planned runs of this part that have no row and no claim. With a power
    extension to compute (``args.max_seeds > args.seeds``), a process whose part is done waits while runs of
    the plan are claimed elsewhere or belong to a part that is running, since their rows decide the next
    seeds; it stops when the plan is complete, or when the runs it lacks belong to parts that no process
    runs (it says so: run those parts, or this command without ``--shard``, again).
    """
    shard: Shard = args.shard
    failed: dict[str, str] = {}
    extends = args.max_seeds > args.seeds
    start, waiting_for, first = time.perf_counter(), None, True
    with running_as(output, shard):
        while True:
            rows = setting.rows(output)
            have = {results.run_key(r) for r in rows}
            planned = plan(args, rows)
            missing = [r for r in planned if setting.key(r) not in have and r.name not in failed]
            todo = [r for r in missing if shard.owns(r) and not claimed(runs_dir / r.name)]
            if todo or first:
                print(f"{len(planned)} runs planned, {len(planned) - len(missing)} with a row; shard {shard}: "
                      f"{len(todo)} to run ({args.jobs} at a time)", flush=True)
                first = False
            if todo:
                failed.update(_run_batch(todo, args, runs_dir, output, setting))
                waiting_for = None
                continue
            if not extends or not missing:
                break
            # a run is under way if claimed, or still to come if its part is running and it has not failed
            busy = [r for r in missing if claimed(runs_dir / r.name)
                    or (not shard.owns(r) and not (runs_dir / r.name / FAILED).exists()
                        and shard_running(output, shard_of(r, shard.count), shard.count))]
            if not busy:
                parts = sorted({shard_of(r, shard.count) for r in missing})
                print(f"plan incomplete: {len(missing)} runs have no row and no process runs them (parts "
                      f"{', '.join(f'{p}/{shard.count}' for p in parts)}: not started, ended or failed); run "
                      "those parts (or this command without --shard) again to finish the power extension",
                      flush=True)
                break
            if waiting_for != len(busy):
                print(f"waiting for {len(busy)} runs in other processes (their rows decide the power "
                      "extension)", flush=True)
                waiting_for = len(busy)
            time.sleep(WAIT_SECONDS)
    print(f"shard {shard} done in {(time.perf_counter() - start) / 60:.1f} min of wall time", flush=True)
    return sorted(failed)


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


def _metric_source(final: dict[str, Any], cfg: dict[str, Any], key: str) -> str:
    """Where ``key`` comes from: ``""`` for the run's own held-out data (an embedded task's, or
    ``data.val_data``), else the first ``eval.datasets`` set (in the configuration's order) that has it."""
    if key in final:
        return ""
    return next((name for name in (cfg.get("eval") or {}).get("datasets") or {} if f"{name}/{key}" in final), "")


def collect_row(spec: RunSpec, run_dir: Path) -> Optional[dict[str, Any]]:
    """One results row from a finished run folder, or None if it has no summary.

    The final gap and similarities are means over the last quarter of the logged train rows (at least
    one row), each row being the batch of one logged step. Zero-shot accuracy and retrieval come from the
    run's own held-out data; data without classes (csv, webdataset) takes them from its first
    ``eval.datasets`` set that has them, named in ``zero_shot_set`` / ``retrieval_set``.
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

    zero_shot_set = _metric_source(final, cfg, "zero_shot_top1")
    retrieval_set = _metric_source(final, cfg, "image_to_text_R@1")

    def metric(key: str, source: str) -> float:
        return _float(final.get(f"{source}/{key}" if source else key))

    i2t, t2i = metric("image_to_text_R@1", retrieval_set), metric("text_to_image_R@1", retrieval_set)
    topo = spec.topology
    gap = tail_mean("gap")
    return {
        "mode": "full",
        "topology": topo.name,
        "geometry": topo.geometry,
        "k": cfg["model"]["n_tokens"],
        "d": cfg["model"]["token_dim"],
        "class_tokens": cfg["model"].get("class_tokens"),
        "temperature": topo.temperature_label(),
        "noise": spec.noise,
        "seed": spec.seed,
        "dataset": cfg["data"]["dataset"],
        "data": data_path(cfg["data"]["dataset"], cfg["data"].get("train_data")),
        "model": cfg["model"]["name"],
        "steps": summary["final_step"],
        "batch_size": cfg["data"]["batch_size"],
        "zero_shot_top1": metric("zero_shot_top1", zero_shot_set),
        "zero_shot_top5": metric("zero_shot_top5", zero_shot_set),
        "zero_shot_set": zero_shot_set,
        "image_to_text_R@1": i2t,
        "text_to_image_R@1": t2i,
        "retrieval_R@1": (i2t + t2i) / 2,
        "retrieval_set": retrieval_set,
        "final_temperature": _float(summary.get("final_temperature")),
        "positive_similarity": tail_mean("positive_similarity"),
        "negative_similarity": tail_mean("negative_similarity"),
        "gap": gap,
        "gap_normalized": gap / topo.blocks,
        "final_loss": _float(summary.get("final_loss")),
        "hardware": summary.get("hardware", ""),
        "wall_time_seconds": _float(summary.get("wall_time_seconds")),
        "run_dir": str(run_dir),
        # the geometry's learned values (its values(), e.g. a curvature), by name; none for most
        **{key: _float(value) for key, value in (summary.get("final_geometry") or {}).items()},
        "temperature_trajectory": [[r["step"], _float(r.get("temperature"))] for r in train],
        "gap_trajectory": [[r["step"], _float(r.get("gap")) / topo.blocks] for r in train],
    }
