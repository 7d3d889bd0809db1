"""The contrastive loss at large batch sizes: peak memory and time of forward + backward against N.

Side by side, for each geometry (cosine, oblique and lorentz at k = 16, k x d = 512, float32):

* ``materialized``: :class:`manifold_align.losses.ContrastiveLoss` as the trainer uses it (the (N, N)
  scores, their logits and two softmaxes; lorentz also its (k, N, N) grid);
* ``open_clip``: open_clip's ``ClipLoss`` on the flattened features (its dot product is the cosine and,
  on per-token normalized features, the oblique score; it has no hyperboloid);
* ``tiled``: :func:`manifold_align.tiled.tiled_softmax_loss` with its automatic tile size.

Every measurement runs in a fresh Python process (this script with ``--child``), so that its peak is its
own: on a CPU the peak resident set size of the whole process (``resource.getrusage``, ``ru_maxrss``:
Python, torch, the features and their gradients included), on a GPU the allocator's peak
(``torch.cuda.max_memory_allocated``) above the features. The time (on a CPU the process's CPU time, one
thread: what the wall time of an idle machine would be, less disturbed by other jobs on a shared one; on a
GPU the wall time) is the best of ``--repeats`` forward + backward passes after one untimed warm-up pass (no warm-up where N >= ``--no-warmup-from``, to keep the
whole run short). Configurations whose materialized scores would not fit in ``--max-gib`` are skipped
and shown as ``-``.

    python benchmarks/bench_big_batch.py --write benchmarks/results/big_batch.md
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import header_lines  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "big_batch.md"
GEOMETRIES = {"cosine": (1, 512), "oblique": (16, 32), "lorentz": (16, 32)}
METHODS = ("materialized", "open_clip", "tiled")
SCALE = 10.0


# --------------------------------------------------------------------------------------------------
# one measurement (the child process)
# --------------------------------------------------------------------------------------------------
def _features(geometry: str, n: int, device):
    """Projected image and text features (leaves with gradient), the loss inputs of one batch."""
    import torch

    from manifold_align.similarity import get_similarity

    k, d = GEOMETRIES[geometry]
    sim = get_similarity(geometry)
    module = sim.make_geometry(d=d)
    if module is not None:
        module = module.to(device)
    g = torch.Generator(device="cpu").manual_seed(0)
    out = []
    for modality in ("image", "text"):
        raw = torch.randn(n, k, d, generator=g).to(device)
        with torch.no_grad():
            x = sim.project(raw) if module is None else sim.project(raw, geometry=module, modality=modality)
        out.append(x.requires_grad_())
    return sim, module, out[0], out[1]


def _loss_fn(method: str, sim, module, tile):
    from manifold_align.losses import ContrastiveLoss
    from manifold_align.tiled import pairwise_for, tiled_softmax_loss

    if method == "materialized":
        loss = ContrastiveLoss(sim, check_on_manifold=False, check_finite=False)
        return lambda i, t, s: loss(i, t, logit_scale=s, geometry=module).loss
    if method == "open_clip":
        from open_clip.loss import ClipLoss

        clip = ClipLoss()
        return lambda i, t, s: clip(i.flatten(1), t.flatten(1), s)

    def tiled(i, t, s):
        # per pass: lorentz's (pairwise, params) hold the clamped curvature of this forward
        pairwise, params = pairwise_for(sim, module)
        return tiled_softmax_loss(i, t, pairwise, logit_scale=s, params=params, tile_size=tile)

    return tiled


def child(method: str, geometry: str, n: int, repeats: int, warmup: bool, tile, device: str) -> dict:
    """Time and peak memory of ``repeats`` forward + backward passes; printed as one JSON line."""
    import torch

    torch.manual_seed(0)
    dev = torch.device(device)
    sim, module, image, text = _features(geometry, n, dev)
    scale = torch.tensor(SCALE, device=dev, requires_grad=True)
    fn = _loss_fn(method, sim, module, tile)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_alloc = torch.cuda.memory_allocated() / 2**30
    # CPU: the process's CPU time (one thread: the wall time of an idle machine, and much less disturbed by
    # other jobs on a shared one); GPU: wall time after a synchronize
    clock = time.perf_counter if dev.type == "cuda" else time.process_time
    times, walls = [], []
    for r in range(repeats + int(warmup)):
        image.grad = text.grad = scale.grad = None
        if module is not None:
            module.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0, w0 = clock(), time.perf_counter()
        loss = fn(image, text, scale)
        loss.backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if r >= int(warmup):
            times.append(clock() - t0)
            walls.append(time.perf_counter() - w0)
    out = {"method": method, "geometry": geometry, "n": n, "time_s": min(times), "wall_s": min(walls),
           "loss": float(loss),
           "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "base_rss_gib": base_rss}
    if dev.type == "cuda":
        out["peak_alloc_gib"] = torch.cuda.max_memory_allocated() / 2**30 - base_alloc
    return out


# --------------------------------------------------------------------------------------------------
# the grid (the parent process)
# --------------------------------------------------------------------------------------------------
def materialized_gib(method: str, geometry: str, n: int) -> float:
    """Rough peak of the (N, N) tensors a non-tiled loss holds (scores, logits, softmaxes, gradients; the
    (k, N, N) grid and its root for lorentz), to skip what cannot fit."""
    if method == "tiled":
        return 0.0
    k = GEOMETRIES[geometry][0] if geometry == "lorentz" else 0
    return n * n * 4 * (6 + 2.5 * k) / 2**30


def run_child(args, method, geometry, n) -> dict | None:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", method, geometry, str(n),
           "--repeats", str(args.repeats if n < args.no_warmup_from else 1), "--device", args.device]
    if n < args.no_warmup_from:
        cmd.append("--warmup")
    if args.tile_size:
        cmd += ["--tile-size", str(args.tile_size)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"# {method} {geometry} N={n} failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}",
              file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ratio(a, b) -> str:
    return "-" if a is None or b is None else f"{a / b:.2f}x"


def table(results: dict, sizes, device: str) -> list[str]:
    mem_key = "peak_alloc_gib" if device.startswith("cuda") else "peak_rss_gib"
    mem_name = "allocator peak above the features (GiB)" if device.startswith("cuda") else "peak RSS (GiB)"
    lines = [f"| geometry | N | " + " | ".join(f"{m} time (s)" for m in METHODS) + " | "
             + " | ".join(f"{m} {mem_name}" for m in METHODS) + " | tiled / materialized |",
             "|" + "---|" * (3 + 2 * len(METHODS))]
    for geometry in GEOMETRIES:
        for n in sizes:
            row = [results.get((m, geometry, n)) for m in METHODS]
            if not any(row):
                continue
            times = [f"{r['time_s']:.3f}" if r else "-" for r in row]
            mems = [f"{r[mem_key]:.2f}" if r else "-" for r in row]
            tiled, mat = row[2], row[0]
            lines.append(f"| {geometry} | {n} | " + " | ".join(times) + " | " + " | ".join(mems) + " | "
                         + _ratio(tiled and tiled["time_s"], mat and mat["time_s"]) + " |")
    return lines


def targets(results: dict, sizes, device: str) -> list[str]:
    """The issue's targets, each read off the measured rows."""
    mem_key = "peak_alloc_gib" if device.startswith("cuda") else "peak_rss_gib"
    out = []

    def t(m, g, n):
        r = results.get((m, g, n))
        return r["time_s"] if r else None

    at = [n for n in sizes if results.get(("tiled", "oblique", n))]
    if 32768 in at:
        mem = results[("tiled", "oblique", 32768)][mem_key]
        out.append(f"- N = 32768, oblique k = 16, tiled: peak {mem:.2f} GiB "
                   f"({'meets' if mem <= 2 else 'misses'} the 2 GiB target)")
    for g in GEOMETRIES:
        ratios = [t("tiled", g, n) / t("materialized", g, n) for n in sizes
                  if t("tiled", g, n) and t("materialized", g, n)]
        if ratios:
            worst = max(ratios)
            out.append(f"- {g}: tiled / materialized {min(ratios):.2f}x to {worst:.2f}x where both ran "
                       f"({'meets' if worst <= 1.3 else 'misses'} the 1.3x target)")
    for g, ref, target in (("lorentz", "oblique", 2.0), ("oblique", "cosine", 1.1)):
        ratios = [(n, t("tiled", g, n) / t("tiled", ref, n)) for n in sizes if t("tiled", g, n) and t("tiled", ref, n)]
        if ratios:
            worst = max(r for _, r in ratios)
            text = ", ".join(f"{r:.2f}x at N = {n}" for n, r in ratios)
            out.append(f"- {g} tiled / {ref} tiled: {text} "
                       f"({'meets' if worst <= target else 'misses'} the {target}x target)")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1024,4096,16384,32768", help="comma-separated batch sizes N")
    p.add_argument("--geometries", default=",".join(GEOMETRIES))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--repeats", type=int, default=2, help="timed passes below --no-warmup-from (best kept)")
    p.add_argument("--no-warmup-from", type=int, default=16384,
                   help="from this N on: one timed pass, no warm-up")
    p.add_argument("--max-n-lorentz", type=int, default=16384, help="largest N for the lorentz rows (time)")
    p.add_argument("--max-gib", type=float, default=12.0, help="skip non-tiled runs estimated above this")
    p.add_argument("--tile-size", type=int, default=None, help="tiled: the tile side (default: automatic)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each measurement")
    p.add_argument("--device", default="cpu")
    p.add_argument("--write", type=Path, default=None, help="write the Markdown results here")
    p.add_argument("--child", nargs=3, metavar=("METHOD", "GEOMETRY", "N"), help=argparse.SUPPRESS)
    p.add_argument("--warmup", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.child:
        method, geometry, n = args.child
        print(json.dumps(child(method, geometry, int(n), args.repeats, args.warmup, args.tile_size, args.device)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    geometries = args.geometries.split(",")
    methods = args.methods.split(",")
    for name, allowed, given in (("--geometries", GEOMETRIES, geometries), ("--methods", METHODS, methods)):
        unknown = sorted(set(given) - set(allowed))
        if unknown:
            raise SystemExit(f"{name}: unknown {unknown}; expected some of {', '.join(allowed)}")
    results = {}
    for n in sizes:
        for geometry in geometries:
            if geometry == "lorentz" and n > args.max_n_lorentz:
                continue
            for method in methods:
                if method == "open_clip" and geometry == "lorentz":
                    continue
                if materialized_gib(method, geometry, n) > args.max_gib:
                    continue
                r = run_child(args, method, geometry, n)
                if r:
                    results[(method, geometry, n)] = r
                    print(f"# {method:12s} {geometry:8s} N={n:6d} {r['time_s']:8.3f} s "
                          f"peak RSS {r['peak_rss_gib']:.2f} GiB loss {r['loss']:.4f}", file=sys.stderr, flush=True)
    header = header_lines("bench_big_batch.py", argv)
    lines = ["# Contrastive loss at large batch: memory and time of forward + backward", "", *header, "",
             f"float32, k x d = 512 (cosine: one 512-d token; oblique and lorentz: k = 16 tokens of 32), logit "
             f"scale {SCALE:g}, device {args.device}, {args.threads} thread(s) per measurement, one fresh "
             f"process each. Time: CPU time of the process on a CPU (wall time on a GPU).", "", *table(results, sizes, args.device), "", "Targets (issue 20):", "",
             *targets(results, sizes, args.device)]
    print("\n".join(lines))
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
