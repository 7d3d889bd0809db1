"""Speed against peers in one run: manifold ops, the training step and the optimizer step.

Usage::

    python benchmarks/speed.py                 # everything, full timing windows
    python benchmarks/speed.py --quick         # shorter windows, the small settings only (a few minutes)
    python benchmarks/speed.py --only optim    # a subset: manifold, model, optim (comma list)
    manifold-align bench speed --quick         # the same, from the console script

Runs each benchmark script in its own subprocess (each chooses its threads and dtypes; geomstats
changes torch's default dtype, which must not leak into the other timings):

- ``bench_manifold.py``: Oblique's dist/expmap/logmap/cdist against geoopt, geomstats and pymanopt, and
  the logits matmul against einsum and a plain cosine matmul (CPU only).
- ``bench_geometries.py``: every similarity's logits (``pairwise``, forward and backward) against the
  ``oblique`` logits at the same width and batch (CPU only).
- ``bench_model.py``: one training step of the multi-token model against stock open_clip (adds its GPU
  setting when CUDA is available).
- ``bench_optim.py``: RiemannianAdamW against torch AdamW and geoopt RiemannianAdam (adds CUDA rows
  when CUDA is available).
- ``bench_gpu.py`` (only where CUDA is available): the logits' share of the GPU's matrix peak, the loss
  against open_clip's ClipLoss and the manifold ops against geoopt on the GPU.

``--quick`` is passed through (``bench_model.py`` without a ``--quick`` flag of its own runs only its
small settings). The tables are concatenated into ``benchmarks/results/speed.md`` with the machine line
and each command. The scripts' own result files (``results/manifold.md``, ...) are left alone unless
``--update-results``.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from machine_info import gpu_name, machine  # benchmarks/ is on sys.path: scripts run from there

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "speed.md"
BENCHMARKS = ("manifold", "geometries", "model", "optim", "gpu")
#: benchmarks that need CUDA; left out of the default selection without it
GPU_ONLY = ("gpu",)


@dataclass
class Section:
    """The outcome of one benchmark script."""

    name: str
    command: list[str]
    returncode: int
    seconds: float
    body: str


def _supports(script: Path, flag: str) -> bool:
    """Whether ``script --help`` mentions ``flag`` (the scripts import torch lazily, so this is cheap)."""
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=REPO)
    return done.returncode == 0 and re.search(rf"(^|\s){re.escape(flag)}\b", done.stdout) is not None


def command_for(name: str, *, quick: bool, update: bool, scratch: Path, gpu: bool) -> list[str]:
    """The subprocess command line of one benchmark."""
    script = HERE / f"bench_{name}.py"
    cmd = [sys.executable, str(script)]
    if name == "model":
        if quick and _supports(script, "--quick"):
            cmd.append("--quick")
        elif quick:  # only its small CPU setting (and the GPU one where there is a GPU)
            cmd += ["--settings", "tiny-cpu", *(["vit-b-16-gpu"] if gpu else [])]
        if not update:
            cmd.append("--no-write")
        return cmd
    if quick:
        cmd.append("--quick")
    if not update:  # bench_manifold has no --no-write: send its file to a scratch folder
        cmd += ["--out", str(scratch / f"{name}.md")] if name == "manifold" else ["--no-write"]
    return cmd


def display(cmd: Sequence[str]) -> str:
    """A command as typed from the repository root (``python benchmarks/...``), scratch outputs left out."""
    parts, skip = [], False
    for item in cmd[1:]:
        if skip:
            skip = False
            continue
        if item == "--out" and "bench_manifold" in cmd[1]:
            skip = True
            continue
        if item == "--no-write":
            continue
        path = Path(item)
        parts.append(str(path.relative_to(REPO)) if path.is_absolute() and REPO in path.parents else item)
    return shlex.join(["python", *parts])


def run_one(name: str, cmd: list[str]) -> Section:
    """Run one benchmark; its stderr (progress) streams through, its stdout (markdown) is kept."""
    print(f"[speed] {name}: {display(cmd)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
    seconds = time.perf_counter() - start
    print(f"[speed] {name}: exit {done.returncode}, {seconds:.0f} s", file=sys.stderr, flush=True)
    return Section(name, cmd, done.returncode, seconds, done.stdout)


def _demote(markdown: str, levels: int) -> str:
    """Push every markdown heading ``levels`` down, so that a script's document nests under a section."""
    return re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + levels) + " ", markdown, flags=re.M)


_TITLES = {
    "manifold": "Manifold ops against geoopt, geomstats, pymanopt; logits against einsum and plain matmul",
    "geometries": "Logits of every similarity (lorentz, euclidean, ...) against oblique at the same width",
    "model": "One training step: multi-token model against stock open_clip",
    "optim": "One optimizer step: RiemannianAdamW against torch AdamW and geoopt RiemannianAdam",
    "gpu": "GPU: logits against the matrix peak, loss against open_clip, manifold ops against geoopt",
}

_MODEL_NOTE = ("Step: forward of both towers, symmetric cross-entropy, backward, AdamW step; best (minimum) of "
               "the timed steps, median in brackets, both models interleaved in one process. Step ratio: "
               "multi-token / stock (below 1: ours is faster). Memory: see benchmarks/bench_model.py.")


def render(sections: Sequence[Section], *, quick: bool, argv: Sequence[str], gpu: Optional[str]) -> str:
    lines = [
        "# Speed against peers",
        "",
        f"Command: `{shlex.join(['python', 'benchmarks/speed.py', *argv])}`  ",
        f"Machine: {machine()}  ",
        ("GPU: " + gpu + ": GPU rows included where a script has them (bench_model, bench_optim, bench_gpu; "
         "bench_manifold is CPU only)." if gpu else
         "GPU: none (torch.cuda.is_available() is False): CPU rows only, bench_gpu left out."),
        "",
        "Each script ran in its own process, one after the other, with its own threads and timing method "
        "(see each section). Ratios are measured within one script run, so they survive the machine's load "
        "better than the absolute times; on a shared machine expect +-30% between runs.",
    ]
    if quick:
        lines.append("`--quick`: shorter timing windows and the small settings only; rerun without it for the "
                     "numbers to quote.")
    for section in sections:
        lines += ["", f"## {_TITLES[section.name]}", "",
                  f"Command: `{display(section.command)}` ({section.seconds:.0f} s)", ""]
        if section.returncode != 0:
            lines.append(f"FAILED (exit {section.returncode}); its error output is above this run's report.")
            continue
        body = section.body.strip()
        if body.startswith("# "):  # the script's own title: this section's heading replaces it
            body = body.split("\n", 1)[1].strip() if "\n" in body else ""
        if section.name == "model":
            lines += [_MODEL_NOTE, ""]
        lines.append(_demote(body, 1))
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run the manifold, model and optimizer speed benchmarks (each in its own process) and "
                    "collect their tables in one markdown file.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="passed to each script: shorter timing windows, small settings (a few minutes)")
    parser.add_argument("--only", type=lambda s: [x for x in s.split(",") if x], default=None, metavar="NAMES",
                        help=f"comma list of benchmarks to run (default all: {','.join(BENCHMARKS)}; "
                             f"{','.join(GPU_ONLY)} only where CUDA is available)")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help=f"markdown file to write (default {RESULTS.relative_to(REPO)})")
    parser.add_argument("--update-results", action="store_true",
                        help="also let each script write its own results file (results/manifold.md, ...)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point (``manifold-align bench speed`` runs this script); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    gpu = gpu_name()
    if args.only is None:
        args.only = [n for n in BENCHMARKS if gpu or n not in GPU_ONLY]
    unknown = [n for n in args.only if n not in BENCHMARKS]
    if unknown or not args.only:
        raise SystemExit(f"--only: unknown benchmark(s) {unknown}; accepted: {', '.join(BENCHMARKS)}")
    if not gpu and any(n in GPU_ONLY for n in args.only):
        raise SystemExit(f"--only: {', '.join(n for n in args.only if n in GPU_ONLY)} needs a CUDA device "
                         "(torch.cuda.is_available() is False)")
    print(f"[speed] {machine()}", file=sys.stderr)
    print(f"[speed] GPU: {gpu}" if gpu else "[speed] no GPU (torch.cuda.is_available() is False): CPU rows only",
          file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="speed-") as scratch:
        commands = {name: command_for(name, quick=args.quick, update=args.update_results, scratch=Path(scratch),
                                      gpu=gpu is not None) for name in args.only}
        if args.dry_run:
            for name, cmd in commands.items():
                print(f"# {name}\n{display(cmd)}")
            return 0
        sections = [run_one(name, cmd) for name, cmd in commands.items()]
    text = render(sections, quick=args.quick, argv=argv, gpu=gpu)
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"[speed] wrote {args.out}", file=sys.stderr)
    failed = [s.name for s in sections if s.returncode != 0]
    if failed:
        print(f"[speed] failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
