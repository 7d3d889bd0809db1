"""Seconds per training step and peak memory of the fast mode's batch sweep, one CPU thread (issue 23).

Usage (from the repository root)::

    python benchmarks/batch_sweep_cost.py                          # N = 256, 1024, 4096, 16384; 1 and 5 seeds
    python benchmarks/batch_sweep_cost.py --sizes 1024 --seeds 1   # one point

Each point runs in its own process (so its peak resident memory is its own): the batch sweep's data (the
digit-pairs task at ``SWEEPS["batch"]``'s pairs per class), the towers of ``--seeds`` seeds, the trainer's
optimizer, and ``--steps`` optimizer steps of :func:`topology.fast.train_step` with same-class pairs left out
of the negatives, after one untimed step (none at N >= 16384, where one step is the measurement). It prints
one line per point with the machine's load average, and writes the points to ``--output`` (JSON; each with its
command, machine, load and the loss's ``tile_size``; a point measured again replaces the old one), which
``topologies.py --mode fast --sweep batch --dry-run`` reads to print how long the sweep takes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from machine_info import machine  # benchmarks/ is on sys.path: scripts run from there

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "topologies-fast-batch" / "step_cost.json"


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def measure(topology: str, n: int, n_seeds: int, steps: int, tile) -> dict:
    """One point, in this process: seconds per step and memory (MiB), the loss's ``tile_size`` ``tile``."""
    import torch

    from topology import fast, spec

    torch.set_num_threads(1)
    sweep = spec.SWEEPS["batch"]
    seeds = tuple(range(n_seeds))
    data = fast.build_data(0.0, seeds, train_per_class=sweep["train_per_class"])
    model = fast.FastModel(spec.topology(topology), seeds, data.train_images.shape[1], data.text_table.shape[1],
                           spec.PROFILES["cpu"]["hidden"])
    optimizer = fast.build_optimizer(model)
    loss_fns = [fast.geometries.contrastive_loss(g, tile_size=tile) for g in model.geometry]
    gen = torch.Generator().manual_seed(0)
    rows = data.train_images.shape[0]

    def step():
        idx = torch.stack([torch.randperm(rows, generator=gen)[:n] for _ in seeds])
        fast.train_step(model, optimizer, loss_fns, data, idx, sweep["negatives"])

    before = _rss_mib()
    if n < 16384:
        step()  # untimed: first-call allocations
    load = os.getloadavg()[0]
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return dict(topology=topology, batch_size=n, seeds=n_seeds, steps=steps, seconds_per_step=seconds,
                rss_before_mib=before, peak_rss_mib=peak, load_start=load, load_end=os.getloadavg()[0],
                train_pairs=rows, negatives=sweep["negatives"], threads=1, tile_size=tile)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--topologies", default="oblique-none,sphere-learnable")
    p.add_argument("--sizes", default="256,1024,4096,16384")
    p.add_argument("--seeds", default="1,5", help="seed counts to vectorize (comma list)")
    p.add_argument("--steps", type=int, help="timed steps per point (default: 3 below N = 4096, else 1)")
    p.add_argument("--tile-size", help="the loss's tile_size: 'auto', 'none' or an int (default: the cpu "
                   "profile's, topology.spec.tile_size)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    p.add_argument("--one", nargs=3, metavar=("TOPOLOGY", "N", "SEEDS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        from topology import spec

        topo, n, s = args.one[0], int(args.one[1]), int(args.one[2])
        if args.tile_size is None:
            tile = spec.tile_size("cpu", n)
        else:
            tile = {"auto": "auto", "none": None}.get(args.tile_size) or int(args.tile_size)
        print(json.dumps(measure(topo, n, s, args.steps or (3 if n < 4096 else 1), tile)))
        return 0
    points = []
    print(f"# {machine()}; one torch thread per point", flush=True)
    for s in (int(x) for x in args.seeds.split(",")):
        for n in (int(x) for x in args.sizes.split(",")):
            for topo in args.topologies.split(","):
                cmd = [sys.executable, __file__, "--one", topo, str(n), str(s)]
                if args.steps:
                    cmd += ["--steps", str(args.steps)]
                if args.tile_size:
                    cmd += ["--tile-size", args.tile_size]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"})
                point = json.loads(out.stdout.strip().splitlines()[-1])
                point["command"] = " ".join(["python", "benchmarks/batch_sweep_cost.py", *(argv or sys.argv[1:])])
                point["machine"] = machine()
                points.append(point)
                print(f"{topo:18s} N {n:6d} seeds {s}: {point['seconds_per_step']:8.2f} s/step, peak RSS "
                      f"{point['peak_rss_mib']:7.0f} MiB (before the steps {point['rss_before_mib']:.0f}), load "
                      f"{point['load_start']:.2f} -> {point['load_end']:.2f}", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(args.output.read_text())["points"] if args.output.is_file() else []
    keep = [q for q in old if (q["topology"], q["batch_size"], q["seeds"]) not in
            {(p["topology"], p["batch_size"], p["seeds"]) for p in points}]
    args.output.write_text(json.dumps({"machine": machine(), "points": keep + points}, indent=1) + "\n")
    print(f"-> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
