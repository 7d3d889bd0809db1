"""Time Oblique's core ops on CPU against geoopt, geomstats, pymanopt and bare formulas.

Run: python benchmarks/bench_manifold.py [--quick] [--out benchmarks/results/manifold.md]
Prints a markdown table (median times from torch.utils.benchmark, one run) and writes it to --out.
geomstats runs in a child process (its pytorch backend changes torch's default dtype).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys

import numpy as np
import torch
import torch.utils.benchmark as tb

K, D = 16, 32


def _import_oblique():
    try:
        from manifold_align.manifolds.oblique import Oblique
    except ModuleNotFoundError:  # sibling modules still missing: load the package bare
        import pathlib
        import types

        pkg = types.ModuleType("manifold_align")
        pkg.__path__ = [str(pathlib.Path(__file__).resolve().parents[1] / "manifold_align")]
        sys.modules["manifold_align"] = pkg
        for name in [m for m in sys.modules if m.startswith("manifold_align.")]:
            del sys.modules[name]
        from manifold_align.manifolds.oblique import Oblique
    return Oblique


def median_s(fn, min_run_time: float) -> float:
    return tb.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median


def points(b: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(b, K, D, generator=g, dtype=torch.float32), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(b, K, D, generator=g, dtype=torch.float32), dim=-1)
    return x, y


def bare_arccos(x, y):
    return torch.acos((x * y).sum(-1).clamp(-1, 1)).square().sum(-1).sqrt()


def geomstats_child(batches: list[int], min_run_time: float) -> None:
    """Runs in a child process: prints JSON {op@B: seconds} for geomstats' NFoldManifold (pytorch)."""
    os.environ["GEOMSTATS_BACKEND"] = "pytorch"
    from geomstats.geometry.hypersphere import Hypersphere
    from geomstats.geometry.nfold_manifold import NFoldManifold

    torch.set_default_dtype(torch.float32)
    space = NFoldManifold(Hypersphere(D - 1), K)
    out = {}
    for b in batches:
        x, y = points(b, 0)
        x, y = x.double(), y.double()  # geomstats' pytorch backend computes in float64
        v = space.metric.log(y, x)
        out[f"dist@{b}"] = median_s(lambda: space.metric.dist(x, y), min_run_time)
        out[f"expmap@{b}"] = median_s(lambda: space.metric.exp(v, x), min_run_time)
        out[f"logmap@{b}"] = median_s(lambda: space.metric.log(y, x), min_run_time)
    print(json.dumps(out))


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}; torch {torch.__version__}; {torch.get_num_threads()} threads; python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter timing windows")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "manifold.md"))
    parser.add_argument("--geomstats-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    t_min = 0.05 if args.quick else 0.3
    if args.geomstats_child:
        geomstats_child([int(b) for b in args.geomstats_child.split(",")], t_min)
        return

    import geoopt
    import pymanopt.manifolds

    Oblique = _import_oblique()
    ob = Oblique()
    product = geoopt.ProductManifold(*[(geoopt.Sphere(), D) for _ in range(K)])
    pm = pymanopt.manifolds.Oblique(D, K)
    rows: list[tuple[str, int, str, float, float]] = []  # (op, B, baseline, ours, theirs)

    def compare(op, b, ours, baseline, theirs):
        rows.append((op, b, baseline, median_s(ours, t_min), median_s(theirs, t_min)))

    for b in (256, 4096):
        x, y = points(b, 0)
        v = ob.logmap(x, y)
        xf, yf, vf = x.reshape(b, -1), y.reshape(b, -1), v.reshape(b, -1)
        compare("dist", b, lambda: ob.dist(x, y), "geoopt ProductManifold", lambda: product.dist(xf, yf))
        compare("expmap", b, lambda: ob.expmap(x, v), "geoopt ProductManifold", lambda: product.expmap(xf, vf))
        compare("logmap", b, lambda: ob.logmap(x, y), "geoopt ProductManifold", lambda: product.logmap(xf, yf))
        compare("dist", b, lambda: ob.dist(x, y), "bare arccos of dot", lambda: bare_arccos(x, y))
        compare("logits (B,k*d)@(k*d,B)", b, lambda: xf @ yf.T, "einsum('abd,cbd->ac')",
                lambda: torch.einsum("abd,cbd->ac", x, y))
        xp, yp = torch.nn.functional.normalize(torch.randn(b, K * D), dim=-1), torch.nn.functional.normalize(
            torch.randn(b, K * D), dim=-1)
        compare("logits (B,k*d)@(k*d,B)", b, lambda: xf @ yf.T, f"plain cosine ({b},{K * D})@({K * D},{b})",
                lambda: xp @ yp.T)
    for b in (256, 512):
        x, y = points(b, 1)
        compare("cdist precise=True", b, lambda: ob.cdist(x, y), "dist over all pairs (broadcast)",
                lambda: ob.dist(x[:, None], y[None]))
        compare("cdist precise=False", b, lambda: ob.cdist(x, y, precise=False), "cdist precise=True",
                lambda: ob.cdist(x, y))
    b = 256
    x, y = points(b, 0)
    v = ob.logmap(x, y)
    xs, ys, vs = (t.double().transpose(-2, -1).numpy() for t in (x, y, v))
    x64, y64, v64 = x.double(), y.double(), v.double()
    compare("dist (float64)", b, lambda: ob.dist(x64, y64), "pymanopt Oblique (loop over B)",
            lambda: [pm.dist(xs[i], ys[i]) for i in range(b)])
    compare("expmap (float64)", b, lambda: ob.expmap(x64, v64), "pymanopt Oblique (loop over B)",
            lambda: [pm.exp(xs[i], vs[i]) for i in range(b)])
    compare("logmap (float64)", b, lambda: ob.logmap(x64, y64), "pymanopt Oblique (loop over B)",
            lambda: [pm.log(xs[i], ys[i]) for i in range(b)])

    # geomstats last and in a child process: its torch backend switches the default dtype
    child = subprocess.run(
        [sys.executable, __file__, "--geomstats-child", "256,4096"] + (["--quick"] if args.quick else []),
        capture_output=True, text=True, check=False,
    )
    if child.returncode == 0:
        gs_times = json.loads(child.stdout.strip().splitlines()[-1])
        for b in (256, 4096):
            x, y = points(b, 0)
            x64, y64 = x.double(), y.double()
            v64 = ob.logmap(x64, y64)
            for op, fn in (("dist", lambda: ob.dist(x64, y64)), ("expmap", lambda: ob.expmap(x64, v64)),
                           ("logmap", lambda: ob.logmap(x64, y64))):
                rows.append((f"{op} (float64)", b, "geomstats NFoldManifold (torch)", median_s(fn, t_min),
                             gs_times[f"{op}@{b}"]))
    else:
        print("geomstats child failed:\n" + child.stderr[-2000:], file=sys.stderr)

    lines = [
        "# Oblique manifold benchmark",
        "",
        f"Command: `python benchmarks/bench_manifold.py{' --quick' if args.quick else ''}`  ",
        f"Machine: {machine()}  ",
        f"k = {K}, d = {D}, float32 unless noted; median of torch.utils.benchmark blocked_autorange.",
        "",
        "| op | B | baseline | ours (ms) | baseline (ms) | baseline / ours |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for op, b, base, ours, theirs in rows:
        lines.append(f"| {op} | {b} | {base} | {ours * 1e3:.3f} | {theirs * 1e3:.3f} | {theirs / ours:.2f}x |")
    table = "\n".join(lines)
    print(table)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
