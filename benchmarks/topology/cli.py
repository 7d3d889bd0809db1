"""Command line of the topology benchmark: ``python benchmarks/topologies.py [--mode full|fast] ...``.

The top layer: it parses, resolves the defaults, runs the mode's runner (:mod:`.full` or :mod:`.grid`) and then
the one report (:mod:`.report`). ``--mode full`` (the default) trains the project's towers with
``manifold-align train``, one subprocess per run; ``--mode fast`` trains MLP towers on fixed inputs, several
seeds at once. Both write ``results.csv`` and rebuild ``results.md`` and the plots from it; ``--report-only``
does only that.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

from . import full, spec
from .results import DuplicateRunError, writing

MODES = ("full", "fast")
REPO = full.REPO
DEFAULT_FAST_OUTPUT = REPO / "benchmarks" / "results" / "topologies-fast"
#: the batch sweep's folder: its rows (same-class negatives left out, 80000 pairs) never mix with the main grid's
DEFAULT_BATCH_OUTPUT = REPO / "benchmarks" / "results" / "topologies-fast-batch"


def _prog() -> str:
    # argparse's own default (the name the process was started under: `topologies.py`, or
    # `manifold-align bench topologies`), needed here to build the fast mode's `<prog> --mode fast`
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] not in ("", "-c") else "topologies.py"


def _topology_list(text: str) -> tuple[str, ...]:
    names = spec.comma_names(text)
    for name in names:
        try:
            spec.topology(name)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return names


def _shard(text: str) -> "full.Shard":
    try:
        return full.parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _launcher(text: str) -> tuple[str, ...]:
    words = tuple(shlex.split(text))
    if not words:
        raise argparse.ArgumentTypeError(f"expected a command that runs `manifold_align_train` (e.g. \"torchrun "
                                         f"--standalone --nproc-per-node 4 -m manifold_align_train\"), got {text!r}")
    if shutil.which(words[0]) is None:
        raise argparse.ArgumentTypeError(f"expected a command that runs `manifold_align_train`; {words[0]!r} is "
                                         "not an executable file or on PATH")
    return words


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="print the plan, train nothing")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite results.md and the plots from --output's results files, train nothing")
    parser.add_argument("--drop-duplicates", action="store_true",
                        help="report a run found twice in results.csv once, when its copies agree in every result "
                             "(without it such a file is refused)")
    parser.add_argument("--compare-with", type=Path, metavar="DIR",
                        help="another results folder (the other mode's): results.md gets a table of whether the "
                             "main answers agree")
    parser.add_argument("--docs", type=Path, action="append", default=[], metavar="PAGE.md",
                        help="after the report, rewrite the generated <!-- topology-report ... --> blocks of this "
                             "page from their results folders (repeatable; e.g. README.md)")


# --------------------------------------------------------------------------------------------------
# full mode
# --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the full mode (the default)."""
    parser = argparse.ArgumentParser(
        prog=_prog(),
        description="Train the same towers under each topology and compare zero-shot accuracy, retrieval, "
                    "temperature and similarity gap across caption noise levels; plus a sweep over k.",
    )
    parser.add_argument("--mode", choices=MODES, default="full",
                        help="full (default): the towers trained by `manifold-align train`; fast: fixed inputs "
                             "and MLP towers, seconds per run (its flags: --mode fast --help)")
    parser.add_argument("--config", metavar="FILE.yaml", help="training configuration passed to every run "
                        f"(default: built-in defaults with data.dataset={full.DEFAULT_DATASET}, train.device=cpu)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override passed to every run (before the topology's own keys); repeatable")
    parser.add_argument("--topologies", type=_topology_list, help="comma list of topologies: predefined, a "
                        f"registered geometry NAME or NAME-k<k> (default: {', '.join(spec.default_topologies())})")
    parser.add_argument("--noise", type=spec.comma_floats, help="caption noise levels, comma list "
                        f"(default {','.join(map(str, full.DEFAULT_NOISE))})")
    parser.add_argument("--seeds", type=int, help=f"number of seeds, 0..N-1 (default {full.DEFAULT_SEEDS})")
    parser.add_argument("--steps", type=int, help=f"optimizer steps per run (default {full.DEFAULT_STEPS}; "
                        "with --config: the file's)")
    parser.add_argument("--batch-size", type=int, help=f"batch size (default {full.DEFAULT_BATCH}; with --config: "
                        "the file's)")
    parser.add_argument("--k-values", type=spec.comma_ints, help="k sweep at k * d = 512, comma list "
                        f"(default {','.join(map(str, full.DEFAULT_K_VALUES))}; empty string: no sweep)")
    parser.add_argument("--k-noise", type=spec.comma_floats, help="caption noise of the k sweep "
                        f"(default {','.join(map(str, full.DEFAULT_K_NOISE))})")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one CPU thread each (default 2)")
    parser.add_argument("--target", type=float, default=spec.FULL_TARGET,
                        help="power extension: a cell whose paired 95%% half-width (points of zero-shot top-1) is "
                             f"above this gets --seeds more seeds, up to --max-seeds (default {spec.FULL_TARGET:g})")
    parser.add_argument("--max-seeds", type=int, help="seeds the power extension may reach (default: --seeds, "
                        "no extension)")
    parser.add_argument("--shard", type=_shard, default=full.Shard(), metavar="I/N",
                        help="run part I of N (0-based: 0/8 ... 7/8, as $SLURM_ARRAY_TASK_ID/8 of --array=0-7) "
                             "into the shared --output and --runs-dir; the parts are disjoint and together the "
                             "whole plan (default 0/1: all of it)")
    parser.add_argument("--launcher", type=_launcher, metavar="COMMAND",
                        help="the command that trains one run, followed by `train --output ...` (default: this "
                             "python -m manifold_align_train; e.g. \"torchrun --standalone --nproc-per-node 4 -m "
                             "manifold_align_train\")")
    quick = full.QUICK
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {quick['seeds']} seed, {quick['steps']} steps, noise "
                             f"{','.join(map(str, quick['noise']))}, k in {','.join(map(str, quick['k_values']))} "
                             "(explicit flags still win)")
    parser.add_argument("--output", type=Path, default=full.DEFAULT_OUTPUT, help="results folder "
                        f"(default {full.DEFAULT_OUTPUT.relative_to(REPO)})")
    parser.add_argument("--runs-dir", type=Path, help=f"run folders (default {full.DEFAULT_RUNS.relative_to(REPO)}; "
                        "with --quick: <that>-quick)")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep each finished run's checkpoints")
    parser.add_argument("--docs-img", type=Path, help="also copy the plots to this folder")
    _common(parser)
    return parser


def resolve_args(args: argparse.Namespace, *, dataset: str = full.DEFAULT_DATASET) -> argparse.Namespace:
    """Fill the full grid's defaults (quick or not) for the flags left unset; validate sizes.

    ``dataset`` is the runs' ``data.dataset``: caption noise applies to the embedded datasets only, so for
    any other the noise levels are ``0`` (the captions as they are) and ``--noise`` / ``--k-noise`` are refused.
    """
    quick, q = args.quick, full.QUICK
    if args.topologies is None:
        args.topologies = tuple(spec.default_topologies())
    _check_data(args, dataset)
    if args.noise is None:
        args.noise = q["noise"] if quick else full.DEFAULT_NOISE
    if args.seeds is None:
        args.seeds = q["seeds"] if quick else full.DEFAULT_SEEDS
    if args.steps is None and quick:
        args.steps = q["steps"]
    if args.k_values is None:
        args.k_values = q["k_values"] if quick else full.DEFAULT_K_VALUES
    if args.k_noise is None:
        args.k_noise = full.DEFAULT_K_NOISE
    if args.runs_dir is None:
        args.runs_dir = full.DEFAULT_RUNS.with_name(full.DEFAULT_RUNS.name + ("-quick" if quick else ""))
    if args.max_seeds is None:
        args.max_seeds = args.seeds
    _check_noise_and_k(args)
    if args.seeds < 1 or args.jobs < 1 or (args.steps is not None and args.steps < 2):
        raise SystemExit(f"--seeds and --jobs must be >= 1 and --steps >= 2, got --seeds {args.seeds}, "
                         f"--jobs {args.jobs}, --steps {args.steps}")
    if args.max_seeds < args.seeds or not args.target > 0:
        raise SystemExit(f"--max-seeds must be >= --seeds and --target > 0, got --max-seeds {args.max_seeds}, "
                         f"--seeds {args.seeds}, --target {args.target}")
    return args


def _check_data(args: argparse.Namespace, dataset: str) -> None:
    from manifold_align_train.data import EMBEDDED_DATASETS

    if dataset in EMBEDDED_DATASETS:
        return
    given = [f"{flag} {','.join(map(str, value))}" for flag, value in (("--noise", args.noise),
                                                                         ("--k-noise", args.k_noise))
             if value is not None]
    if given:
        raise SystemExit(f"--noise/--k-noise: caption noise applies to the embedded datasets "
                         f"({', '.join(EMBEDDED_DATASETS)}), not to data.dataset={dataset!r}, whose captions are "
                         f"used as they are; leave both out, got {'; '.join(given)}")
    args.noise = args.k_noise = (0.0,)


def _check_noise_and_k(args: argparse.Namespace) -> None:
    bad = [n for n in (*args.noise, *args.k_noise) if not 0.0 <= n <= 1.0]
    if bad:
        raise SystemExit(f"--noise and --k-noise: caption noise must be in [0, 1], got {bad}")
    bad_k = [k for k in args.k_values if k < 1 or spec.WIDTH % k or spec.WIDTH // k < 2]
    if bad_k:
        raise SystemExit(f"--k-values: k must divide {spec.WIDTH} and leave d >= 2, got {bad_k}")


def check_report_args(args: argparse.Namespace) -> None:
    """``--compare-with`` and ``--docs`` checked before any run starts (a grid takes hours)."""
    from .report import BLOCK

    if args.compare_with is not None and not (args.compare_with / "results.csv").is_file():
        raise SystemExit(f"--compare-with: expected a results folder holding results.csv, got {args.compare_with}")
    for page in args.docs:
        if not page.is_file() or not BLOCK.search(page.read_text(encoding="utf-8")):
            raise SystemExit(f"--docs: expected a Markdown page with a <!-- topology-report KIND FOLDER --> block, "
                             f"got {page}")


def _report(output: Path, command: str, args: argparse.Namespace, **kwargs) -> list[Path]:
    """``results.md`` and the plots, then the generated blocks of ``--docs``' pages."""
    from .report import update_pages, write_report

    try:
        written = write_report(output, command=command, drop_duplicates=args.drop_duplicates,
                               images_to=args.docs_img, compare_with=args.compare_with, **kwargs)
        changed = update_pages(args.docs, REPO)
    except DuplicateRunError as exc:
        raise SystemExit(f"report refused: {exc}") from None
    for page in args.docs:
        print(f"{page}: generated blocks {'rewritten' if page in changed else 'already current'}")
    return written


def main_full(argv: Sequence[str]) -> int:
    """The full mode; returns the exit status (1 if a run failed)."""
    args = build_parser().parse_args(argv)
    check_report_args(args)
    output = args.output.resolve()
    command = shlex.join(["python", "benchmarks/topologies.py", *argv])
    if args.report_only:  # the rows say what they were run on; no configuration needed
        return _full_report(output, command, args, [])
    args = resolve_args(args, dataset=full.run_config(args).data.dataset)
    setting = full.Setting.of(full.run_config(args))
    runs_dir = args.runs_dir.resolve()
    if args.dry_run:
        specs = full.plan(args, setting.rows(output))
        mine = [run for run in specs if args.shard.owns(run)]
        for run in mine:
            state = full.run_state(runs_dir / run.name)
            print(f"# {run.name} [{state}]")
            print(" ".join(full.train_command(run, args, runs_dir / run.name, state)))
        if args.shard.count > 1 or args.max_seeds > args.seeds:
            print(f"# shard {args.shard}: {len(mine)} of the {len(specs)} runs planned" + (
                f", then more seeds where the paired half-width is above {args.target:g} points (at most "
                f"{args.max_seeds} seeds)" if args.max_seeds > args.seeds else ""))
        print(f"# {len(mine)} runs")
        return 0
    failed = full.execute(args, runs_dir, output, setting)
    return _full_report(output, command, args, failed)


def _full_report(output: Path, command: str, args: argparse.Namespace, failed: Sequence[str]) -> int:
    with writing(output):  # two shards ending at once write one report after the other, never interleaved
        written = _report(output, command, args, failed=failed)
    print(f"report -> {', '.join(p.name for p in written) or 'nothing (no finished runs)'}")
    if failed:
        print(f"failed runs: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


# --------------------------------------------------------------------------------------------------
# fast mode
# --------------------------------------------------------------------------------------------------
def build_fast_parser() -> argparse.ArgumentParser:
    """Argument parser of the fast mode."""
    p = argparse.ArgumentParser(prog=f"{_prog()} --mode fast",
                                description="Fast mode: fixed inputs, 2-layer MLP towers, the library's "
                                            "geometries, temperatures, loss and optimizer.")
    p.add_argument("--sweep", choices=tuple(spec.SWEEPS), default="main",
                   help="main (default): the main grid, the k sweep and the power extension, every other pair of a "
                        "batch a negative, 5000 training pairs; batch: the batch sweep at noise 0 over "
                        "--batch-sizes, same-class pairs left out of the negatives, 80000 training pairs, into its "
                        "own folder")
    p.add_argument("--profile", choices=tuple(spec.PROFILES), default="cpu",
                   help="cpu (default) or gpu: the same grid at hidden 1024, batch 512, device cuda, "
                        "10-seed chunks, a 540 s budget")
    p.add_argument("--output", type=Path, help=f"results folder (default {DEFAULT_FAST_OUTPUT.relative_to(REPO)}, "
                   f"--sweep batch: {DEFAULT_BATCH_OUTPUT.relative_to(REPO)}; with -gpu appended for the gpu profile)")
    p.add_argument("--device", help="torch device (default: the profile's)")
    p.add_argument("--steps", type=int, help="optimizer steps per run (cpu 300, gpu 300)")
    p.add_argument("--hidden", type=int, help="towers' hidden width (cpu 128, gpu 1024)")
    p.add_argument("--batch-size", type=int, help="batch of the main grid and k sweep (cpu 128, gpu 512)")
    p.add_argument("--seeds", type=int, help="seeds per chunk (cpu 5, gpu 10)")
    p.add_argument("--max-seeds", type=int, help="seeds the power extension may reach (cpu 80, gpu 40)")
    p.add_argument("--target", type=float, default=spec.TARGET, help="paired half-width target, points (1.5)")
    p.add_argument("--topologies", type=_topology_list, help="comma list: predefined, a registered geometry NAME "
                   f"or NAME-k<k> (default {','.join(spec.fast_topologies())})")
    p.add_argument("--noise", type=spec.comma_floats, default=spec.NOISE, help="caption noise levels (0,0.2,0.4,0.6,0.8)")
    p.add_argument("--k-values", type=spec.comma_ints, default=spec.K_VALUES, help="k sweep (1,2,4,8,16,32,64; '' none)")
    p.add_argument("--k-noise", type=spec.comma_floats, default=spec.K_NOISE, help="noise of the k sweep (0.4)")
    p.add_argument("--batch-sizes", type=spec.comma_ints, help="--sweep batch: its batch sizes (32,...,16384)")
    p.add_argument("--time-budget", type=float, help="seconds after which no new cell starts (gpu 540)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1)")
    p.add_argument("--docs-img", type=Path, help="also copy the plots here (docs/img/topologies-fast, --sweep batch: "
                   "docs/img/topologies-fast-batch, for the cpu profile's default output; none otherwise)")
    _common(p)
    return p


def resolve_fast_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the profile's defaults for unset flags; validate."""
    profile = spec.PROFILES[args.profile]
    for key in ("device", "hidden", "steps", "batch_size", "seeds", "max_seeds", "batch_sizes", "time_budget"):
        if getattr(args, key) is None:
            setattr(args, key, profile[key])
    sweep = spec.SWEEPS[args.sweep]
    args.negatives, args.train_per_class = sweep["negatives"], sweep["train_per_class"]
    args.train_pairs = spec.N_CLASSES * args.train_per_class
    default_output = args.output is None
    if default_output:
        base = DEFAULT_BATCH_OUTPUT if args.sweep == "batch" else DEFAULT_FAST_OUTPUT
        args.output = base.with_name(base.name + ("" if args.profile == "cpu" else "-gpu"))
    args.output = args.output.resolve()
    if args.docs_img is None and default_output and args.profile == "cpu":
        args.docs_img = REPO / "docs" / "img" / args.output.name
    if args.topologies is None:
        args.topologies = spec.BATCH_TOPOLOGIES if args.sweep == "batch" else tuple(spec.fast_topologies())
    args.topologies = tuple(dict.fromkeys(spec.ALIASES.get(t, t) for t in args.topologies))
    _check_noise_and_k(args)
    if args.seeds < 1 or args.steps < 2 or args.max_seeds < args.seeds:
        raise SystemExit(f"--seeds >= 1, --steps >= 2 and --max-seeds >= --seeds are required, got --seeds "
                         f"{args.seeds}, --steps {args.steps}, --max-seeds {args.max_seeds}")
    bad = [n for n in args.batch_sizes if not 2 <= n <= args.train_pairs]
    if args.sweep == "batch" and bad:
        raise SystemExit(f"--batch-sizes: each must be in [2, {args.train_pairs}] (the batch sweep's training pairs), "
                         f"got {bad}")
    return args


def main_fast(argv: Sequence[str]) -> int:
    """The fast mode; returns the exit status."""
    args = resolve_fast_args(build_fast_parser().parse_args(argv))
    check_report_args(args)
    from . import grid

    if args.dry_run:
        cells = grid.first_pass(args)
        for cell in cells:
            print(f"{cell.part}: {cell.topology} noise {cell.noise:g} batch {cell.batch_size} seeds "
                  f"{cell.seeds[0]}-{cell.seeds[-1]}")
        if args.sweep == "batch":
            print(f"# {len(cells)} cells, {args.train_pairs} training pairs, negatives {args.negatives}, into "
                  f"{args.output}")
            print("\n".join(grid.cost_plan(args, cells, args.output / "step_cost.json")))
        else:
            print(f"# {len(cells)} cells, then seed chunks until the paired half-width is <= "
                  f"{args.target:g} points (at most {args.max_seeds} seeds)")
        return 0
    if not args.report_only:
        import torch

        torch.set_num_threads(args.threads)
        grid.execute(args)
    command = shlex.join(["python", "benchmarks/topologies.py", "--mode", "fast", *argv])
    written = _report(args.output, command, args, profile=args.profile)
    print(f"report -> {', '.join(p.name for p in written) or 'nothing (no rows)'}")
    return 0


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
    """Entry point; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    mode, rest = split_mode(argv)
    return main_fast(rest) if mode == "fast" else main_full(rest)
