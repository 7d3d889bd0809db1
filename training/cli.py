"""``manifold-align``: the command line (``train``, ``eval`` and ``bench`` subcommands).

Examples
--------
``manifold-align train`` trains the default oblique model on the embedded digits data (CPU, minutes).
``manifold-align train --config configs/digits-sphere.yaml --set train.steps=500 --set seed=1``
``manifold-align train --output runs/a --resume latest`` continues ``runs/a`` from its newest checkpoint.
``manifold-align eval --checkpoint runs/a/checkpoints/step_00000400.pt``
``manifold-align bench speed --quick`` times manifold ops, the training step and the optimizer step against
their peers (``benchmarks/speed.py``); ``manifold-align bench topologies --dry-run --quick`` prints the
topology comparison's plan (``benchmarks/topologies.py``). The scripts live in the repository's
``benchmarks/`` folder, not in the installed package: run ``bench`` from a clone (any install of the package).
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path
from typing import Any, Sequence

from .config import ConfigError, RunConfig, load_config

__all__ = ["build_parser", "main"]

_RUNS_ROOT = Path("runs")
# benchmarks/ is not part of the installed package: it is found next to training/ in an editable install,
# else in the current directory (a clone, with the package installed from it or from an index)
_BENCHMARKS_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
_BENCHMARK_SCRIPTS = {
    "speed": ("speed.py", "manifold ops, training step and optimizer step against their peers, one report"),
    "topologies": ("topologies.py", "train the same towers under each embedding topology and compare them"),
}


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML configuration (default: the "
                        "built-in defaults, identical to configs/digits-oblique.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key, dotted, value parsed as YAML; repeatable "
                             "(e.g. --set model.geometry=cosine --set train.steps=500)")


def build_parser() -> argparse.ArgumentParser:
    """The ``manifold-align`` argument parser with its ``train``, ``eval`` and ``bench`` subcommands."""
    parser = argparse.ArgumentParser(
        prog="manifold-align",
        description="Geometry-aware contrastive (CLIP-style) training on the oblique manifold OB(d, k).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    train = commands.add_parser(
        "train", help="train a model (default: oblique OB(32, 16) on the embedded digits, CPU)",
        description="Train a model. Distributed: launch with torchrun, e.g. "
                    "`torchrun --nproc_per_node 8 -m manifold_align_train train --config ...` (see docs/training.md).",
    )
    _add_config_args(train)
    train.add_argument("--output", metavar="DIR", help="run folder (default: runs/<run name or timestamp>)")
    train.add_argument("--resume", metavar="latest|PATH",
                       help="continue from a checkpoint: 'latest' (newest checkpoint of --output, or of the "
                            "newest run under runs/), a checkpoint file, or a run folder")
    evaluate = commands.add_parser(
        "eval", help="zero-shot and retrieval metrics of a checkpoint",
        description="Evaluate a checkpoint (zero-shot top-1/top-5, retrieval R@1/5/10) on the data of the "
                    "configuration stored in it.",
    )
    evaluate.add_argument("--checkpoint", required=True, metavar="PATH",
                          help="checkpoint file, or a run folder (its newest checkpoint)")
    evaluate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override a key of the stored configuration (e.g. eval.batch_size=64)")
    evaluate.add_argument("--json", metavar="FILE", help="also write the metrics to this JSON file")
    _add_bench_parser(commands)
    return parser


def _add_bench_parser(commands) -> None:
    bench = commands.add_parser(
        "bench", help="run a benchmark script of the source checkout (speed, topologies)",
        description="Run a benchmark of the source checkout's benchmarks/ folder. The arguments after the "
                    "benchmark's name go to its script; `manifold-align bench NAME --help` lists them.",
    )
    scripts = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, (script, summary) in _BENCHMARK_SCRIPTS.items():
        # no help of its own: --help and every other argument go to the script's parser
        scripts.add_parser(name, help=f"{summary} (benchmarks/{script})", add_help=False)


def _newest_run(root: Path) -> Path | None:
    from .checkpoint import CHECKPOINT_DIR, find_latest_checkpoint

    runs = [p for p in root.glob("*") if find_latest_checkpoint(p / CHECKPOINT_DIR) is not None]
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def resolve_checkpoint(spec: str, output: str | None) -> tuple[Path | None, Path | None]:
    """Turn ``--resume``/``--checkpoint`` into ``(checkpoint file or None, run folder)``.

    ``latest`` looks in ``output`` (or the newest run under ``runs/``); a run folder means its newest
    checkpoint; a file is taken as is. ``latest`` without any checkpoint yet returns ``(None, output)``
    so that a preemptible job can always be launched with ``--resume latest``.
    """
    from .checkpoint import CHECKPOINT_DIR, find_latest_checkpoint

    if spec == "latest":
        run = Path(output) if output else _newest_run(_RUNS_ROOT)
        if run is None:
            raise SystemExit(f"--resume latest: no run with checkpoints under {_RUNS_ROOT}/; pass --output DIR")
        return find_latest_checkpoint(run / CHECKPOINT_DIR), run
    path = Path(spec)
    if path.is_dir():
        found = find_latest_checkpoint(path / CHECKPOINT_DIR) or find_latest_checkpoint(path)
        if found is None:
            raise SystemExit(f"no checkpoint found in {path}")
        path = found
    if not path.is_file():
        raise SystemExit(f"checkpoint not found: {path}")
    run = Path(output) if output else path.parent.parent
    return path, run


def _load_run_config(args: argparse.Namespace, state: dict[str, Any] | None) -> RunConfig:
    # A resumed run continues with the configuration it was started with, unless a file is given;
    # --set still applies (e.g. more train.steps).
    base = state["config"] if state is not None and args.config is None else None
    return load_config(args.config, args.overrides, base=base)


def _cmd_train(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .trainer import train

    checkpoint, state, output = None, None, args.output
    if args.resume:
        checkpoint, run = resolve_checkpoint(args.resume, args.output)
        output = str(run)
        if checkpoint is not None:
            state = load_checkpoint(checkpoint)
        else:
            print(f"--resume latest: no checkpoint in {run} yet; starting from scratch", file=sys.stderr)
    cfg = _load_run_config(args, state)
    train(cfg, output_dir=output, resume_state=state, resume_path=checkpoint)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .evaluation import evaluate_checkpoint, format_metrics

    checkpoint, _ = resolve_checkpoint(args.checkpoint, None)
    state = load_checkpoint(checkpoint)
    cfg = load_config(None, args.overrides, base=state["config"])
    metrics = evaluate_checkpoint(cfg, state)
    print(f"checkpoint {checkpoint} (step {state['step']})")
    print(format_metrics(metrics))
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


def benchmark_script(name: str) -> Path:
    """Path of the benchmark script ``name`` (a key of ``_BENCHMARK_SCRIPTS``) in the source checkout.

    Looked up next to the package's source folder (an editable install), then in ``./benchmarks``.

    Raises
    ------
    SystemExit
        When neither holds the script (an installed package, run outside a clone).
    """
    script = _BENCHMARK_SCRIPTS[name][0]
    for folder in (_BENCHMARKS_DIR, Path.cwd() / "benchmarks"):
        if (folder / script).is_file():
            return folder / script
    raise SystemExit(f"manifold-align bench {name}: benchmarks/{script} not found next to the package or in "
                     f"{Path.cwd()}; benchmarks live in the source checkout: clone the repo and run "
                     f"`manifold-align bench {name}` (or `python benchmarks/{script}`) from its top folder")


def _cmd_bench(name: str, argv: list[str]) -> int:
    """Run ``benchmarks/<script>`` as ``python benchmarks/<script> ARGS`` would, in this process.

    The script's code runs unchanged as the ``__main__`` module, with its folder first on ``sys.path`` (its
    sibling imports: ``machine_info``, the ``topology`` package) and ``sys.argv`` set to this command's name and
    ``argv``, so that its usage and help say ``manifold-align bench NAME``. (``runpy.run_path`` would set
    ``sys.argv[0]`` to the script's path.) Returns its exit status.
    """
    script = benchmark_script(name)
    code = compile(script.read_bytes(), str(script), "exec")
    module = types.ModuleType("__main__")
    module.__file__ = str(script)
    saved = sys.argv, list(sys.path), sys.modules.get("__main__")
    sys.argv = [f"manifold-align bench {name}", *argv]
    sys.path.insert(0, str(script.parent))
    sys.modules["__main__"] = module  # dataclasses look their module up while the script runs
    try:
        exec(code, module.__dict__)
    except SystemExit as exc:  # the script's sys.exit(main()), or argparse's exit
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        raise  # a message: printed by the interpreter with exit status 1, as when the script runs alone
    finally:
        sys.argv, sys.path[:] = saved[0], saved[1]
        if saved[2] is None:
            sys.modules.pop("__main__", None)
        else:
            sys.modules["__main__"] = saved[2]
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``manifold-align`` console script; returns the exit status."""
    parser = build_parser()
    # `bench NAME ...` hands everything after NAME to the script, --help included
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        return _cmd_bench(args.benchmark, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from .checkpoint import RunFolderError, UnsafeCheckpointError  # imports torch: not before parsing

    try:
        if args.command == "train":
            return _cmd_train(args)
        return _cmd_eval(args)
    except ConfigError as exc:
        print(f"manifold-align {args.command}: configuration error: {exc}", file=sys.stderr)
        return 2
    except (RunFolderError, UnsafeCheckpointError) as exc:
        print(f"manifold-align {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
