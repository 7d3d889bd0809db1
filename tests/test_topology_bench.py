"""Tests of benchmarks/topologies.py: the plan, the block control, statistics, outputs, resume."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

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
    clip = load_config(None, bench.TOPOLOGIES["sphere-learnable"].overrides()).loss.temperature
    assert (clip.init, clip.max_scale) == (0.07, 100.0)
    capped = load_config(None, bench.TOPOLOGIES["oblique-learnable-3.95"].overrides()).loss.temperature
    assert capped.max_scale == 3.95
    fixed = load_config(None, bench.TOPOLOGIES["sphere-fixed"].overrides()).loss.temperature
    assert fixed.name == "fixed" and fixed.scale == pytest.approx(1 / 0.07)


def test_full_plan_counts_and_reuses_k16(bench):
    args = _args(bench, [])
    specs = bench.plan_runs(args.topologies, args.noise, range(args.seeds), args.k_values, args.k_noise)
    names = [s.name for s in specs]
    assert len(names) == len(set(names))
    # 8 topologies x 5 noise x 3 seeds, then 6 new k values x 1 noise x 3 seeds (k = 16 is oblique-none)
    assert len(specs) == 8 * 5 * 3 + 6 * 1 * 3
    assert not any("-k16_" in n for n in names)


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
    assert 1.0 < by_topo["sphere-learnable"]["final_temperature"] <= 100.0
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
