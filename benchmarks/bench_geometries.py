"""Time the scores of every registered geometry against the ``oblique`` scores at the same width and batch.

Run: python benchmarks/bench_geometries.py [--quick] [--repeat R] [--device cpu|cuda] [--no-write]
Prints a markdown table and writes it to --out (default benchmarks/results/geometries.md; the file name
gets a ``_gpu`` suffix on CUDA). For each setting (k tokens of d dims, batch B, features already projected)
it times ``geometry.pairwise(a, b)`` -- forward, and forward + backward -- for oblique and the others,
alternating R times (torch.utils.benchmark medians), and reports the median of the per-repeat ratios
``other / oblique``. The issue's target for ``lorentz`` and ``euclidean`` is within 1.2x.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

from machine_info import machine, median_s  # benchmarks/ is on sys.path: scripts run from there

#: option variants timed beside the registered geometries at their defaults: label -> (geometry, options)
VARIANTS = {"euclidean (unsquared)": ("euclidean", {"squared": False})}


def cases() -> dict[str, tuple[str, dict]]:
    """``oblique`` first (the reference), then every registered geometry at its defaults, then the variants."""
    from manifold_align import list_geometries

    names = ["oblique", *(n for n in list_geometries() if n != "oblique")]
    return {**{n: (n, {}) for n in names}, **VARIANTS}


def _geometry(name: str, options: dict, k: int, d: int, device):
    from manifold_align import get_geometry

    return get_geometry(name, n_tokens=k, token_dim=d, **options).to(device)


def _inputs(geometry, b, k, d, device, seed):
    g = torch.Generator().manual_seed(seed)
    raw = [torch.randn(b, k, d, generator=g).to(device) for _ in range(2)]
    with torch.no_grad():
        return geometry.project(raw[0], modality="image"), geometry.project(raw[1], modality="text")


def settings(quick: bool, device) -> list[tuple[int, int, int]]:
    """(k, d, B): MERU/EuCLIP's single vector and the paper's 16 tokens, same width 512."""
    if device.type == "cuda":
        return [(1, 512, 4096), (16, 32, 4096)] if quick else [(1, 512, 4096), (16, 32, 4096), (1, 512, 16384),
                                                                (16, 32, 8192)]
    return [(1, 512, 256), (16, 32, 256)] if quick else [(1, 512, 256), (16, 32, 256), (1, 512, 1024),
                                                          (16, 32, 1024)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter timing windows, small settings")
    parser.add_argument("--repeat", type=int, default=5, help="alternating timings per comparison")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    device = torch.device(args.device)
    t_min = 0.05 if args.quick else 0.3
    rows = []
    for k, d, b in settings(args.quick, device):
        geometries = {label: _geometry(name, options, k, d, device) for label, (name, options) in cases().items()}
        data = {label: _inputs(g, b, k, d, device, seed=0) for label, g in geometries.items()}

        def forward(n):
            a, t = data[n]
            return lambda: geometries[n].pairwise(a, t)

        def backward(n):
            a, t = (x.detach().requires_grad_() for x in data[n])
            return lambda: geometries[n].pairwise(a, t).sum().backward()

        for mode, make in (("forward", forward), ("fwd+bwd", backward)):
            base = make("oblique")
            for n in list(geometries)[1:]:
                fn = make(n)
                cuda = device.type == "cuda"
                pairs = [(median_s(base, t_min, sync_cuda=cuda), median_s(fn, t_min, sync_cuda=cuda))
                         for _ in range(args.repeat)]
                rows.append((n, mode, k, d, b, float(np.median([p[0] for p in pairs])),
                             float(np.median([p[1] for p in pairs])), float(np.median([o / r for r, o in pairs]))))
                print(f"[geometries] {rows[-1]}", file=sys.stderr, flush=True)
    lines = [
        "# Scores of each geometry against `oblique`",
        "",
        f"Command: `python benchmarks/bench_geometries.py{' --quick' if args.quick else ''}"
        f"{'' if args.repeat == 5 else f' --repeat {args.repeat}'}"
        f"{'' if args.device == 'cpu' else f' --device {args.device}'}`  ",
        f"Machine: {machine()}; timed on {device}  ",
        "`geometry.pairwise(a, b)` on projected float32 features (B, k, d), B x B logits. Times: median over",
        f"{args.repeat} alternating repeats of the blocked_autorange median; ratio: median of the per-repeat",
        "ratios (geometry / oblique: lower is faster, the target for lorentz and euclidean is <= 1.2x).",
        "",
        "| geometry | pass | k x d | B | oblique (ms) | geometry (ms) | geometry / oblique |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for n, mode, k, d, b, base, ours, ratio in rows:
        lines.append(f"| {n} | {mode} | {k} x {d} | {b} | {base * 1e3:.3f} | {ours * 1e3:.3f} | {ratio:.2f}x |")
    table = "\n".join(lines) + "\n"
    print(table)
    if not args.no_write:
        default = "geometries_gpu.md" if device.type == "cuda" else "geometries.md"
        out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", default)
        with open(out, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
