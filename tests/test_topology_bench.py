"""Tests of benchmarks/topologies.py: the plan, the block control, statistics, outputs, resume."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from clip_reference import clip_temperature

from manifold_align_train.cli import _load_script

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "topologies.py"


@pytest.fixture(scope="module")
def bench():
    """The script loaded the way `manifold-align bench topologies` loads it."""
    return _load_script(SCRIPT)


def _args(bench, argv):
    return bench.resolve_args(bench.build_parser().parse_args(argv))


# --------------------------------------------------------------------------------------------------
# topologies and plan
# --------------------------------------------------------------------------------------------------
def test_every_topology_has_width_512(bench):
    for topo in bench.TOPOLOGIES.values():
        assert topo.n_tokens * topo.token_dim == bench.WIDTH, topo.name


def test_topology_overrides_build_valid_configs(bench):
    from manifold_align_train.config import load_config

    for topo in bench.TOPOLOGIES.values():
        cfg = load_config(None, topo.overrides())
        assert cfg.loss.similarity == topo.similarity
        assert (cfg.model.n_tokens, cfg.model.token_dim) == (topo.n_tokens, topo.token_dim)
        assert cfg.loss.temperature.name == topo.temperature["name"]
        assert cfg.model.class_tokens == topo.class_tokens
    reference = clip_temperature()  # open_clip's initial temperature and cap
    clip = load_config(None, bench.TOPOLOGIES["sphere-learnable"].overrides()).loss.temperature
    assert (clip.init, clip.max_scale) == pytest.approx((reference["init"], reference["max_scale"]))
    capped = load_config(None, bench.TOPOLOGIES["oblique-learnable-3.95"].overrides()).loss.temperature
    assert capped.max_scale == 3.95
    fixed = load_config(None, bench.TOPOLOGIES["sphere-fixed"].overrides()).loss.temperature
    assert fixed.name == "fixed" and fixed.scale == pytest.approx(1 / reference["init"])


def test_full_plan_counts_and_reuses_k16(bench):
    args = _args(bench, [])
    specs = bench.plan_runs(args.topologies, args.noise, range(args.seeds), args.k_values, args.k_noise)
    names = [s.name for s in specs]
    assert len(names) == len(set(names))
    # 13 topologies x 5 noise x 3 seeds, then 6 new k values x 1 noise x 3 seeds (k = 16 is oblique-none)
    assert len(specs) == 13 * 5 * 3 + 6 * 1 * 3
    assert not any(n.startswith("oblique-none-k16_") for n in names)


def test_user_overrides_sit_between_defaults_and_topology(bench):
    args = _args(bench, ["--quick", "--set", "train.lr=0.001", "--set", "loss.similarity=chordal"])
    spec = bench.RunSpec(bench.TOPOLOGIES["oblique-none"], 0.4, 1)
    items = bench.run_overrides(spec, args)
    assert items.index("train.lr=0.001") > items.index("train.steps=20")
    # the topology wins over a user override of its own keys
    assert items.index("loss.similarity=oblique") > items.index("loss.similarity=chordal")
    assert items[-3:] == ["data.caption_noise=0.4", "seed=1", f"name={spec.name}"]


def test_config_file_brings_its_own_data_and_budget(bench, tmp_path):
    args = _args(bench, ["--config", str(tmp_path / "x.yaml")])
    items = bench.base_overrides(args)
    assert not any(i.startswith(("data.dataset=", "train.steps=", "data.batch_size=")) for i in items)
    assert "train.threads=1" in items


def test_resume_state_and_command(bench, tmp_path):
    args = _args(bench, ["--quick"])
    spec = bench.RunSpec(bench.TOPOLOGIES["sphere-none"], 0.0, 0)
    run = tmp_path / spec.name
    assert bench.run_state(run) == "new"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step_00000006.pt").write_bytes(b"")
    assert bench.run_state(run) == "resume"
    cmd = bench.train_command(spec, args, run, "resume")
    assert cmd[cmd.index("--resume") + 1] == "latest"
    (run / "summary.json").write_text("{}")
    assert bench.run_state(run) == "done"
    block = bench.train_command(bench.RunSpec(bench.TOPOLOGIES["block-control"], 0.0, 0), args, run, "new")
    assert block[1:4] == ["-m", "manifold_align_train", "train"] and "--resume" not in block
    assert "model.class_tokens=1" in block


# --------------------------------------------------------------------------------------------------
# block control: one class token, 16 normalized blocks, the built-in oblique similarity
# --------------------------------------------------------------------------------------------------
def test_block_control_is_oblique_with_one_class_token(bench):
    from manifold_align_train.builders import build_model
    from manifold_align_train.config import load_config

    block, oblique = bench.TOPOLOGIES["block-control"], bench.TOPOLOGIES["oblique-none"]
    assert (block.similarity, block.n_tokens, block.token_dim, block.class_tokens) == ("oblique", 16, 32, 1)
    assert block.overrides() == oblique.overrides()[:3] + ["model.class_tokens=1"] + oblique.overrides()[3:]
    cfg = load_config(None, block.overrides())
    model, _, _ = build_model(cfg, torch.device("cpu"))
    assert model.embed_cfg.tower_tokens == 1 and model.embed_cfg.tower_token_dim == 512
    features = model.encode_image(torch.randn(3, 3, 32, 32))
    assert features.shape == (3, 16, 32)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(3, 16))


# --------------------------------------------------------------------------------------------------
# statistics, tables, plots (from made-up rows)
# --------------------------------------------------------------------------------------------------
def test_t_interval_matches_the_formula(bench):
    mean, half, n = bench.t_interval([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3)
    assert half == pytest.approx(4.302652729911275 * 1.0 / math.sqrt(3))
    assert math.isnan(bench.t_interval([5.0])[1])
    assert bench.t_interval([float("nan"), 1.0, 3.0])[2] == 2


def _fake_row(bench, topo, noise, seed, k=None):
    t = bench.TOPOLOGIES.get(topo) or bench.k_sweep_topology(k)
    acc = 0.5 - 0.3 * noise + 0.01 * seed
    return {
        "topology": t.name, "similarity": t.similarity, "k": t.n_tokens, "d": t.token_dim,
        "temperature": t.temperature_label(), "noise": noise, "seed": seed, "dataset": "digit-pairs",
        "model": "digits-fast", "steps": 150, "batch_size": 128, "zero_shot_top1": acc,
        "zero_shot_top5": acc, "image_to_text_R@1": acc, "text_to_image_R@1": acc, "retrieval_R@1": acc,
        "final_temperature": 10.0 + 5 * noise, "positive_similarity": 0.5, "negative_similarity": 0.1,
        "gap": 0.4, "gap_normalized": 0.4 / t.blocks, "final_loss": 1.0, "wall_time_seconds": 60.0,
        "run_dir": "x", "temperature_trajectory": [[5, 14.0], [10, 12.0]],
        "gap_trajectory": [[5, 0.1], [10, 0.2]],
    }


def test_tables_and_plots_from_rows(bench, tmp_path):
    topologies = ["sphere-learnable", "oblique-none"]
    rows = [_fake_row(bench, t, n, s) for t in topologies for n in (0.0, 0.4) for s in range(3)]
    rows += [_fake_row(bench, None, 0.4, s, k=k) for k in (1, 4) for s in range(3)]
    bench.write_results(rows, tmp_path)
    md = bench.write_markdown(rows, tmp_path, topologies=topologies, k_noise=(0.4,), command="cmd").read_text()
    assert "task digit-pairs, towers digits-fast, 150 steps, batch 128, seeds 0, 1, 2" in md
    # noise 0, sphere-learnable: accuracies 50, 51, 52 % -> 51.0 ± 2.5
    assert "| sphere-learnable | 51.0 ± 2.5 | 39.0 ± 2.5 |" in md
    assert "## k sweep" in md and "| 4 | 128 |" in md and "| 16 | 32 |" in md
    plots = bench.write_plots(rows, tmp_path, topologies=topologies, k_noise=(0.4,))
    assert sorted(p.name for p in plots) == ["accuracy_vs_k.png", "accuracy_vs_noise.png",
                                             "gap_over_training.png", "temperature_vs_noise.png"]
    for path in plots:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_paired_table_differences_by_seed(bench):
    rows = [_fake_row(bench, t, n, s) for t in ("sphere-learnable", "oblique-none") for n in (0.0, 0.4)
            for s in range(3)]
    for r in rows:
        if r["topology"] == "oblique-none":
            r["zero_shot_top1"] += 0.02 * (r["seed"] + 1)  # +2, +4, +6 points over the paired sphere run
    rows.append(_fake_row(bench, "oblique-none", 0.0, 7))  # no sphere run with seed 7: not paired
    assert bench.paired_differences(rows, "oblique-none", "sphere-learnable", 0.0) == pytest.approx([0.02, 0.04, 0.06])
    table = bench.paired_table(rows, ["sphere-learnable", "oblique-none"])
    # per noise: mean 4, sd 2, n 3 -> 4.303 * 2 / sqrt(3) = 5.0; pooled: n 6, sd sqrt(3.2) -> 2.571 * 1.789 / sqrt(6)
    assert "| oblique-none | 4.0 ± 5.0 | 4.0 ± 5.0 | 4.0 ± 1.9 |" in table
    assert bench.paired_table(rows, ["oblique-none"]) == ""  # no baseline among the topologies


# --------------------------------------------------------------------------------------------------
# end to end: --quick on a tiny budget, then a second call that resumes (skips everything)
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_quick_end_to_end_and_resume(bench, tmp_path, capsys):
    out, runs = tmp_path / "results", tmp_path / "runs"
    argv = ["--quick", "--topologies", "sphere-learnable,block-control", "--noise", "0.4", "--steps", "2",
            "--batch-size", "32", "--k-values", "", "--output", str(out), "--runs-dir", str(runs),
            "--set", "data.dataset=synthetic", "--set", "data.num_samples=64", "--set", "model.name=digits-tiny",
            "--set", "eval.batch_size=64"]
    assert bench.main(argv) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert sorted(r["topology"] for r in rows) == ["block-control", "sphere-learnable"]
    for row in rows:
        assert row["steps"] == "2" and row["batch_size"] == "32" and row["dataset"] == "synthetic"
        assert 0.0 <= float(row["zero_shot_top1"]) <= 1.0 and 0.0 <= float(row["retrieval_R@1"]) <= 1.0
        assert math.isfinite(float(row["gap"]))
    by_topo = {r["topology"]: r for r in json.loads((out / "results.json").read_text())}
    assert by_topo["block-control"]["similarity"] == "oblique"
    assert by_topo["block-control"]["class_tokens"] == 1 and by_topo["block-control"]["k"] == 16
    assert by_topo["block-control"]["final_temperature"] == 1.0
    cap = bench.TOPOLOGIES["sphere-learnable"].temperature["max_scale"]
    assert 1.0 < by_topo["sphere-learnable"]["final_temperature"] <= cap
    assert by_topo["sphere-learnable"]["temperature_trajectory"]
    md = (out / "results.md").read_text()
    assert "task synthetic, towers digits-tiny, 2 steps, batch 32, seeds 0" in md
    assert "| block-control |" in md and "| sphere-learnable |" in md
    for name in ("accuracy_vs_noise.png", "temperature_vs_noise.png", "gap_over_training.png"):
        assert (out / name).stat().st_size > 5000
    assert not any(runs.glob("*/checkpoints/*.pt"))  # deleted once a run is done

    capsys.readouterr()
    stamps = {p: p.stat().st_mtime_ns for p in runs.glob("*/summary.json")}
    assert bench.main(argv) == 0
    assert "2 already done, 0 to run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*/summary.json")} == stamps


# --------------------------------------------------------------------------------------------------
# fast mode (benchmarks/topology_fast.py, topology_grid.py, topology_report.py)
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fast(bench):
    """The fast-mode engine, grid and report, loaded next to the script (benchmarks/ on sys.path)."""
    import importlib

    return (importlib.import_module("topology_fast"), importlib.import_module("topology_grid"),
            importlib.import_module("topology_report"))


def test_mode_flag_is_split_off(bench):
    assert bench.split_mode(["--quick", "--mode", "fast", "--seeds", "2"]) == ("fast", ["--quick", "--seeds", "2"])
    assert bench.split_mode(["--mode=full"]) == ("full", [])
    assert bench.split_mode([]) == ("full", [])
    with pytest.raises(SystemExit, match="--mode"):
        bench.split_mode(["--mode", "slow"])


def test_new_geometries_are_topologies_at_width_512(bench):
    for name, sim, k in (("euclidean-k1", "euclidean", 1), ("euclidean-k16", "euclidean", 16),
                         ("euclidean-k1-own", "euclidean", 1),
                         ("lorentz-k1", "lorentz", 1), ("lorentz-k16", "lorentz", 16)):
        topo = bench.TOPOLOGIES[name]
        assert (topo.similarity, topo.n_tokens, topo.n_tokens * topo.token_dim) == (sim, k, 512)
        assert f"loss.similarity={sim}" in topo.overrides()  # the full mode selects them by name


def test_bag_features_see_word_order(fast):
    engine, _, _ = fast
    a, b, a_again = engine.bag_features(["three then seven", "seven then three", "three then seven"])
    assert not torch.allclose(a, b)
    torch.testing.assert_close(a, a_again)
    assert a.norm() == pytest.approx(math.sqrt(engine.TEXT_DIM), rel=1e-5)


def test_loss_floor(fast):
    _, grid, _ = fast
    assert grid.loss_floor(1) == 0.0
    assert grid.loss_floor(32768) == pytest.approx(math.log(1 + 32767 / math.e))


@pytest.fixture(scope="module")
def tiny_data(fast):
    engine, _, _ = fast
    return engine.build_data(0.4, (0, 1))


@pytest.mark.parametrize("similarity,k,temperature", [
    ("cosine", 1, {"name": "learnable", "init": 0.07, "max_scale": 100.0}),
    ("lorentz", 4, {"name": "learnable", "init": 0.07, "max_scale": 100.0}),
])
def test_seeds_train_as_they_would_alone(fast, tiny_data, similarity, k, temperature):
    """Seed 1 trained beside seed 0 ends where seed 1 trained alone ends (per-seed clip, elementwise AdamW)."""
    engine, _, _ = fast
    alone_data = engine.FastData(**{**tiny_data.__dict__, "train_captions": tiny_data.train_captions[1:]})
    kwargs = dict(steps=6, batch_size=32, hidden=16, evals=2)
    both, traj = engine.train(similarity, k, 512 // k, temperature, tiny_data, (0, 1), **kwargs)
    alone, _ = engine.train(similarity, k, 512 // k, temperature, alone_data, (1,), **kwargs)
    for key in ("zero_shot_top1", "retrieval_R@1", "final_loss", "scale"):
        assert both[1][key] == pytest.approx(alone[0][key], rel=1e-4, abs=2e-3), key
    assert [p["step"] for p in traj[0]] == [3, 6]
    if similarity == "lorentz":
        assert both[1]["curvature"] == pytest.approx(alone[0]["curvature"], rel=1e-4)


def _fake_fast_rows(grid, topo, noise, seeds, acc, spread, batch=128):
    return [{"profile": "cpu", "topology": topo, "noise": noise, "batch_size": batch, "steps": 300, "hidden": 128,
             "seed": s, "zero_shot_top1": acc + spread * (-1) ** s * (s % 3)} for s in seeds]


def test_power_extension_adds_seeds_only_where_needed(fast):
    _, grid, _ = fast
    args = grid.resolve_args(grid.build_parser().parse_args(["--topologies", "sphere-learnable,oblique-none,sphere-none",
                                                             "--noise", "0"]))
    rows = (_fake_fast_rows(grid, "sphere-learnable", 0.0, range(5), 0.7, 0.0)
            + _fake_fast_rows(grid, "oblique-none", 0.0, range(5), 0.72, 0.05)     # noisy: half-width >> 1.5
            + _fake_fast_rows(grid, "sphere-none", 0.0, range(5), 0.3, 0.001))     # tight: done
    cells = grid.power_cells(rows, args)
    assert {(c.topology, c.seeds) for c in cells} == {("oblique-none", (5, 6, 7, 8, 9)),
                                                      ("sphere-learnable", (5, 6, 7, 8, 9))}
    rows += _fake_fast_rows(grid, "oblique-none", 0.0, range(5, 80), 0.72, 0.05)
    rows += _fake_fast_rows(grid, "sphere-learnable", 0.0, range(5, 80), 0.7, 0.0)
    assert grid.power_cells(rows, args) == []  # target met or max_seeds (80) reached


def _fast_argv(out):
    return ["--mode", "fast", "--output", str(out), "--steps", "3", "--hidden", "8", "--seeds", "2",
            "--max-seeds", "2", "--noise", "0,0.4", "--k-values", "1,16", "--batch-sizes", "32,64",
            "--cheap-batch", "32", "--topologies", "sphere-learnable,oblique-none,sphere-none,lorentz-k16,joint-control"]


def test_fast_grid_resumes_and_report_only_reproduces(bench, fast, tmp_path, capsys):
    _, grid, _ = fast
    out = tmp_path / "fast"
    assert bench.main(_fast_argv(out)) == 0
    rows = grid.read_rows(out / "results.csv")
    # 4 topologies x 2 noise + k = 1 at 0.4 + batch 32 and 64 for 3 topologies, 2 seeds each
    assert len(rows) == 2 * (4 * 2 + 1 + 3 * 2)
    assert {r["mode"] for r in rows} == {"fast"} and "joint-control" not in {r["topology"] for r in rows}
    for r in rows:
        assert 0 <= r["zero_shot_top1"] <= 1 and math.isfinite(r["final_loss"]) and r["scale"] > 0
    lorentz = [r for r in rows if r["topology"] == "lorentz-k16"]
    assert all(r["curvature"] > 0 and 0 < r["text_scale"] <= 1 for r in lorentz)
    md = (out / "results.md").read_text()
    assert "| joint-control | = sphere-learnable" in md and "## The six answers" in md
    for name in ("accuracy_vs_noise.png", "paired_differences.png", "batch_sweep.png", "trajectories.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"

    tables = md[md.index("## The six answers"):]
    (out / "results.md").unlink()
    assert bench.main(_fast_argv(out) + ["--report-only"]) == 0
    again = (out / "results.md").read_text()
    assert again[again.index("## The six answers"):] == tables  # every number from results.csv alone

    capsys.readouterr()
    assert bench.main(_fast_argv(out)) == 0  # resume: nothing left to run
    assert "0 cells in" in capsys.readouterr().out
    lines = (out / "results.csv").read_text().splitlines()
    kept = [line for line in lines if ",sphere-none," not in line or ",0.4," not in line]
    (out / "results.csv").write_text("\n".join(kept) + "\n")  # as if killed during that cell
    assert bench.main(_fast_argv(out)) == 0
    assert "1 cells in" in capsys.readouterr().out
    assert len(grid.read_rows(out / "results.csv")) == len(rows)


def test_gpu_profile_plan_and_budget_on_cpu(bench, fast, tmp_path, capsys):
    _, grid, _ = fast
    args = grid.resolve_args(grid.build_parser().parse_args(["--profile", "gpu"]))
    profile = grid.PROFILES["gpu"]
    assert {key: getattr(args, key) for key in ("device", "hidden", "batch_size", "time_budget")} == {
        key: profile[key] for key in ("device", "hidden", "batch_size", "time_budget")}
    assert args.output.name == "topologies-fast-gpu" and args.docs_img is None
    assert bench.main(["--mode", "fast", "--profile", "gpu", "--dry-run"]) == 0
    assert "cells, then seed chunks" in capsys.readouterr().out
    out = tmp_path / "gpu"
    argv = ["--mode", "fast", "--profile", "gpu", "--device", "cpu", "--output", str(out), "--steps", "2",
            "--hidden", "8", "--seeds", "2", "--noise", "0", "--k-values", "", "--batch-sizes", "",
            "--time-budget", "0.001", "--topologies", "sphere-learnable,oblique-none"]
    assert bench.main(argv) == 0
    assert "time budget of 0.001 s spent" in capsys.readouterr().out
    rows = grid.read_rows(out / "results.csv")
    assert {r["profile"] for r in rows} == {"gpu"} and len(rows) == 2  # the first cell, then the budget stops it


def test_euclidean_own_topology_is_the_trainer_s_auto_temperature(bench):
    from manifold_align import get_similarity

    assert bench.TOPOLOGIES["euclidean-k1-own"].temperature == get_similarity("euclidean").default_temperature
