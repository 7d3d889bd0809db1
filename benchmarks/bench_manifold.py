"""Time Oblique's core ops on CPU against geoopt, geomstats, pymanopt and bare formulas.

Run: python benchmarks/bench_manifold.py [--quick] [--repeat R] [--out benchmarks/results/manifold.md]
Prints a markdown table and writes it to --out: each comparison times ours and the baseline
alternately R times (torch.utils.benchmark medians) and reports the medians of the times and of the
R ratios, which is robust to load that drifts during the run (shared machines).
geomstats runs in a child process (its pytorch backend changes torch's default dtype).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

import numpy as np
import torch

from machine_info import machine, median_s  # benchmarks/ is on sys.path: scripts run from there

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


def points(b: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(b, K, D, generator=g, dtype=torch.float32), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(b, K, D, generator=g, dtype=torch.float32), dim=-1)
    return x, y


def bare_arccos(x, y):
    return torch.acos((x * y).sum(-1).clamp(-1, 1)).square().sum(-1).sqrt()


def two_norm_atan2(x, y):
    """The previous dist formula, 2 atan2(|x - y|, |x + y|) per row: two temporaries, two reductions."""
    return (2 * torch.atan2((x - y).norm(dim=-1), (x + y).norm(dim=-1))).square().sum(-1).sqrt()


def at_angle(x: torch.Tensor, t: float, seed: int) -> torch.Tensor:
    """float32 points whose every row is at angle t (float64 construction) from the rows of x."""
    x64 = x.double()
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(x.shape, generator=g, dtype=torch.float64)
    w = w - (w * x64).sum(-1, keepdim=True) * x64
    w = w / w.norm(dim=-1, keepdim=True)
    return torch.nn.functional.normalize((math.cos(t) * x64 + math.sin(t) * w).float(), dim=-1)


def reference_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """float64 exact distance between the directions of the (float32) rows; broadcasts."""
    x64, y64 = (torch.nn.functional.normalize(t.double(), dim=-1) for t in (x, y))
    return two_norm_atan2(x64, y64)


def accuracy_rows(ob) -> list[tuple[str, str, float, float, float]]:
    """(op, case, max |error| ours, baseline 1, baseline 2) in rad against reference_dist, float32 inputs."""
    rows = []
    x, _ = points(1024, 2)
    cases = [(f"every row at angle {t:g}", t) for t in (1e-6, 1e-3, 0.1, 1.0, 2.0, 2.5, 3.0, 3.1)]
    cases.append(("every row at angle pi - 1e-3", math.pi - 1e-3))
    for case, t in cases:
        y = at_angle(x, t, 3)
        ref = reference_dist(x, y)
        errs = [float((f(x, y).double() - ref).abs().max()) for f in (ob.dist, bare_arccos, two_norm_atan2)]
        rows.append(("dist", case) + tuple(errs))
    ref = reference_dist(x, -x)
    errs = [float((f(x, -x).double() - ref).abs().max()) for f in (ob.dist, bare_arccos, two_norm_atan2)]
    rows.append(("dist", "antipodal rows (y = -x)") + tuple(errs))

    x, y = points(256, 4)
    cdist_cases = [("random pairs", x, y), ("x against itself (diagonal)", x, x)]
    cdist_cases += [(f"y_i = x_i moved by {t:g} per row", x, at_angle(x, t, 5)) for t in (1e-6, 1e-3, 0.3, 0.33)]
    cdist_cases.append(("y_i = -x_i moved by 1e-3 per row", x, at_angle(-x, 1e-3, 6)))
    for case, a, b in cdist_cases:
        ref = reference_dist(a[:, None], b[None])
        errs = [float((ob.cdist(a, b, precise=p).double() - ref).abs().max()) for p in (True, False)]
        rows.append(("cdist", case, errs[0], errs[1], float("nan")))
    return rows


def geomstats_child(batches: list[int], min_run_time: float, repeat: int) -> None:
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
        for key, fn in (("dist", lambda: space.metric.dist(x, y)), ("expmap", lambda: space.metric.exp(v, x)),
                        ("logmap", lambda: space.metric.log(y, x))):
            out[f"{key}@{b}"] = float(np.median([median_s(fn, min_run_time) for _ in range(repeat)]))
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter timing windows")
    parser.add_argument("--repeat", type=int, default=5, help="alternating timings per comparison")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "manifold.md"))
    parser.add_argument("--geomstats-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    t_min = 0.05 if args.quick else 0.3
    if args.geomstats_child:
        geomstats_child([int(b) for b in args.geomstats_child.split(",")], t_min, args.repeat)
        return

    import geoopt
    import pymanopt.manifolds

    Oblique = _import_oblique()
    ob = Oblique()
    product = geoopt.ProductManifold(*[(geoopt.Sphere(), D) for _ in range(K)])
    pm = pymanopt.manifolds.Oblique(D, K)
    rows: list[tuple[str, int, str, float, float, float]] = []  # (op, B, baseline, ours, theirs, ratio)

    def compare(op, b, ours, baseline, theirs):
        pairs = [(median_s(ours, t_min), median_s(theirs, t_min)) for _ in range(args.repeat)]
        rows.append((op, b, baseline, float(np.median([p[0] for p in pairs])),
                     float(np.median([p[1] for p in pairs])), float(np.median([t / o for o, t in pairs]))))

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
        compare("cdist(x, x) precise=True (n*k exact recomputations)", b, lambda: ob.cdist(x, x),
                "dist over all pairs (broadcast)", lambda: ob.dist(x[:, None], x[None]))
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
        [sys.executable, __file__, "--geomstats-child", "256,4096", "--repeat", str(args.repeat)]
        + (["--quick"] if args.quick else []),
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
                ours = float(np.median([median_s(fn, t_min) for _ in range(args.repeat)]))
                theirs = gs_times[f"{op}@{b}"]
                rows.append((f"{op} (float64)", b, "geomstats NFoldManifold (torch)", ours, theirs, theirs / ours))
    else:
        print("geomstats child failed:\n" + child.stderr[-2000:], file=sys.stderr)

    lines = [
        "# Oblique manifold benchmark",
        "",
        f"Command: `python benchmarks/bench_manifold.py{' --quick' if args.quick else ''}"
        f"{'' if args.repeat == 5 else f' --repeat {args.repeat}'}`  ",
        f"Machine: {machine()}  ",
        f"k = {K}, d = {D}, float32 unless noted. Times: median over {args.repeat} alternating repeats of the",
        "torch.utils.benchmark blocked_autorange median; ratio: median of the per-repeat ratios. Expect",
        "+-30% between runs on a shared 2-core machine; compare ratios, not absolute times.",
        "",
        "| op | B | baseline | ours (ms) | baseline (ms) | baseline / ours |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for op, b, base, ours, theirs, ratio in rows:
        lines.append(f"| {op} | {b} | {base} | {ours * 1e3:.3f} | {theirs * 1e3:.3f} | {ratio:.2f}x |")
    lines += [
        "",
        "## Accuracy (float32 inputs, k = 16, d = 32)",
        "",
        "Max |error| in rad against a float64 reference on the same float32 points (rows renormalized in",
        "float64, exact 2 atan2(|x - y|, |x + y|)). dist: 1024 pairs; baselines are the bare arccos of the",
        "dot product and the previous formula 2 atan2(|x - y|, |x + y|). cdist: n = m = 256; the baseline",
        "column is `precise=False`.",
        "",
        "| op | case | ours | arccos / precise=False | 2 atan2 two norms |",
        "|---|---|---:|---:|---:|",
    ]
    for op, case, ours, base1, base2 in accuracy_rows(ob):
        last = "" if math.isnan(base2) else f"{base2:.1e}"
        lines.append(f"| {op} | {case} | {ours:.1e} | {base1:.1e} | {last} |")
    table = "\n".join(lines)
    print(table)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
