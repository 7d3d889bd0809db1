"""The full mode of the topology benchmark across processes (``benchmarks/topology/full.py``, ``results.py``).

Real processes throughout: rows appended by many processes at once are all there, once; a run claimed by
one process is left alone by another; two shards started at once into one folder give the rows of one
process; a finished run folder without a row is adopted, not retrained; a user's CSV data runs through
``--config``; ``--shard`` and ``--noise`` are checked before any work.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from labelled_digits import write_digit_files

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"
if str(BENCHMARKS) not in sys.path:  # as `python benchmarks/topologies.py` has it
    sys.path.insert(0, str(BENCHMARKS))

from topology import cli, full, results, spec, stats  # noqa: E402

#: the results of a run: every column but where and how long (results.INCIDENTAL)
RESULT_COLUMNS = ("zero_shot_top1", "zero_shot_top5", "image_to_text_R@1", "text_to_image_R@1", "final_temperature",
                  "final_loss", "gap", "positive_similarity", "negative_similarity")


def _row(topo: str, noise: float, seed: int, acc: float, **extra) -> dict:
    t = spec.topology(topo)
    return {"mode": "full", "topology": t.name, "geometry": t.geometry, "k": t.n_tokens, "d": t.token_dim,
            "temperature": t.temperature_label(), "noise": noise, "seed": seed, "dataset": "digit-pairs",
            "model": "digits-fast", "steps": 150, "batch_size": 128, "zero_shot_top1": acc, "retrieval_R@1": acc,
            "final_temperature": 10.0, "gap": 0.4, "gap_normalized": 0.4 / t.blocks, "run_dir": "x",
            "temperature_trajectory": [[5, 14.0], [10, 12.0]], "gap_trajectory": [[5, 0.1], [10, 0.2]], **extra}


def _args(argv=()):
    return cli.resolve_args(cli.build_parser().parse_args(list(argv)))


# --------------------------------------------------------------------------------------------------
# rows appended at once by many processes
# --------------------------------------------------------------------------------------------------
WRITERS, ROWS_EACH = 6, 8


def _writer(folder: str, index: int, barrier, outcomes) -> None:
    barrier.wait()  # all at once
    for seed in range(ROWS_EACH):
        # each writer's geometry value is a column the file has not seen: the rewrite path, the widest window
        extra = {f"value_{index}": 0.5} if seed == 0 else {}
        full.record(Path(folder), [_row("sphere-none", 0.0, 100 * index + seed, 0.5, **extra)])
    try:  # every writer tries to add the same run: one may
        full.record(Path(folder), [_row("oblique-none", 0.0, 0, 0.7)])
        outcomes.put("written")
    except RuntimeError:
        outcomes.put("refused")


def test_concurrent_writers_lose_no_row_and_write_no_run_twice(tmp_path):
    ctx = multiprocessing.get_context("fork")
    barrier, outcomes = ctx.Barrier(WRITERS), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), i, barrier, outcomes)) for i in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    assert sorted(outcomes.get(timeout=10) for _ in procs) == ["refused"] * (WRITERS - 1) + ["written"]
    rows = results.read_csv(tmp_path / "results.csv")
    expected = {(100 * i + s) for i in range(WRITERS) for s in range(ROWS_EACH)}
    assert sorted(r["seed"] for r in rows if r["topology"] == "sphere-none") == sorted(expected)
    assert len(rows) == WRITERS * ROWS_EACH + 1
    assert not results.duplicates(rows)
    # every writer's value column is there, filled in its own first row only
    for i in range(WRITERS):
        assert [r["seed"] for r in rows if r.get(f"value_{i}") == 0.5] == [100 * i]
    points = results.read_csv(tmp_path / "trajectories.csv")
    assert len(points) == 2 * len(rows) and not any(results.duplicates([{**p, "seed": (p["seed"], p["step"])}
                                                                         for p in points]))


def test_the_report_reads_trajectories_csv_and_an_older_folders_results_json(tmp_path):
    import json

    old = _row("sphere-learnable", 0.0, 0, 0.5)
    (tmp_path / "results.json").write_text(json.dumps([old]))  # as the full mode wrote it before
    full.record(tmp_path, [{k: v for k, v in old.items()}])
    full.record(tmp_path, [_row("sphere-learnable", 0.0, 1, 0.6)])
    rows, points, _ = results.load(tmp_path)
    assert [r["seed"] for r in rows] == [0, 1]
    # seed 0's points are in both files and read once; seed 1's only in trajectories.csv
    assert sorted((p["seed"], p["step"], p["scale"]) for p in points) == [(0, 5, 14.0), (0, 10, 12.0),
                                                                         (1, 5, 14.0), (1, 10, 12.0)]
    assert {p["mode"] for p in points} == {"full"}


# --------------------------------------------------------------------------------------------------
# the claim
# --------------------------------------------------------------------------------------------------
def _hold_claim(run_dir: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(BENCHMARKS)!r})
        from pathlib import Path
        from topology import full
        with full.claim(Path({str(run_dir)!r})) as mine:
            print("held" if mine else "not held", flush=True)
            time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_run_claimed_by_another_process_is_left_to_it(tmp_path, capsys):
    args = _args(["--topologies", "sphere-none", "--noise", "0", "--seeds", "1", "--k-values", "", "--steps", "2",
                  "--output", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs")])
    run = full.first_pass(args)[0]
    setting = full.Setting.of(full.run_config(args))
    run_dir = tmp_path / "runs" / run.name
    holder = _hold_claim(run_dir)
    try:
        assert full.claimed(run_dir)
        assert full.run_one(run, args, tmp_path / "runs", tmp_path / "out", setting)[1] == "claimed elsewhere"
        # the grid leaves it to its holder: nothing trained, no row, no failure
        assert full.execute(args, tmp_path / "runs", tmp_path / "out", setting) == []
        assert "1 runs planned, 0 with a row; shard 0/1: 0 to run" in capsys.readouterr().out
        assert not (run_dir / "train.log").exists() and not (tmp_path / "out" / "results.csv").exists()
        assert (run_dir / full.CLAIM).read_text().split()[1] == str(holder.pid)
    finally:
        holder.kill()
        holder.wait()
    assert not full.claimed(run_dir)  # a killed holder's claim is gone with it
    with full.claim(run_dir) as mine:
        assert mine


# --------------------------------------------------------------------------------------------------
# shards and the power extension
# --------------------------------------------------------------------------------------------------
def test_shards_partition_the_plan_and_share_out_every_cell():
    args = _args(["--seeds", "8"])
    runs = full.first_pass(args)
    parts = [[r.name for r in runs if full.Shard(i, 4).owns(r)] for i in range(4)]
    assert sorted(sum(parts, [])) == sorted(r.name for r in runs)  # disjoint, and all of the plan
    cells = {(r.topology.name, r.noise) for r in runs}
    for cell in cells:  # 8 seeds of a cell: 2 in each of 4 parts
        assert [sum(1 for n in part if n.startswith(f"{cell[0]}_noise{cell[1]:.2f}_")) for part in parts] == [2] * 4


def test_the_partition_does_not_depend_on_the_process():
    """Not Python's salted hash(): a process with another hash seed than this one's gives the same parts."""
    code = ("import sys; sys.path.insert(0, %r); from topology import full, spec; "
            "print([full.shard_of(full.RunSpec(t, n, 0), 7) for t in spec.TOPOLOGIES.values() for n in (0.0, 0.4)])"
            % str(BENCHMARKS))
    here = [full.shard_of(full.RunSpec(t, n, 0), 7) for t in spec.TOPOLOGIES.values() for n in (0.0, 0.4)]
    seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout
    assert eval(there) == here and len(set(here)) == 7


@pytest.mark.parametrize("value", ["2/2", "-1/2", "1", "a/b", "0/0", "1/2/3"])
def test_a_bad_shard_is_refused_naming_the_argument(value, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args([f"--shard={value}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --shard: expected I/N with 0 <= I < N (0-based" in err and f"got {value!r}" in err


def test_a_missing_launcher_is_refused(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--launcher", "no-such-launcher-x --nproc-per-node 2"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --launcher: expected a command that runs `manifold_align_train`; 'no-such-launcher-x' is not" in err


def test_power_extension_adds_seeds_to_wide_cells_and_their_reference():
    args = _args(["--topologies", "sphere-learnable,oblique-none,sphere-none", "--noise", "0,0.4", "--seeds", "3",
                  "--max-seeds", "9", "--k-values", "4,16", "--k-noise", "0.4"])
    acc = {"sphere-learnable": 0.5, "oblique-none": 0.55, "sphere-none": 0.3, "oblique-none-k4": 0.5}
    spread = {"oblique-none": 0.05, "oblique-none-k4": 0.001}  # paired noise of +-5 points: wide; +-0.1: tight
    rows = [results.normalize(_row(t, n, s, a + spread.get(t, 0.0) * (-1) ** s * (s % 2 + 1)))
            for t, a in acc.items() for n in (0.0, 0.4) for s in range(3)]
    # oblique-none - sphere-learnable at seeds 0-2: +5 -10 +5 points around +5 -> half-width 21 points > 2
    diffs = [100 * d for d in stats.paired(rows, "oblique-none", "sphere-learnable", 0.0)]
    assert stats.t_interval(diffs)[1] > 2.0
    extra = {(r.topology.name, r.noise, r.seed) for r in full.power_runs(rows, args)}
    wide = {(t, n, s) for t in ("oblique-none", "sphere-learnable") for n in (0.0, 0.4) for s in (3, 4, 5)}
    # k = 4 against the k sweep's base oblique-none at 0.4: -5, +10, -5 points (oblique-none's own spread): wide
    k4 = {(t, 0.4, s) for t in ("oblique-none-k4", "oblique-none") for s in (3, 4, 5)}
    assert extra == wide | k4  # sphere-none - sphere-learnable is exactly -20 points: half-width 0, done
    more = [results.normalize(_row(t, n, s, acc[t] + spread.get(t, 0.0) * (-1) ** s * (s % 2 + 1)))
            for (t, n, s) in extra]
    extra = {(r.topology.name, r.noise, r.seed) for r in full.power_runs(rows + more, args)}
    assert {s for _, _, s in extra} == {6, 7, 8}  # the next chunk, never beyond --max-seeds 9
    assert full.power_runs(rows, _args(["--seeds", "3"])) == []  # --max-seeds defaults to --seeds: no extension


# --------------------------------------------------------------------------------------------------
# user data: a CSV of image paths and captions, a CSV of labelled images for zero-shot
# --------------------------------------------------------------------------------------------------
def _csv_config(root: Path, n: int = 48) -> Path:
    files = write_digit_files(root)
    for path in (files.csv, files.pairs):  # the first n rows: enough to train and score, and quick
        lines = path.read_text().splitlines()
        path.write_text("\n".join(lines[:n + 1]) + "\n")
    config = root / "pairs.yaml"
    config.write_text(textwrap.dedent(f"""\
        data: {{dataset: csv, train_data: {files.pairs}, val_data: {files.pairs}, csv_separator: ",", batch_size: 16}}
        model: {{name: digits-tiny}}
        train: {{device: cpu, steps: 2, warmup: 0}}
        eval:
          batch_size: 64
          datasets:
            digits: {{path: {files.csv}, classnames: {files.classnames}, templates: {files.templates}}}
        """))
    return config


def test_caption_noise_is_refused_for_data_it_does_not_apply_to(tmp_path):
    config = _csv_config(tmp_path)
    with pytest.raises(SystemExit, match=r"^--noise/--k-noise: caption noise applies to the embedded datasets "
                                         r"\(digits, digit-pairs, synthetic\), not to data.dataset='csv'.*got --noise 0.2"):
        cli.main(["--config", str(config), "--noise", "0.2", "--dry-run"])


def _bench(*argv: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, str(BENCHMARKS / "topologies.py"), *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_shards_at_once_give_the_rows_of_one_process_on_csv_data(tmp_path):
    config = _csv_config(tmp_path / "data")
    plan = ["--config", str(config), "--topologies", "sphere-learnable,oblique-none", "--seeds", "2",
            "--k-values", "", "--jobs", "1"]
    shared = ["--output", str(tmp_path / "shared"), "--runs-dir", str(tmp_path / "shared-runs")]
    shards = [_bench(*plan, *shared, "--shard", f"{i}/2") for i in range(2)]  # at once, one folder
    logs = [p.communicate(timeout=600)[0] for p in shards]
    assert [p.returncode for p in shards] == [0, 0], logs
    for log in logs:  # each part trained its own two runs (each cell's seeds 0 and 1 go to different parts)
        assert log.count(": trained") == 2, log
    one = _bench(*plan, "--output", str(tmp_path / "one"), "--runs-dir", str(tmp_path / "one-runs"), "--jobs", "2")
    log = one.communicate(timeout=600)[0]
    assert one.returncode == 0, log

    union, alone = (results.read_csv(tmp_path / name / "results.csv") for name in ("shared", "one"))
    assert not results.duplicates(union) and len(union) == 4
    by_key = {results.run_key(r): r for r in alone}
    assert {results.run_key(r) for r in union} == set(by_key)
    for row in union:  # training at one thread is deterministic: the same numbers, not just the same runs
        assert {c: row[c] for c in RESULT_COLUMNS} == {c: by_key[results.run_key(row)][c] for c in RESULT_COLUMNS}
        assert row["dataset"] == "csv" and row["data"].endswith("pairs.csv") and row["zero_shot_set"] == "digits"
        assert row["retrieval_set"] == "" and 0.0 <= row["zero_shot_top1"] <= 1.0 and row["noise"] == 0.0
    trajectories = results.read_csv(tmp_path / "shared" / "trajectories.csv")
    assert len(trajectories) == len(results.read_csv(tmp_path / "one" / "trajectories.csv")) > 0

    report = _bench("--report-only", "--output", str(tmp_path / "shared"))
    assert report.wait(timeout=300) == 0, report.stdout.read()
    md = (tmp_path / "shared" / "results.md").read_text()
    assert (f"task csv data {tmp_path / 'data' / 'pairs.csv'} (its captions as they are: caption noise does not "
            "apply), zero-shot on eval set digits, towers digits-tiny, 2 steps, batch 16, 2 seeds per point") in md
    assert "| oblique-none |" in md and "| sphere-learnable |" in md


@pytest.mark.slow
def test_a_finished_run_folder_without_a_row_is_adopted_not_retrained(tmp_path, capsys):
    from manifold_align_train import cli as train_cli

    argv = ["--topologies", "sphere-none", "--noise", "0", "--seeds", "1", "--k-values", "", "--steps", "2",
            "--batch-size", "16", "--set", "data.dataset=synthetic", "--set", "data.num_samples=32",
            "--set", "model.name=digits-tiny", "--output", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs")]
    args = _args(argv)
    (run,) = full.first_pass(args)
    run_dir = tmp_path / "runs" / run.name
    # the run made by hand (as an earlier grid would have left it): the same command, no row anywhere
    command = full.train_command(run, args, run_dir, "new")
    assert train_cli.main(command[command.index("train"):]) == 0
    stamp = (run_dir / "summary.json").stat().st_mtime_ns
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert ": adopted" in capsys.readouterr().out
    assert (run_dir / "summary.json").stat().st_mtime_ns == stamp and not (run_dir / "train.log").exists()
    (row,) = results.read_csv(tmp_path / "out" / "results.csv")
    assert (row["topology"], row["steps"], row["dataset"]) == ("sphere-none", 2, "synthetic")
    # the same folder under another budget is not this plan's run: refused, not adopted
    capsys.readouterr()
    assert cli.main([*argv[:-4], "--steps", "3", "--output", str(tmp_path / "out3"), "--runs-dir", str(tmp_path / "runs")]) == 1
    out = capsys.readouterr()
    assert "holds a finished run of another setting" in out.out and "(2 steps)" in out.out
    assert not (tmp_path / "out3" / "results.csv").exists()


@pytest.mark.slow
def test_a_run_under_torchrun_through_the_launcher(tmp_path):
    """``--launcher`` runs each run as a two-process gloo job; its row is recorded like any other."""
    import json

    launcher = f"{sys.executable} -m torch.distributed.run --standalone --nproc-per-node 2 -m manifold_align_train"
    proc = _bench("--topologies", "sphere-learnable", "--noise", "0", "--seeds", "1", "--k-values", "", "--steps", "2",
                  "--batch-size", "16", "--set", "data.dataset=synthetic", "--set", "data.num_samples=32",
                  "--set", "model.name=digits-tiny", "--output", str(tmp_path / "out"), "--runs-dir",
                  str(tmp_path / "runs"), "--launcher", launcher)
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, log
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["world_size"] == 2
    assert (run_dir / "command.txt").read_text().startswith(launcher + " train --output")
    (row,) = results.read_csv(tmp_path / "out" / "results.csv")
    assert (row["topology"], row["steps"], row["batch_size"]) == ("sphere-learnable", 2, 16)
