"""The contrastive loss at large batch sizes: peak memory and time of forward + backward against N.

Side by side, for each geometry (cosine, oblique and lorentz at k = 16, k x d = 512, float32):

* ``materialized``: :class:`manifold_align.losses.ContrastiveLoss` as the trainer uses it (the (N, N)
  scores, their logits and two softmaxes; lorentz also its (k, N, N) grid);
* ``open_clip``: open_clip's ``ClipLoss`` on the flattened features (its dot product is the cosine and,
  on per-token normalized features, the oblique score; it has no hyperboloid);
* ``tiled``: the same loss with ``tile_size`` set to :func:`manifold_align.tiled.tile_side` (what ``"auto"``
  picks above its threshold; here at every N, so that small N shows what tiling costs).

Every measurement runs in a fresh Python process (this script with ``--child``), so that its peak is its
own: on a CPU the peak resident set size of the whole process (``resource.getrusage``, ``ru_maxrss``:
Python, torch, the features and their gradients included), on a GPU the allocator's peak
(``torch.cuda.max_memory_allocated``) above the features. The time (on a CPU the process's CPU time, one
thread: what the wall time of an idle machine would be, less disturbed by other jobs on a shared one; on a
GPU the wall time) is the best of ``--repeats`` forward + backward passes after one untimed warm-up pass (no warm-up where N >= ``--no-warmup-from``, to keep the
whole run short). Configurations whose materialized scores would not fit in ``--max-gib`` are skipped
and shown as ``-``.

Then the trainer (``--trainer``): one optimizer step over A x B = ``--pairs`` pairs as A micro-batches of B,
A = 1, 4, 16, exact accumulation (ours, ``digits-fast`` towers as one 512-d cosine token, the model
open_clip trains too) against open_clip's trainer with ``--accum-freq A`` on the same CSV of digits
(``bench_trainer.py``'s), no loader workers, fp32, one thread. Ours: the median of ``--trainer-steps`` timed
``Trainer.train_step`` calls (batches drawn inside the timing) in a fresh process, and its peak RSS; open_clip:
its own ``Batch (t)`` average of the last logged steps and the peak RSS of its process.

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

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "big_batch.md"
GEOMETRIES = {"cosine": (1, 512), "oblique": (16, 32), "lorentz": (16, 32)}
METHODS = ("materialized", "open_clip", "tiled")
SCALE = 10.0


# --------------------------------------------------------------------------------------------------
# one measurement (the child process)
# --------------------------------------------------------------------------------------------------
def _features(geometry: str, n: int, device):
    """The geometry and projected image and text features (leaves with gradient), the loss inputs of a batch."""
    import torch

    from manifold_align import get_geometry

    k, d = GEOMETRIES[geometry]
    module = get_geometry(geometry, n_tokens=k, token_dim=d).to(device)
    g = torch.Generator(device="cpu").manual_seed(0)
    out = []
    for modality in ("image", "text"):
        raw = torch.randn(n, k, d, generator=g).to(device)
        with torch.no_grad():
            out.append(module.project(raw, modality=modality).requires_grad_())
    return module, out[0], out[1]


def _loss_fn(method: str, module, tile):
    from manifold_align.losses import ContrastiveLoss
    from manifold_align.tiled import tile_side

    if method == "open_clip":
        from open_clip.loss import ClipLoss

        clip = ClipLoss()
        return lambda i, t, s: clip(i.flatten(1), t.flatten(1), s)
    tile_size = None if method == "materialized" else (tile or tile_side(module.score_grid()))
    loss = ContrastiveLoss(module, check_on_manifold=False, check_finite=False, tile_size=tile_size)
    return lambda i, t, s: loss(i, t, s, validate=False).loss


def child(method: str, geometry: str, n: int, repeats: int, warmup: bool, tile, device: str) -> dict:
    """Time and peak memory of ``repeats`` forward + backward passes; printed as one JSON line."""
    import torch

    torch.manual_seed(0)
    dev = torch.device(device)
    module, image, text = _features(geometry, n, dev)
    scale = torch.tensor(SCALE, device=dev, requires_grad=True)
    fn = _loss_fn(method, module, tile)
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
# the trainer: exact accumulation against open_clip's --accum-freq
# --------------------------------------------------------------------------------------------------
ACCUMULATIONS = (1, 4, 16)
_WRAPPER = ("import json, resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
            "print(json.dumps([r.returncode, u.ru_utime + u.ru_stime, u.ru_maxrss, r.stdout[-2000:], r.stderr[-2000:]]))")


def trainer_child(accumulation: int, pairs: int, steps: int, csv: str) -> dict:
    """CPU time of ``steps`` optimizer steps of our trainer (after one untimed), and the process's peak RSS."""
    import statistics
    import tempfile

    import torch

    from manifold_align_train.config import load_config
    from manifold_align_train.trainer import Trainer

    settings = ["data.dataset=csv", f"data.train_data={csv}", f"data.batch_size={pairs // accumulation}",
                "data.workers=0", "model.name=digits-fast", "model.n_tokens=1", "model.token_dim=512",
                "model.geometry=cosine", f"train.accumulation={accumulation}", f"train.steps={steps + 2}",
                "train.warmup=1", "train.device=cpu", "train.threads=1", "train.precision=fp32",
                "log.progress=false", "log.tensorboard=false", "seed=0"]
    cfg = load_config(None, settings)
    torch.set_num_threads(1)
    times = []
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(cfg, Path(out) / "run")
        batches = trainer._batches()
        for step in range(steps + 1):
            t0 = time.process_time()
            trainer.train_step([next(batches) for _ in range(accumulation)], read_metrics=False)
            trainer.step += 1
            if step:
                times.append(time.process_time() - t0)
    return {"step_s": statistics.median(times), "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def _wrapped(command: list[str], env: dict) -> tuple[float, float]:
    """CPU seconds and peak RSS (GiB) of ``command`` and its children, measured by a wrapper process."""
    done = subprocess.run([sys.executable, "-c", _WRAPPER, *command], capture_output=True, text=True, env=env)
    code, cpu, rss, out, err = json.loads(done.stdout.strip().splitlines()[-1])
    if code:
        raise RuntimeError(f"{' '.join(command[:4])} ... exited {code}:\n{out}\n{err}")
    return cpu, rss / 2**20


def open_clip_step(accumulation: int, pairs: int, csv: Path, model_dir: Path, folder: Path, env: dict,
                   samples: int) -> dict:
    """CPU time of one optimizer step of ``open_clip_train.main --accum-freq A`` (the difference of a 3-epoch
    and a 1-epoch run over the steps between them), and the peak RSS of the longer run."""
    from types import SimpleNamespace

    from bench_trainer import open_clip_command

    steps_per_epoch = samples // pairs
    measured = {}
    for epochs in (1, 3):
        args = SimpleNamespace(batch_size=pairs // accumulation, workers=0, steps=epochs * samples // (pairs // accumulation),
                               samples=samples)
        command = open_clip_command(csv, model_dir, folder / f"oc-{accumulation}-{epochs}", args)
        # argparse keeps the last of a repeated option
        measured[epochs] = _wrapped([*command, "--accum-freq", str(accumulation), "--epochs", str(epochs),
                                     "--warmup", "1"], env)
    cpu = (measured[3][0] - measured[1][0]) / (2 * steps_per_epoch)
    return {"step_s": cpu, "peak_rss_gib": measured[3][1]}


def trainer_table(rows: dict, pairs: int) -> list[str]:
    lines = [f"| A x B = {pairs} | ours step CPU (s) | ours peak RSS (GiB) | ours / ours A = 1 | open_clip --accum-freq "
             "step CPU (s) | open_clip peak RSS (GiB) | ours / open_clip |", "|---|---|---|---|---|---|---|"]
    base = rows.get(("ours", 1))
    for a in ACCUMULATIONS:
        ours, theirs = rows.get(("ours", a)), rows.get(("open_clip", a))
        cell = lambda r, key, f: f.format(r[key]) if r else "-"  # noqa: E731
        lines.append(f"| A = {a}, B = {pairs // a} | {cell(ours, 'step_s', '{:.3f}')} | "
                     f"{cell(ours, 'peak_rss_gib', '{:.2f}')} | {_ratio(ours and ours['step_s'], base and base['step_s'])} | "
                     f"{cell(theirs, 'step_s', '{:.3f}')} | {cell(theirs, 'peak_rss_gib', '{:.2f}')} | "
                     f"{_ratio(ours and ours['step_s'], theirs and theirs['step_s'])} |")
    return lines


def run_trainer(args) -> dict:
    import tempfile

    from bench_trainer import make_csv, open_clip_config

    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        csv = make_csv(folder, args.samples)
        model_dir = open_clip_config(folder / "open_clip_model")
        for a in ACCUMULATIONS:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--trainer-child", str(a), str(args.pairs),
                   str(args.trainer_steps), str(csv)]
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode:
                print(f"# ours A={a} failed: {done.stderr.strip()[-500:]}", file=sys.stderr)
            else:
                rows[("ours", a)] = json.loads(done.stdout.strip().splitlines()[-1])
            try:
                rows[("open_clip", a)] = open_clip_step(a, args.pairs, csv, model_dir, folder, env, args.samples)
            except RuntimeError as error:
                print(f"# open_clip A={a} failed: {str(error)[-800:]}", file=sys.stderr)
            for who in ("ours", "open_clip"):
                if (who, a) in rows:
                    print(f"# trainer {who:9s} A={a:2d} {rows[(who, a)]['step_s']:.3f} s/step "
                          f"peak RSS {rows[(who, a)]['peak_rss_gib']:.2f} GiB", file=sys.stderr, flush=True)
    return rows


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
    p.add_argument("--trainer", action="store_true", help="also time the trainer (exact accumulation vs open_clip)")
    p.add_argument("--trainer-only", action="store_true", help="only the trainer part")
    p.add_argument("--pairs", type=int, default=256, help="trainer: pairs per optimizer step (A x B)")
    p.add_argument("--samples", type=int, default=2048, help="trainer: images in the CSV")
    p.add_argument("--trainer-steps", type=int, default=6, help="trainer: timed steps of ours")
    p.add_argument("--child", nargs=3, metavar=("METHOD", "GEOMETRY", "N"), help=argparse.SUPPRESS)
    p.add_argument("--trainer-child", nargs=4, help=argparse.SUPPRESS)
    p.add_argument("--warmup", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.child:
        method, geometry, n = args.child
        print(json.dumps(child(method, geometry, int(n), args.repeats, args.warmup, args.tile_size, args.device)))
        return
    if args.trainer_child:
        a, pairs, steps, csv = args.trainer_child
        print(json.dumps(trainer_child(int(a), int(pairs), int(steps), csv)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    geometries = args.geometries.split(",")
    methods = args.methods.split(",")
    for name, allowed, given in (("--geometries", GEOMETRIES, geometries), ("--methods", METHODS, methods)):
        unknown = sorted(set(given) - set(allowed))
        if unknown:
            raise SystemExit(f"{name}: unknown {unknown}; expected some of {', '.join(allowed)}")
    results = {}
    for n in ([] if args.trainer_only else sizes):
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
    if args.trainer or args.trainer_only:
        rows = run_trainer(args)
        lines += ["", "## Trainer: exact accumulation against open_clip's --accum-freq", "",
                  f"`digits-fast` towers as one 512-d cosine token, a CSV of {args.samples} digits, no loader workers, "
                  "fp32, one thread; CPU time of one optimizer step (ours: median of "
                  f"{args.trainer_steps} steps; open_clip: the difference of a 3-epoch and a 1-epoch run per step).",
                  "", *trainer_table(rows, args.pairs)]
    print("\n".join(lines))
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
