"""``manifold-align``: the command line (``train``, ``eval``, ``export`` and ``bench`` subcommands).

Examples
--------
``manifold-align train`` trains the default oblique model on the embedded digits data (CPU, minutes).
``manifold-align train --config configs/digits-sphere.yaml --set train.steps=500 --set seed=1``
``manifold-align train --output runs/a --resume latest`` continues ``runs/a`` from its newest checkpoint.
``manifold-align eval --checkpoint runs/a/checkpoints/step_00000400.pt``
``manifold-align eval --checkpoint runs/a --images /data/imagenet/val --classnames imagenet --templates openai``
``manifold-align export --checkpoint runs/a --output exported/a`` writes open_clip's local-dir / Hub layout.
``manifold-align bench speed --quick`` times manifold ops, the training step and the optimizer step against
their peers (``benchmarks/speed.py``); ``manifold-align bench topologies --dry-run --quick`` prints the
topology comparison's plan (``benchmarks/topologies.py``). The scripts live in the repository's
``benchmarks/`` folder, not in the installed package: run ``bench`` from a clone (any install of the package).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
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
    """The ``manifold-align`` argument parser with its ``train``, ``eval``, ``export`` and ``bench`` subcommands."""
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
        description="Evaluate a checkpoint (zero-shot top-1/top-5/mean per-class recall, retrieval R@1/5/10) on "
                    "the data of the configuration stored in it and its eval.datasets, or, with --images or "
                    "--pairs, on that set alone.",
    )
    evaluate.add_argument("--checkpoint", required=True, metavar="PATH",
                          help="checkpoint file, or a run folder (its newest checkpoint)")
    evaluate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override a key of the stored configuration (e.g. eval.batch_size=64)")
    evaluate.add_argument("--json", metavar="FILE", help="also write the metrics to this JSON file")
    _add_eval_set_args(evaluate)
    export = commands.add_parser(
        "export", help="save a checkpoint's model in open_clip's local-dir / Hugging Face Hub layout",
        description="Write the model of a checkpoint as a directory open_clip's layout (open_clip_config.json, "
                    "open_clip_model.safetensors): manifold_align.clip.create_model(DIR) loads it, and a k = 1 "
                    "cosine model also loads in stock open_clip (create_model_and_transforms('local-dir:DIR')).",
    )
    export.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="checkpoint file, or a run folder (its newest checkpoint)")
    export.add_argument("--output", required=True, metavar="DIR", help="the directory to write")
    _add_bench_parser(commands)
    return parser


def _add_eval_set_args(evaluate: argparse.ArgumentParser) -> None:
    data = evaluate.add_argument_group(
        "one evaluation set", "score only this set (it is eval.datasets.NAME with these keys)")
    choice = data.add_mutually_exclusive_group()
    choice.add_argument("--images", metavar="DIR|FILE.csv",
                        help="zero-shot classification on a class-per-folder tree (ImageFolder layout) or a "
                             "CSV/TSV of image path and label (e.g. an ImageNet validation folder with "
                             "--classnames imagenet)")
    choice.add_argument("--pairs", metavar="FILE.csv|SHARDS", help="retrieval on a CSV/TSV of image path and "
                        "caption, or webdataset shards")
    data.add_argument("--name", help="the set's name, prefix of its metrics (default: from the path)")
    data.add_argument("--classnames", metavar="imagenet|FILE",
                      help="class names, one per line in class order (default: folder names or labels)")
    data.add_argument("--templates", metavar="openai|simple|FILE",
                      help="prompt templates, open_clip's sets or a file, one per line with {} (default: openai)")
    # checked with the configuration (eval.prototype), whose registry owns the names
    data.add_argument("--prototype", metavar="geometry|whole",
                      help="class prototypes: the model's geometry (default) or clip_benchmark's whole vector")
    for option, column in (("--csv-img-key", "image path"), ("--csv-label-key", "label"),
                           ("--csv-caption-key", "caption")):
        data.add_argument(option, metavar="COLUMN", help=f"CSV column of the {column}")
    data.add_argument("--csv-separator", metavar="SEP", help="CSV separator (default: tab for .tsv, else comma)")


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


def _is_rank0() -> bool:
    # before the process group exists: torchrun's variable (every process of a job reads the same files,
    # one of them says so)
    return os.environ.get("RANK", "0") == "0"


def _say(text: str) -> None:
    if _is_rank0():
        print(text, file=sys.stderr, flush=True)


def _resume_state(spec: str, output: str | None) -> tuple[Path | None, dict | None, Path]:
    """``(checkpoint, state, run folder)`` for ``--resume``; ``latest`` passes over damaged checkpoints."""
    from .checkpoint import load_checkpoint, load_newest_intact

    checkpoint, run = resolve_checkpoint(spec, output)
    if checkpoint is None:
        _say(f"--resume latest: no checkpoint in {run} yet; starting from scratch")
        return None, None, run
    if spec != "latest":
        return checkpoint, load_checkpoint(checkpoint), run

    def skipped(path: Path, reason: str) -> None:
        _say(f"--resume latest: skipping {path.name}: {reason}; renamed to {path.name}.damaged")

    found = load_newest_intact(checkpoint.parent, skipped=skipped)
    if found is None:
        _say(f"--resume latest: no intact checkpoint left in {checkpoint.parent}; starting from scratch")
        return None, None, run
    return found[0], found[1], run


def _cmd_train(args: argparse.Namespace) -> int:
    from .trainer import train

    checkpoint, state, output = None, None, args.output
    if args.resume:
        checkpoint, state, run = _resume_state(args.resume, args.output)
        output = str(run)
    cfg = _load_run_config(args, state)
    train(cfg, output_dir=output, resume_state=state, resume_path=checkpoint)
    return 0


def _eval_config(args: argparse.Namespace, stored: dict[str, Any]) -> tuple[RunConfig, bool]:
    """The configuration ``eval`` runs with, and whether it scores the run's own data (not with --images/--pairs)."""
    from .config import apply_overrides, config_from_dict
    from .eval_sets import cli_eval_set, default_set_name

    values = apply_overrides(stored, args.overrides)
    if args.prototype:
        values.setdefault("eval", {})["prototype"] = args.prototype
    if not (args.images or args.pairs):
        return config_from_dict(values), True
    section = values.setdefault("eval", {})
    # this set alone: the stored sets are not scored (and their files need not exist here)
    section["datasets"] = {args.name or default_set_name(args.images or args.pairs): cli_eval_set(args)}
    return config_from_dict(values), False


def _cmd_eval(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .evaluation import evaluate_checkpoint, format_metrics

    set_options = ("name", "classnames", "templates", "csv_img_key", "csv_label_key", "csv_caption_key",
                   "csv_separator")
    stray = [f"--{o.replace('_', '-')}" for o in set_options if getattr(args, o) is not None]
    if stray and not (args.images or args.pairs):
        raise SystemExit(f"manifold-align eval: {', '.join(stray)} describe a set given by --images or --pairs")
    checkpoint, _ = resolve_checkpoint(args.checkpoint, None)
    state = load_checkpoint(checkpoint)
    cfg, own_data = _eval_config(args, state["config"])
    bad: dict[str, list[str]] = {}
    metrics = evaluate_checkpoint(cfg, state, own_data=own_data, bad=bad)
    print(f"checkpoint {checkpoint} (step {state['step']})")
    print(format_metrics(metrics))
    for name, items in bad.items():
        if items:
            shown = ", ".join(items[:10]) + (f" and {len(items) - 10} more" if len(items) > 10 else "")
            print(f"  {name or 'held-out data'}: {len(items)} bad item(s) left out: {shown}")
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import torch

    from manifold_align.clip import save_pretrained

    from .builders import build_model
    from .checkpoint import load_checkpoint

    checkpoint, _ = resolve_checkpoint(args.checkpoint, None)
    state = load_checkpoint(checkpoint)
    cfg = load_config(None, [], base=state["config"])
    model, _, _ = build_model(cfg, torch.device("cpu"))
    model.load_state_dict(state["model"])
    directory = save_pretrained(model, args.output, cfg.model.name)
    print(f"exported {checkpoint} (step {state['step']}) to {directory}/")
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
    # imports torch: not before parsing
    from .checkpoint import DamagedCheckpointError, RunFolderError, UnsafeCheckpointError
    from .preemption import PREEMPTED_EXIT_CODE, Preempted

    try:
        if args.command == "train":
            return _cmd_train(args)
        if args.command == "export":
            return _cmd_export(args)
        return _cmd_eval(args)
    except ConfigError as exc:
        print(f"manifold-align {args.command}: configuration error: {exc}", file=sys.stderr)
        return 2
    except (RunFolderError, UnsafeCheckpointError, DamagedCheckpointError) as exc:
        print(f"manifold-align {args.command}: {exc}", file=sys.stderr)
        return 2
    except Preempted as stop:
        _say(f"manifold-align {args.command}: {stop}")
        return PREEMPTED_EXIT_CODE
    except Exception as exc:
        status = _report_failure(args.command, exc)
        if status is None:
            raise
        return status


def _report_failure(command: str, exc: Exception) -> int | None:
    """Say why a run failed, once per job; return the exit status, or None to let Python print the traceback.

    One process: errors with a known cause in one line, others as usual. In a torchrun job the rank that
    failed first (``manifold_align_train.faults``) prints the traceback, then the line naming it, and writes the
    line to torchrun's error file; the ranks that failed because of it print nothing and wait for torchrun to
    stop them, so that torchrun, too, names the first rank as the root cause.
    """
    from .checkpoint import CheckpointSpaceError
    from .faults import LoaderWorkerDied, write_elastic_error_file

    report = getattr(exc, "failure_report", None)
    known = isinstance(exc, (CheckpointSpaceError, LoaderWorkerDied))
    if report is None:
        if not known:
            return None
        print(f"manifold-align {command}: {exc}", file=sys.stderr, flush=True)
        return 1
    if not report.first:
        if os.environ.get("TORCHELASTIC_RUN_ID"):
            time.sleep(10)  # torchrun terminates this process once it sees the first rank's exit
        return 1
    details = "" if known else traceback.format_exc()
    line = f"manifold-align {command}: {report.line(exc)}"
    sys.stderr.write(details)
    print(line, file=sys.stderr, flush=True)
    write_elastic_error_file(line, details)
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
