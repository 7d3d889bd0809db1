"""Tests of ``manifold-align bench``: help, running benchmarks/*.py unpatched, the missing-checkout error.

Only help, dry runs and command construction, plus one smoke run of ``bench_gpu.py`` on the CPU (its
small ``--quick`` sizes), so that the GPU script is exercised where CI runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import importlib

import pytest
import torch

from manifold_align_train import cli

REPO = Path(__file__).resolve().parent.parent


def _run_main(argv, capsys) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_bench_help_lists_benchmarks(capsys):
    code, out, _ = _run_main(["bench", "--help"], capsys)
    assert code == 0
    assert "usage: manifold-align bench" in out
    assert "speed" in out and "topologies" in out


def test_top_level_help_lists_bench(capsys):
    code, out, _ = _run_main(["--help"], capsys)
    assert code == 0
    assert "bench" in out


def test_bench_speed_help_is_the_scripts(capsys):
    code, out, _ = _run_main(["bench", "speed", "--help"], capsys)
    assert code == 0
    assert "usage: manifold-align bench speed" in out
    assert "--quick" in out and "--only" in out


def test_bench_topologies_help_is_the_scripts(capsys):
    code, out, _ = _run_main(["bench", "topologies", "--help"], capsys)
    assert code == 0
    assert "usage: manifold-align bench topologies" in out
    assert "--dry-run" in out and "--quick" in out


def test_bench_topologies_fast_mode_help_is_the_scripts(capsys):
    code, out, _ = _run_main(["bench", "topologies", "--mode", "fast", "--help"], capsys)
    assert code == 0
    assert "usage: manifold-align bench topologies --mode fast" in out
    assert "--profile" in out and "--report-only" in out


def test_bench_runs_the_script_unpatched_and_restores_the_process(capsys, monkeypatch, tmp_path):
    """The script runs as `python benchmarks/<script>` would (as __main__, sys.argv = the command's name and the
    arguments), with nothing of it replaced; sys.argv and sys.path are as before afterwards."""
    script = tmp_path / "benchmarks" / "echo.py"
    script.parent.mkdir()
    script.write_text("import sys\nprint(__name__, sys.argv)\nsys.exit(3)\n")
    monkeypatch.setattr(cli, "_BENCHMARKS_DIR", script.parent)
    monkeypatch.setitem(cli._BENCHMARK_SCRIPTS, "echo", ("echo.py", "test script"))
    argv, path = list(sys.argv), list(sys.path)
    code, out, _ = _run_main(["bench", "echo", "--flag", "x"], capsys)
    assert code == 3
    assert out.strip() == "__main__ ['manifold-align bench echo', '--flag', 'x']"
    assert (sys.argv, sys.path) == (argv, path)


def test_bench_without_benchmark_is_an_error(capsys):
    code, _, err = _run_main(["bench"], capsys)
    assert code == 2
    assert "BENCHMARK" in err


def test_bench_topologies_dry_run_quick_prints_the_plan(capsys, tmp_path):
    code, out, _ = _run_main(["bench", "topologies", "--dry-run", "--quick", "--runs-dir", str(tmp_path)], capsys)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[-1].startswith("# ") and lines[-1].endswith(" runs")
    n_runs = int(lines[-1].split()[1])
    assert n_runs > 0
    plans = [line for line in lines if line.startswith("# ") and line.endswith("[new]")]
    assert len(plans) == n_runs
    assert "train.steps=20" in out  # the quick budget
    assert not any(tmp_path.iterdir())  # a dry run trains nothing and creates no run folder


def test_bench_speed_dry_run_quick_prints_the_commands(capsys):
    code, out, err = _run_main(["bench", "speed", "--quick", "--dry-run"], capsys)
    assert code == 0
    assert "python benchmarks/bench_manifold.py --quick" in out
    assert "python benchmarks/bench_optim.py --quick" in out
    assert "benchmarks/bench_model.py" in out
    assert "--out" not in out and "--no-write" not in out  # scratch output flags are not shown
    assert "GPU" in err  # says whether there is a GPU
    assert ("benchmarks/bench_gpu.py --quick" in out) == torch.cuda.is_available()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_bench_speed_refuses_the_gpu_benchmark_without_cuda(capsys):
    with pytest.raises(SystemExit, match="gpu needs a CUDA device"):
        cli.main(["bench", "speed", "--only", "gpu", "--dry-run"])


def test_bench_gpu_script_runs_on_cpu_and_prints_every_table(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # the scripts import their siblings
    bench_gpu = importlib.import_module("bench_gpu")
    assert bench_gpu.main(["--device", "cpu", "--quick", "--no-write"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| B |")
            and not line.startswith("| op |")]
    assert len(rows) == 2 * 3 + 2 + 3  # logits: 2 batches x 3 cases; loss: 2 batches; manifold: 3 ops
    assert "nan" not in out.lower()


def test_bench_speed_rejects_unknown_benchmark(capsys):
    with pytest.raises(SystemExit, match="unknown benchmark"):
        cli.main(["bench", "speed", "--only", "nope", "--dry-run"])


@pytest.mark.parametrize("name", ["speed", "topologies"])
def test_missing_checkout_gives_a_clear_error(monkeypatch, tmp_path, name):
    monkeypatch.setattr(cli, "_BENCHMARKS_DIR", tmp_path / "site-packages" / "benchmarks")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", name, "--help"])
    message = str(info.value.code)
    assert "benchmarks live in the source checkout: clone the repo and run" in message
    assert f"python benchmarks/{name}.py" in message


def test_an_installed_package_finds_the_benchmarks_of_the_clone_it_runs_in(monkeypatch, tmp_path):
    """A non-editable install has no benchmarks/ next to the package: the clone's, from its top folder."""
    monkeypatch.setattr(cli, "_BENCHMARKS_DIR", tmp_path / "site-packages" / "benchmarks")
    monkeypatch.chdir(REPO)
    assert cli.benchmark_script("speed") == REPO / "benchmarks" / "speed.py"


def test_benchmarks_dir_is_next_to_training():
    assert cli._BENCHMARKS_DIR == REPO / "benchmarks"
    assert cli.benchmark_script("speed") == REPO / "benchmarks" / "speed.py"


def test_other_commands_still_reject_unknown_arguments(capsys):
    code, _, err = _run_main(["eval", "--checkpoint", "x.pt", "--bogus"], capsys)
    assert code == 2
    assert "unrecognized arguments: --bogus" in err


def test_console_entry_bench_help():
    done = subprocess.run([sys.executable, "-m", "manifold_align_train", "bench", "--help"], capture_output=True,
                          text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "speed" in done.stdout and "topologies" in done.stdout


def test_bench_model_flop_table_on_the_tiny_config(monkeypatch):
    """FLOPs traced on the meta device: k = 1 is stock's architecture (ratio 1 up to the smaller
    projection); every k adds k - 1 image and k - 1 text positions and costs more."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    bench_model = importlib.import_module("bench_model")
    table = bench_model.flops_table(["tiny-cpu"], (1, 4, 16))
    rows = [line.strip("| ").split(" | ") for line in table.splitlines()[2:]]
    assert [int(row[2]) for row in rows] == [1, 4, 16]
    patches, caption = (32 // 4) ** 2, 19  # 32-pixel images in 4-pixel patches; context 20, less end-of-text
    for row, k in zip(rows, (1, 4, 16)):
        assert row[3] == f"{patches + k} ({patches + 1})"
        text = caption + k if k > 1 else 20  # k = 1 reads the end-of-text output itself
        assert row[4] == f"{text} / {text} (20)"
    ratios = [float(row[6].rstrip("x")) for row in rows]
    assert abs(ratios[0] - 1) < 0.01 and ratios[0] < ratios[1] < ratios[2]
