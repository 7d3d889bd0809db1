"""Topology comparison: the same towers, data and budget under each embedding geometry (issue 6).

Every run is ``manifold-align train`` in its own subprocess, with the topology expressed as ``--set``
overrides of the run configuration (see :data:`TOPOLOGIES`). Reported per run: zero-shot top-1 on the
held-out data, retrieval R@1, the final temperature scale and its trajectory, and the mean
positive/negative similarity gap (from ``metrics.jsonl``). Aggregated per (topology, caption noise): mean
and 95% t-interval over seeds. A second grid sweeps ``k`` at fixed ``k * d = 512`` (oblique similarity).

Usage::

    python benchmarks/topologies.py                    # full grid, digit-pairs on CPU, 2 jobs at a time
    python benchmarks/topologies.py --quick            # smoke run: 1 seed, 20 steps, 2 noise levels
    python benchmarks/topologies.py --dry-run          # print the plan and the commands only
    python benchmarks/topologies.py --report-only      # tables and plots from the runs already done
    python benchmarks/topologies.py --config my.yaml --set train.lr=1e-3 --topologies sphere-learnable,oblique-none

An interrupted grid resumes where it stopped: runs with a ``summary.json`` are skipped, runs with a
checkpoint continue with ``--resume latest``, the others start again.

Outputs (``--output``, default ``benchmarks/results/topologies/``): ``results.csv`` and ``results.json``
(one row per run; the JSON rows also carry the temperature and gap trajectories), ``results.md``
(tables, with the task, steps, batch, command and machine), and the plots ``accuracy_vs_noise.png``,
``temperature_vs_noise.png``, ``gap_over_training.png``, ``accuracy_vs_k.png``. Run folders go to
``--runs-dir`` (default ``runs/bench-topologies/``); their checkpoints are deleted once a run is done
unless ``--keep-checkpoints``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from machine_info import cpu_model  # benchmarks/ is on sys.path: scripts run from there

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "topologies"
DEFAULT_RUNS = REPO / "runs" / "bench-topologies"

#: total embedding width ``k * d`` shared by every topology
WIDTH = 512

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

_CLIP_TEMPERATURE = {"name": "learnable", "init": 0.07, "max_scale": 100.0}
#: what `--set loss.similarity=euclidean` trains with ("auto"): learnable from 1/20, written out here so
#: that the grid's rows do not change meaning if the library's default does
_EUCLIDEAN_OWN_TEMPERATURE = {"name": "learnable", "init": 20.0, "max_scale": 100.0}


# --------------------------------------------------------------------------------------------------
# topologies
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Topology:
    """One embedding geometry as run-configuration overrides.

    Attributes
    ----------
    name : str
    similarity : str
        ``loss.similarity``.
    n_tokens, token_dim : int
        ``model.n_tokens`` (k) and ``model.token_dim`` (d), ``k * d = 512``.
    temperature : dict
        ``loss.temperature.*`` keys.
    blocks : int
        Spheres the similarity normalizes on: ``k`` for oblique, 1 for cosine. The gap is divided by it
        (the half-width of the similarity's range) to compare topologies.
    description : str
    class_tokens : int or None
        ``model.class_tokens``: class tokens per tower (``None``: ``n_tokens``). ``1`` with oblique
        ``k = 16, d = 32`` is the block control: one 512-d token split into 16 normalized blocks of 32.
    """

    name: str
    similarity: str
    n_tokens: int
    token_dim: int
    temperature: dict = field(default_factory=lambda: {"name": "none"})
    blocks: int = 1
    description: str = ""
    class_tokens: Optional[int] = None

    def overrides(self) -> list[str]:
        """``--set`` items that select this topology."""
        items = [f"loss.similarity={self.similarity}", f"model.n_tokens={self.n_tokens}",
                 f"model.token_dim={self.token_dim}"]
        if self.class_tokens is not None:
            items.append(f"model.class_tokens={self.class_tokens}")
        items += [f"loss.temperature.{key}={value}" for key, value in self.temperature.items()]
        return items

    def temperature_label(self) -> str:
        """``none``, ``fixed 14.29`` or ``learnable <= 100``."""
        t = self.temperature
        if t["name"] == "fixed":
            return f"fixed {t['scale']:.4g}"
        if t["name"] == "learnable":
            return f"learnable <= {t['max_scale']:g}"
        return t["name"]


TOPOLOGIES: dict[str, Topology] = {t.name: t for t in (
    Topology("sphere-learnable", "cosine", 1, 512, dict(_CLIP_TEMPERATURE), 1,
             "CLIP: one 512-d token on S^511, learnable scale from 1/0.07, capped at 100"),
    Topology("sphere-fixed", "cosine", 1, 512, {"name": "fixed", "scale": 1 / 0.07}, 1,
             "one 512-d token on S^511, scale fixed at 1/0.07 (CLIP's initial value)"),
    Topology("sphere-none", "cosine", 1, 512, {"name": "none"}, 1,
             "one 512-d token on S^511, scale 1: logits confined to [-1, 1]"),
    Topology("oblique-none", "oblique", 16, 32, {"name": "none"}, 16,
             "OB(32, 16): 16 tokens, each on S^31, similarity in [-16, 16], no scale"),
    Topology("oblique-learnable-3.95", "oblique", 16, 32,
             {"name": "learnable", "init": 0.07, "max_scale": 3.95}, 16,
             "OB(32, 16) with a learnable scale capped at 3.95 (the paper's reported setting)"),
    Topology("oblique-learnable-100", "oblique", 16, 32, dict(_CLIP_TEMPERATURE), 16,
             "OB(32, 16) with CLIP's learnable scale, capped at 100"),
    Topology("joint-control", "cosine", 16, 32, dict(_CLIP_TEMPERATURE), 1,
             "the same 16 tokens of 32, concatenated and normalized jointly on S^511; CLIP's scale"),
    Topology("block-control", "oblique", 16, 32, {"name": "none"}, 16,
             "one 512-d class token split into 16 blocks of 32, each normalized: OB(32, 16) without "
             "extra tokens; no scale", class_tokens=1),
    # EuCLIP and MERU use CLIP's learnable temperature; their scores are unbounded, so `blocks` only
    # divides the gap by k for the gap plot
    Topology("euclidean-k1", "euclidean", 1, 512, dict(_CLIP_TEMPERATURE), 1,
             "EuCLIP: minus the squared Euclidean distance of one 512-d token, CLIP's learnable scale"),
    Topology("euclidean-k16", "euclidean", 16, 32, dict(_CLIP_TEMPERATURE), 16,
             "minus the squared distance summed over 16 tokens of 32 (the same score as k = 1 on the "
             "flattened vector); CLIP's learnable scale"),
    Topology("euclidean-k1-own", "euclidean", 1, 512, dict(_EUCLIDEAN_OWN_TEMPERATURE), 1,
             "minus the squared distance of one 512-d token with the similarity's own temperature (learnable "
             "from 1/20, the trainer's default for euclidean): squared distances are ~1000 at the start"),
    Topology("lorentz-k1", "lorentz", 1, 512, dict(_CLIP_TEMPERATURE), 1,
             "MERU: one 512-d token on the hyperboloid, learnable curvature and modality scales, CLIP's scale"),
    Topology("lorentz-k16", "lorentz", 16, 32, dict(_CLIP_TEMPERATURE), 16,
             "16 tokens of 32, each on its own hyperboloid (shared curvature and scales), distances summed; "
             "CLIP's scale"),
)}

#: topology whose k is swept (at fixed k * d); its k = 16 runs are shared with the main grid
K_SWEEP_BASE = "oblique-none"


def k_sweep_topology(k: int, base: str = K_SWEEP_BASE) -> Topology:
    """``base`` with ``k`` tokens of ``512 // k`` dims (``base`` itself when its k already is ``k``)."""
    topo = TOPOLOGIES[base]
    if WIDTH % k:
        raise ValueError(f"k = {k} does not divide the width {WIDTH}; expected a power of 2 up to 256")
    if k == topo.n_tokens:
        return topo
    return Topology(f"{base}-k{k}", topo.similarity, k, WIDTH // k, dict(topo.temperature), k,
                    f"{topo.name} with k = {k}, d = {WIDTH // k}", class_tokens=topo.class_tokens)


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
    specs = [RunSpec(TOPOLOGIES[t], float(n), s) for t in topologies for n in noise for s in seeds]
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
        "similarity": cfg["loss"]["similarity"],
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
        "temperature_trajectory": [[r["step"], _float(r.get("temperature"))] for r in train],
        "gap_trajectory": [[r["step"], _float(r.get("gap")) / topo.blocks] for r in train],
    }


TRAJECTORY_KEYS = ("temperature_trajectory", "gap_trajectory")


def write_results(rows: list[dict[str, Any]], output: Path) -> None:
    """``results.json`` (all fields) and ``results.csv`` (without the trajectories)."""
    output.mkdir(parents=True, exist_ok=True)
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
    (output / "results.json").write_text(json.dumps(clean, indent=1) + "\n")
    columns = [k for k in (rows[0] if rows else {}) if k not in TRAJECTORY_KEYS]
    with (output / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


# --------------------------------------------------------------------------------------------------
# statistics and tables
# --------------------------------------------------------------------------------------------------
def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, int]:
    """``(mean, half-width, n)`` of the two-sided Student-t interval; half-width NaN when n < 2."""
    values = [v for v in values if not math.isnan(v)]
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), 0
    mean = statistics.fmean(values)
    if n < 2:
        return mean, float("nan"), 1
    from scipy.stats import t

    return mean, float(t.ppf(0.5 + confidence / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n), n


def _cell(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    mean, half, n = t_interval(values)
    if n == 0:
        return "--"
    if math.isnan(half):
        return f"{scale * mean:.{digits}f} (n=1)"
    return f"{scale * mean:.{digits}f} ± {scale * half:.{digits}f}"


def _grouped(rows, key_row, key_col, metric) -> dict[tuple, list[float]]:
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r[key_row], r[key_col]), []).append(r[metric])
    return groups


def _setting(rows: list[dict[str, Any]]) -> str:
    """Task, model, steps, batch and seeds of a set of rows (every distinct value listed)."""
    def values(key):
        return ", ".join(str(v) for v in sorted({r[key] for r in rows}))

    return (f"task {values('dataset')}, towers {values('model')}, {values('steps')} steps, "
            f"batch {values('batch_size')}, seeds {values('seed')}")


METRICS = (
    ("zero_shot_top1", "Zero-shot top-1 (%) on held-out images", 100.0, 1),
    ("retrieval_R@1", "Retrieval R@1 (%), mean of image->text and text->image", 100.0, 1),
    ("final_temperature", "Final temperature scale (multiplier of the similarity)", 1.0, 3),
    ("gap_normalized", "Positive - negative similarity gap at the end of training, divided by the "
                       "number of spheres (1 for cosine, k for oblique)", 1.0, 3),
)


def grid_tables(rows: list[dict[str, Any]], topologies: Sequence[str]) -> str:
    """Markdown: one table per metric, topologies x noise, mean ± 95% t-interval half-width."""
    rows = [r for r in rows if r["topology"] in topologies]
    if not rows:
        return ""
    noises = sorted({r["noise"] for r in rows})
    present = [t for t in topologies if any(r["topology"] == t for r in rows)]
    out = [f"## Topologies x caption noise ({_setting(rows)})", ""]
    for metric, title, scale, digits in METRICS:
        groups = _grouped(rows, "topology", "noise", metric)
        out += [f"### {title}", "", "| topology | " + " | ".join(f"noise {n:g}" for n in noises) + " |",
                "|---|" + "---|" * len(noises)]
        for topo in present:
            out.append(f"| {topo} | " + " | ".join(_cell(groups.get((topo, n), []), scale, digits)
                                                  for n in noises) + " |")
        out.append("")
    return "\n".join(out)


#: the topology the paired table compares every other one with: the CLIP sphere
PAIRED_BASELINE = "sphere-learnable"


def paired_differences(rows: list[dict[str, Any]], topology: str, baseline: str,
                       noise: Optional[float] = None, metric: str = "zero_shot_top1") -> list[float]:
    """``metric`` of ``topology`` minus that of ``baseline``, one value per seed run by both (same data
    order and caption-noise draw); at one ``noise`` level, or at every level when ``noise`` is None."""
    def by_key(name):
        return {(r["noise"], r["seed"]): r[metric] for r in rows
                if r["topology"] == name and (noise is None or r["noise"] == noise)}

    mine, base = by_key(topology), by_key(baseline)
    return [mine[key] - base[key] for key in sorted(mine) if key in base]


def paired_table(rows: list[dict[str, Any]], topologies: Sequence[str], baseline: str = PAIRED_BASELINE) -> str:
    """Markdown: zero-shot top-1 of each topology minus the baseline's, paired by seed, per noise and pooled."""
    rows = [r for r in rows if r["topology"] in topologies]
    if baseline not in {r["topology"] for r in rows}:
        return ""
    noises = sorted({r["noise"] for r in rows})
    present = [t for t in topologies if t != baseline and any(r["topology"] == t for r in rows)]
    out = [f"## Paired by seed: zero-shot top-1 minus {baseline}'s (points)", "",
           "Each run is compared with the baseline run of the same seed and noise (same data order and "
           "caption-noise draw); cells: mean ± 95% t-interval of those differences. *all*: every noise "
           "level's pairs pooled.", "",
           "| topology | " + " | ".join(f"noise {n:g}" for n in noises) + " | all |",
           "|---|" + "---|" * (len(noises) + 1)]
    for topo in present:
        cells = [_cell(paired_differences(rows, topo, baseline, n), 100.0) for n in noises]
        cells.append(_cell(paired_differences(rows, topo, baseline), 100.0))
        out.append(f"| {topo} | " + " | ".join(cells) + " |")
    out.append("")
    return "\n".join(out)


def k_rows(rows: list[dict[str, Any]], k_base: str = K_SWEEP_BASE) -> list[dict[str, Any]]:
    """Rows of the k sweep: the base topology and its ``-k<k>`` variants."""
    return [r for r in rows if r["topology"] == k_base or r["topology"].startswith(f"{k_base}-k")]


def k_table(rows: list[dict[str, Any]], k_noise: Sequence[float], k_base: str = K_SWEEP_BASE) -> str:
    """Markdown: k x (zero-shot top-1, R@1, gap) at each k-sweep noise level."""
    rows = [r for r in k_rows(rows, k_base) if r["noise"] in set(k_noise)]
    if not rows:
        return ""
    out = [f"## k sweep at k * d = {WIDTH}, {TOPOLOGIES[k_base].similarity} similarity, "
           f"temperature {TOPOLOGIES[k_base].temperature_label()} ({_setting(rows)})", ""]
    for noise in sorted({r["noise"] for r in rows}):
        sub = [r for r in rows if r["noise"] == noise]
        out += [f"### caption noise {noise:g}", "",
                "| k | d | zero-shot top-1 (%) | retrieval R@1 (%) | gap / k |", "|---|---|---|---|---|"]
        for k in sorted({r["k"] for r in sub}):
            ks = [r for r in sub if r["k"] == k]
            out.append(f"| {k} | {WIDTH // k} | {_cell([r['zero_shot_top1'] for r in ks], 100.0)} | "
                       f"{_cell([r['retrieval_R@1'] for r in ks], 100.0)} | "
                       f"{_cell([r['gap_normalized'] for r in ks], 1.0, 3)} |")
        out.append("")
    return "\n".join(out)


def machine() -> str:
    """A one-line description of this machine."""
    import torch

    return (f"{cpu_model()} ({platform.machine()}), {os.cpu_count()} CPUs, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"torch {torch.__version__}").replace("  ", " ")


def write_markdown(rows: list[dict[str, Any]], output: Path, *, topologies: Sequence[str],
                   k_noise: Sequence[float], command: str, failed: Sequence[str] = ()) -> Path:
    """``results.md``: how the tables were made, then the grid and k-sweep tables."""
    lines = ["# Topology comparison", "",
             f"Produced by `{command}` on {machine()}.",
             "Cells: mean ± half-width of the 95% Student-t interval over seeds ((n=1): one seed, no "
             "interval). Every run trains the same towers on the same data for the same steps; "
             "topologies differ only in the overrides listed in docs/benchmarks-topologies.md.", ""]
    if failed:
        lines += [f"Runs that failed and are missing from the tables: {', '.join(failed)}.", ""]
    lines += [grid_tables(rows, topologies), paired_table(rows, topologies), k_table(rows, k_noise)]
    path = output / "results.md"
    path.write_text("\n".join(line for line in lines if line is not None).rstrip() + "\n")
    return path


# --------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------
def _mean_trajectory(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    by_step: dict[int, list[float]] = {}
    for r in rows:
        for step, value in r[key]:
            if not math.isnan(value):
                by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    return steps, [statistics.fmean(by_step[s]) for s in steps]


def _errorbar_lines(ax, rows, group_key, x_key, metric, scale, groups, log_x=False):
    for group in groups:
        sub = [r for r in rows if r[group_key] == group]
        xs = sorted({r[x_key] for r in sub})
        stats = [t_interval([r[metric] for r in sub if r[x_key] == x]) for x in xs]
        means = [scale * m for m, _, _ in stats]
        errs = [0.0 if math.isnan(h) else scale * h for _, h, _ in stats]
        ax.errorbar(xs, means, yerr=errs, marker="o", capsize=3, label=str(group))
    if log_x:
        ax.set_xscale("log", base=2)


def write_plots(rows: list[dict[str, Any]], output: Path, *, topologies: Sequence[str],
                k_noise: Sequence[float]) -> list[Path]:
    """The four PNGs (a plot with no data to show is skipped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = [r for r in rows if r["topology"] in topologies]
    present = [t for t in topologies if any(r["topology"] == t for r in grid)]
    written = []

    def save(fig, name):
        path = output / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    if grid:
        setting = _setting(grid)
        fig, ax = plt.subplots(figsize=(7.5, 5))
        _errorbar_lines(ax, grid, "topology", "noise", "zero_shot_top1", 100.0, present)
        ax.set(xlabel="caption noise (share of mismatched captions)", ylabel="zero-shot top-1 (%)",
               title=f"Zero-shot accuracy vs caption noise\n{setting}")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        save(fig, "accuracy_vs_noise.png")

        learnable = [t for t in present if TOPOLOGIES[t].temperature["name"] == "learnable"]
        if learnable:
            fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
            _errorbar_lines(left, grid, "topology", "noise", "final_temperature", 1.0, learnable)
            left.set(xlabel="caption noise", ylabel="final temperature scale", yscale="log",
                     title="Learned scale vs caption noise")
            left.legend(fontsize=8)
            left.grid(alpha=0.3)
            noises = sorted({r["noise"] for r in grid})
            cmap = plt.get_cmap("viridis")
            styles = ["-", "--", ":", "-."]
            for j, topo in enumerate(learnable):
                for i, noise in enumerate(noises):
                    sub = [r for r in grid if r["topology"] == topo and r["noise"] == noise]
                    steps, values = _mean_trajectory(sub, "temperature_trajectory")
                    right.plot(steps, values, styles[j % len(styles)], marker=".", markersize=3,
                               color=cmap(i / max(1, len(noises) - 1)),
                               label=f"{topo}, noise {noise:g}")
            right.set(xlabel="step", ylabel="temperature scale (mean over seeds)", yscale="log",
                      title="Scale during training")
            right.legend(fontsize=6, ncol=2)
            right.grid(alpha=0.3)
            fig.suptitle(setting, fontsize=9)
            save(fig, "temperature_vs_noise.png")

        cols = min(4, len(present))
        nrows = math.ceil(len(present) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 3 * nrows), squeeze=False, sharex=True)
        noises = sorted({r["noise"] for r in grid})
        cmap = plt.get_cmap("viridis")
        for ax, topo in zip(axes.flat, present):
            for i, noise in enumerate(noises):
                sub = [r for r in grid if r["topology"] == topo and r["noise"] == noise]
                steps, values = _mean_trajectory(sub, "gap_trajectory")
                ax.plot(steps, values, marker=".", markersize=3, color=cmap(i / max(1, len(noises) - 1)),
                        label=f"noise {noise:g}")
            ax.set_title(topo, fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel("gap / spheres")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(present):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7)
        fig.suptitle(f"Positive - negative similarity gap during training (mean over seeds)\n{setting}",
                     fontsize=9)
        save(fig, "gap_over_training.png")

    sweep = [r for r in k_rows(rows) if r["noise"] in set(k_noise)]
    if sweep:
        fig, ax = plt.subplots(figsize=(7, 5))
        _errorbar_lines(ax, sweep, "noise", "k", "zero_shot_top1", 100.0,
                        sorted({r["noise"] for r in sweep}), log_x=True)
        ax.set(xlabel=f"k (tokens), d = {WIDTH} / k", ylabel="zero-shot top-1 (%)",
               title=f"Zero-shot accuracy vs k at k * d = {WIDTH}\n{_setting(sweep)}")
        ax.legend(title="caption noise", fontsize=8)
        ax.grid(alpha=0.3)
        save(fig, "accuracy_vs_k.png")
    return written


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------
def comma_floats(text: str) -> tuple[float, ...]:
    """``"0,0.2"`` -> ``(0.0, 0.2)``; empty items are skipped (``""`` -> ``()``). Also the fast mode's."""
    return tuple(float(x) for x in text.split(",") if x.strip())


def comma_ints(text: str) -> tuple[int, ...]:
    """``"1,16"`` -> ``(1, 16)``; empty items are skipped (``""`` -> ``()``). Also the fast mode's."""
    return tuple(int(x) for x in text.split(",") if x.strip())


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the benchmark."""
    parser = argparse.ArgumentParser(
        prog="benchmarks/topologies.py",
        description="Train the same towers under each topology and compare zero-shot accuracy, retrieval, "
                    "temperature and similarity gap across caption noise levels; plus a sweep over k.",
    )
    parser.add_argument("--mode", choices=MODES, default="full",
                        help="full (default): the towers trained by `manifold-align train`; fast: fixed inputs "
                             "and MLP towers, seconds per run (its flags: --mode fast --help)")
    parser.add_argument("--config", metavar="FILE.yaml", help="training configuration passed to every run "
                        f"(default: built-in defaults with data.dataset={DEFAULT_DATASET}, train.device=cpu)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override passed to every run (before the topology's own keys); repeatable")
    parser.add_argument("--topologies", type=lambda s: tuple(x for x in s.split(",") if x),
                        default=tuple(TOPOLOGIES), help=f"comma list (default all: {','.join(TOPOLOGIES)})")
    parser.add_argument("--noise", type=comma_floats, help="caption noise levels, comma list "
                        f"(default {','.join(map(str, DEFAULT_NOISE))})")
    parser.add_argument("--seeds", type=int, help=f"number of seeds, 0..N-1 (default {DEFAULT_SEEDS})")
    parser.add_argument("--steps", type=int, help=f"optimizer steps per run (default {DEFAULT_STEPS}; "
                        "with --config: the file's)")
    parser.add_argument("--batch-size", type=int, help=f"batch size (default {DEFAULT_BATCH}; with --config: "
                        "the file's)")
    parser.add_argument("--k-values", type=comma_ints, help="k sweep at k * d = 512, comma list "
                        f"(default {','.join(map(str, DEFAULT_K_VALUES))}; empty string: no sweep)")
    parser.add_argument("--k-noise", type=comma_floats, help="caption noise of the k sweep "
                        f"(default {','.join(map(str, DEFAULT_K_NOISE))})")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one CPU thread each (default 2)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK['seeds']} seed, {QUICK['steps']} steps, noise "
                             f"{','.join(map(str, QUICK['noise']))}, k in {','.join(map(str, QUICK['k_values']))} "
                             "(explicit flags still win)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results folder "
                        f"(default {DEFAULT_OUTPUT.relative_to(REPO)})")
    parser.add_argument("--runs-dir", type=Path, help=f"run folders (default {DEFAULT_RUNS.relative_to(REPO)}; "
                        "with --quick: <that>-quick)")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep each finished run's checkpoints")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and commands, train nothing")
    parser.add_argument("--report-only", action="store_true",
                        help="write results, tables and plots from the finished runs, train nothing")
    return parser


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the grid defaults (quick or full) for the flags left unset; validate names and sizes."""
    quick = args.quick
    if args.noise is None:
        args.noise = QUICK["noise"] if quick else DEFAULT_NOISE
    if args.seeds is None:
        args.seeds = QUICK["seeds"] if quick else DEFAULT_SEEDS
    if args.steps is None and quick:
        args.steps = QUICK["steps"]
    if args.k_values is None:
        args.k_values = QUICK["k_values"] if quick else DEFAULT_K_VALUES
    if args.k_noise is None:
        args.k_noise = DEFAULT_K_NOISE
    if args.runs_dir is None:
        args.runs_dir = DEFAULT_RUNS.with_name(DEFAULT_RUNS.name + ("-quick" if quick else ""))
    unknown = [t for t in args.topologies if t not in TOPOLOGIES]
    if unknown:
        raise SystemExit(f"unknown topology {unknown}; accepted: {', '.join(TOPOLOGIES)}")
    bad = [n for n in (*args.noise, *args.k_noise) if not 0.0 <= n <= 1.0]
    if bad:
        raise SystemExit(f"caption noise must be in [0, 1], got {bad}")
    bad_k = [k for k in args.k_values if k < 1 or WIDTH % k or WIDTH // k < 2]
    if bad_k:
        raise SystemExit(f"k must divide {WIDTH} and leave d >= 2, got {bad_k}")
    if args.seeds < 1 or args.jobs < 1 or (args.steps is not None and args.steps < 2):
        raise SystemExit("--seeds and --jobs must be >= 1 and --steps >= 2")
    return args


MODES = ("full", "fast")


def split_mode(argv: Sequence[str]) -> tuple[str, list[str]]:
    """``(mode, the other arguments)`` from ``--mode full|fast`` (or ``--mode=...``) anywhere in ``argv``."""
    rest, mode, it = [], "full", iter(argv)
    for item in it:
        if item == "--mode":
            mode = next(it, "")
        elif item.startswith("--mode="):
            mode = item.split("=", 1)[1]
        else:
            rest.append(item)
    if mode not in MODES:
        raise SystemExit(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode, rest


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point (``manifold-align bench topologies`` can delegate here); returns the exit status.

    ``--mode fast`` hands the other arguments to the fast mode (``topology_grid.main``); ``--mode full``
    (the default) trains the towers with ``manifold-align train``, one subprocess per run.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    mode, argv = split_mode(argv)
    if mode == "fast":
        import topology_grid

        return topology_grid.main(argv)
    args = resolve_args(build_parser().parse_args(argv))
    seeds = list(range(args.seeds))
    specs = plan_runs(args.topologies, args.noise, seeds, args.k_values, args.k_noise)
    runs_dir = args.runs_dir.resolve()
    if args.dry_run:
        for spec in specs:
            state = run_state(runs_dir / spec.name)
            print(f"# {spec.name} [{state}]")
            print(" ".join(train_command(spec, args, runs_dir / spec.name, state)))
        print(f"# {len(specs)} runs")
        return 0
    failed = [] if args.report_only else execute(specs, args, runs_dir)
    rows = [row for spec in specs if (row := collect_row(spec, runs_dir / spec.name)) is not None]
    output = args.output.resolve()
    write_results(rows, output)
    command = shlex.join(["python", "benchmarks/topologies.py", *argv])
    md = write_markdown(rows, output, topologies=args.topologies, k_noise=args.k_noise, command=command,
                        failed=failed)
    plots = write_plots(rows, output, topologies=args.topologies, k_noise=args.k_noise)
    print(f"{len(rows)} of {len(specs)} runs collected -> {output / 'results.csv'}, {md.name}, "
          f"{', '.join(p.name for p in plots)}")
    if failed:
        print(f"failed runs: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
