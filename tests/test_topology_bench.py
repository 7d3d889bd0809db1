"""Tests of the topology benchmark (``benchmarks/topology/``, run as ``benchmarks/topologies.py``).

The package layout (no import circle), the topologies and the full mode's plan, the fast mode's engine and grid
(seeds train as they would alone, resume, never a run twice), and the one report engine: intervals against the
t formula, duplicate runs refused, verdict words from the interval whatever the means.
"""

from __future__ import annotations

import ast
import csv
import json
import math
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from clip_reference import clip_temperature
from host_cpu import cpu_model_name

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"
if str(BENCHMARKS) not in sys.path:  # as `python benchmarks/topologies.py` has it
    sys.path.insert(0, str(BENCHMARKS))

from topology import cli, full, grid, report, results, spec, stats  # noqa: E402

#: t(0.975, n - 1) for n = 2..7, from a table (scipy computes it in the code under test)
T975 = {2: 12.706204736, 3: 4.302652730, 4: 3.182446305, 5: 2.776445105, 6: 2.570581836, 7: 2.446911851}


def _half(xs):
    """95% t half-width written out: t * sample sd / sqrt(n)."""
    n, mean = len(xs), sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return T975[n] * sd / math.sqrt(n)


# --------------------------------------------------------------------------------------------------
# the package: layers, no circle
# --------------------------------------------------------------------------------------------------
LAYERS = ["geometry", "spec", "stats", "results", "fast", "grid", "full", "report", "cli"]


def _package_imports(module: str) -> set[str]:
    tree = ast.parse((BENCHMARKS / "topology" / f"{module}.py").read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            out |= {node.module} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("topology"):
            out.add(node.module.split(".")[1])
    return out


def test_package_modules_import_only_lower_layers():
    files = sorted(p.stem for p in (BENCHMARKS / "topology").glob("*.py") if p.stem != "__init__")
    assert files == sorted(LAYERS)
    for i, module in enumerate(LAYERS):
        imported = _package_imports(module)
        assert imported <= set(LAYERS[:i]), f"{module} imports {imported - set(LAYERS[:i])} (a higher layer)"
    assert not any((BENCHMARKS / f"topology_{m}.py").exists() for m in ("fast", "grid", "report"))


def test_only_the_adapter_touches_the_geometry_api():
    """Only topology/geometry.py imports the library's geometry side (the optimizer is not part of it), and no
    module compares a geometry's name."""
    for module in LAYERS:
        source = (BENCHMARKS / "topology" / f"{module}.py").read_text()
        imported = {node.module for node in ast.walk(ast.parse(source))
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("manifold_align")}
        imported |= {a.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Import)
                     for a in node.names if a.name.startswith("manifold_align")}
        library = {m for m in imported if m.split(".")[0] == "manifold_align"}
        if module == "geometry":
            assert library <= {"manifold_align", "manifold_align.geometries"}
        else:
            assert library <= {"manifold_align.optim"}, f"{module}.py imports {library}"
        assert ".name ==" not in source and 'similarity == "' not in source, module


# --------------------------------------------------------------------------------------------------
# topologies and the full mode's plan
# --------------------------------------------------------------------------------------------------
def test_every_topology_has_width_512():
    for topo in spec.TOPOLOGIES.values():
        assert topo.n_tokens * topo.token_dim == spec.WIDTH, topo.name


def test_topology_overrides_build_valid_configs():
    from manifold_align_train.config import load_config

    for topo in spec.TOPOLOGIES.values():
        cfg = load_config(None, topo.overrides())
        assert cfg.model.geometry == topo.geometry
        assert (cfg.model.n_tokens, cfg.model.token_dim) == (topo.n_tokens, topo.token_dim)
        assert cfg.loss.temperature.name == topo.temperature["name"]
        assert cfg.model.class_tokens == topo.class_tokens
    reference = clip_temperature()  # open_clip's initial temperature and cap
    clip = load_config(None, spec.TOPOLOGIES["sphere-learnable"].overrides()).loss.temperature
    assert (clip.init, clip.max_scale) == pytest.approx((reference["init"], reference["max_scale"]))
    capped = load_config(None, spec.TOPOLOGIES["oblique-learnable-3.95"].overrides()).loss.temperature
    assert capped.max_scale == 3.95
    fixed = load_config(None, spec.TOPOLOGIES["sphere-fixed"].overrides()).loss.temperature
    assert fixed.name == "fixed" and fixed.scale == pytest.approx(1 / reference["init"])


def test_geometry_options_reach_the_run_config():
    from manifold_align_train.config import load_config

    topo = spec.Topology("lorentz-c2", "lorentz", 1, 512, {"name": "none"}, options={"curvature_init": 2.0})
    assert load_config(None, topo.overrides()).model.geometry_options == {"curvature_init": 2.0}


def test_registered_geometries_are_topologies_by_name():
    from manifold_align import list_geometries

    defaults = spec.default_topologies()
    assert defaults[:len(spec.TOPOLOGIES)] == list(spec.TOPOLOGIES)
    used = {t.geometry for t in spec.TOPOLOGIES.values()}
    assert set(defaults[len(spec.TOPOLOGIES):]) == set(list_geometries()) - used  # each other one, once
    geodesic = spec.topology("geodesic-k8")
    assert (geodesic.geometry, geodesic.n_tokens, geodesic.token_dim, geodesic.blocks) == ("geodesic", 8, 64, 8)
    with pytest.raises(ValueError, match="registered: .*lorentz"):
        spec.topology("hyperbolic-k4")


def test_full_plan_counts_and_reuses_k16():
    args = cli.resolve_args(cli.build_parser().parse_args([]))
    specs = full.plan_runs(args.topologies, args.noise, range(args.seeds), args.k_values, args.k_noise)
    names = [s.name for s in specs]
    assert len(names) == len(set(names))
    # every default topology x 5 noise x 3 seeds, then 6 new k values x 1 noise x 3 seeds (k = 16 is oblique-none)
    assert len(specs) == len(spec.default_topologies()) * 5 * 3 + 6 * 1 * 3
    assert not any(n.startswith("oblique-none-k16_") for n in names)


def test_user_overrides_sit_between_defaults_and_topology():
    args = cli.resolve_args(cli.build_parser().parse_args(["--quick", "--set", "train.lr=0.001", "--set",
                                                           "model.geometry=chordal"]))
    run = full.RunSpec(spec.TOPOLOGIES["oblique-none"], 0.4, 1)
    items = full.run_overrides(run, args)
    assert items.index("train.lr=0.001") > items.index("train.steps=20")
    # the topology wins over a user override of its own keys
    assert items.index("model.geometry=oblique") > items.index("model.geometry=chordal")
    assert items[-3:] == ["data.caption_noise=0.4", "seed=1", f"name={run.name}"]


def test_config_file_brings_its_own_data_and_budget(tmp_path):
    args = cli.resolve_args(cli.build_parser().parse_args(["--config", str(tmp_path / "x.yaml")]))
    items = full.base_overrides(args)
    assert not any(i.startswith(("data.dataset=", "train.steps=", "data.batch_size=")) for i in items)
    assert "train.threads=1" in items


def test_resume_state_and_command(tmp_path):
    args = cli.resolve_args(cli.build_parser().parse_args(["--quick"]))
    run = full.RunSpec(spec.TOPOLOGIES["sphere-none"], 0.0, 0)
    folder = tmp_path / run.name
    assert full.run_state(folder) == "new"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "step_00000006.pt").write_bytes(b"")
    assert full.run_state(folder) == "resume"
    cmd = full.train_command(run, args, folder, "resume")
    assert cmd[cmd.index("--resume") + 1] == "latest"
    (folder / "summary.json").write_text("{}")
    assert full.run_state(folder) == "done"
    block = full.train_command(full.RunSpec(spec.TOPOLOGIES["block-control"], 0.0, 0), args, folder, "new")
    assert block[1:4] == ["-m", "manifold_align_train", "train"] and "--resume" not in block
    assert "model.class_tokens=1" in block


def test_block_control_is_oblique_with_one_class_token():
    from manifold_align_train.builders import build_model
    from manifold_align_train.config import load_config

    block, oblique = spec.TOPOLOGIES["block-control"], spec.TOPOLOGIES["oblique-none"]
    assert (block.geometry, block.n_tokens, block.token_dim, block.class_tokens) == ("oblique", 16, 32, 1)
    model, _, _ = build_model(load_config(None, block.overrides()), torch.device("cpu"))
    assert model.embed_cfg.tower_tokens == 1 and model.embed_cfg.tower_token_dim == 512
    features = model.encode_image(torch.randn(3, 3, 32, 32))
    assert features.shape == (3, 16, 32)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(3, 16))
    assert oblique.overrides()[:3] == block.overrides()[:3]


def test_euclidean_own_topology_is_the_geometry_s_default_temperature():
    from topology import geometry

    assert spec.TOPOLOGIES["euclidean-k1-own"].temperature == geometry.default_temperature("euclidean")


# --------------------------------------------------------------------------------------------------
# statistics and the verdict rule
# --------------------------------------------------------------------------------------------------
def test_t_interval_matches_the_formula():
    mean, half, n = stats.t_interval([1.0, 2.0, 4.0])
    assert (mean, n) == (pytest.approx(7 / 3), 3)
    assert half == pytest.approx(_half([1.0, 2.0, 4.0]))
    assert math.isnan(stats.t_interval([5.0])[1])
    assert stats.t_interval([float("nan"), 1.0, 3.0])[2] == 2


@pytest.mark.parametrize("diffs,expected", [
    ([0.30, -0.10, 0.05, 0.25], stats.NO_DIFFERENCE),  # mean +12.5 points, interval includes 0
    ([0.10, 0.11, 0.12], stats.HIGHER),
    ([-0.02, -0.03, -0.025], stats.LOWER),
    ([0.5], stats.TOO_FEW),
])
def test_verdict_follows_the_interval_not_the_mean(diffs, expected):
    mean, half = sum(diffs) / len(diffs), (_half(diffs) if len(diffs) > 1 else math.nan)
    assert stats.verdict(diffs) == expected
    if expected != stats.TOO_FEW:
        assert (mean - half > 0, mean + half < 0) == (expected == stats.HIGHER, expected == stats.LOWER)


# --------------------------------------------------------------------------------------------------
# the report, from planted rows
# --------------------------------------------------------------------------------------------------
def _full_row(topo_name, noise, seed, acc, scale=10.0):
    t = spec.topology(topo_name)
    return {"topology": t.name, "geometry": t.geometry, "k": t.n_tokens, "d": t.token_dim,
            "temperature": t.temperature_label(), "noise": noise, "seed": seed, "dataset": "digit-pairs",
            "model": "digits-fast", "steps": 150, "batch_size": 128, "zero_shot_top1": acc, "zero_shot_top5": acc,
            "image_to_text_R@1": acc, "text_to_image_R@1": acc, "retrieval_R@1": acc, "final_temperature": scale,
            "positive_similarity": 0.5, "negative_similarity": 0.1, "gap": 0.4, "gap_normalized": 0.4 / t.blocks,
            "final_loss": 1.0, "wall_time_seconds": 60.0, "run_dir": "x",
            "temperature_trajectory": [[5, 14.0], [10, scale]], "gap_trajectory": [[5, 0.1], [10, 0.2]]}


def test_full_mode_tables_and_plots_from_its_results_files(tmp_path):
    rows = [_full_row(t, n, s, 0.5 - 0.3 * n + 0.01 * s) for t in ("sphere-learnable", "oblique-none")
            for n in (0.0, 0.4) for s in range(3)]
    rows += [_full_row(f"oblique-none-k{k}", 0.4, s, 0.3 + 0.01 * s) for k in (1, 4) for s in range(3)]
    full.record(tmp_path, rows)
    written = report.write_report(tmp_path, command="cmd")
    md = (tmp_path / "results.md").read_text()
    assert "full mode, task digit-pairs, towers digits-fast, 150 steps, batch 128, 3 seeds per point (seeds 0-2)" in md
    # noise 0, sphere-learnable: accuracies 50, 51, 52 % -> 51.0 ± 4.303 / sqrt(3)
    assert f"| sphere-learnable | 51.0 ± {100 * _half([0.50, 0.51, 0.52]):.1f} (3) | 39.0 ± 2.5 (3) |" in md
    assert "### k sweep" in md and "| 4 | 128 |" in md and "| 16 | 32 |" in md
    assert stats.RULE in md
    assert sorted(p.name for p in written[1:]) == ["accuracy_vs_k.png", "accuracy_vs_noise.png",
                                                   "paired_differences.png", "scale_vs_noise.png", "trajectories.png"]
    for path in written[1:]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_paired_table_differences_by_seed():
    rows = [results.normalize(_full_row(t, n, s, 0.5)) for t in ("sphere-learnable", "oblique-none")
            for n in (0.0, 0.4) for s in range(3)]
    for r in rows:
        if r["topology"] == "oblique-none":
            r["zero_shot_top1"] += 0.02 * (r["seed"] + 1)  # +2, +4, +6 points over the paired sphere run
    rows.append(results.normalize(_full_row("oblique-none", 0.0, 7, 0.9)))  # no sphere run with seed 7
    assert stats.paired(rows, "oblique-none", "sphere-learnable", 0.0) == pytest.approx([0.02, 0.04, 0.06])
    table = "\n".join(report.table_paired(rows))
    half = 100 * _half([0.02, 0.04, 0.06])
    assert half > 4.0  # the interval includes 0 although every seed gained
    assert f"| oblique-none | +4.0 ± {half:.1f} (3) **n.d.** | +4.0 ± {half:.1f} (3) **n.d.** |" in table


def test_the_paired_table_holds_each_mode_to_its_own_target_and_says_how_many_seeds_would_reach_it():
    # oblique-none minus the CLIP sphere: +1, +3, +2, +4, 0 points; sd sqrt(2.5), half-width 1.96: inside the
    # full mode's 2 points, outside the fast mode's 1.5, which 7 seeds at this spread reach (6 do not)
    gains = [0.01, 0.03, 0.02, 0.04, 0.00]
    sd = math.sqrt(2.5)
    half = T975[5] * sd / math.sqrt(5)
    assert spec.TARGET < half <= spec.FULL_TARGET
    assert T975[7] * sd / math.sqrt(7) <= spec.TARGET < T975[6] * sd / math.sqrt(6)
    full_rows = [results.normalize(_full_row(t, 0.0, s, 0.5 + (g if t == "oblique-none" else 0.0)))
                 for t in ("sphere-learnable", "oblique-none") for s, g in enumerate(gains)]
    fast_rows = [_fast_row(t, 0.0, s, 0.5 + (g if t == "oblique-none" else 0.0))
                 for t in ("sphere-learnable", "oblique-none") for s, g in enumerate(gains)]
    assert "1 of 1 cells have a half-width of at most 2 points; all do." in "\n".join(report.table_paired(full_rows))
    assert ("0 of 1 cells have a half-width of at most 1.5 points; the others: oblique-none at 0 (±2.0, 5 seeds, "
            "mean +2.0; about 7 seeds for ±1.5 at this spread).") in "\n".join(report.table_paired(fast_rows))


def test_seeds_for_is_the_fewest_seeds_whose_interval_at_the_same_spread_meets_the_half_width():
    observed = [3.0, -1.0, 4.0, 1.5, -2.5, 0.5]
    sd = statistics.stdev(observed)
    for goal in (0.5, 1.0, 2.0, 4.0):
        n = stats.seeds_for(observed, goal)
        # n values with the same sample sd (a centred, rescaled pattern) meet the goal; n - 1 do not
        for count, meets in ((n, True), (n - 1, False)):
            if count < 2:
                continue
            pattern = [i - (count - 1) / 2 for i in range(count)]
            scaled = [sd * x / statistics.stdev(pattern) for x in pattern]
            assert (stats.t_interval(scaled)[1] <= goal) is meets
    with pytest.raises(ValueError, match="at least 2 values"):
        stats.seeds_for([1.0], 1.0)


def _fast_row(topo, noise, seed, acc, batch=128, **extra):
    t = spec.topology(topo)
    return {"mode": "fast", "profile": "cpu", "topology": topo, "geometry": t.geometry, "k": t.n_tokens,
            "d": t.token_dim, "temperature": t.temperature_label(), "noise": noise, "seed": seed, "steps": 300,
            "batch_size": batch, "hidden": 128, "zero_shot_top1": acc, "retrieval_R@1": acc,
            "zero_shot_top1_at_80pct": acc, "scale": 15.0, "scale_at_80pct": 15.0, "final_loss": 1.0,
            "loss_floor": spec.loss_floor(batch), "wall_time_seconds": 2.0, "device": "cpu", **extra}


def _planted(tmp_path, rows):
    results.append_rows(tmp_path / "results.csv", rows, grid.COLUMNS)
    return tmp_path


def test_report_refuses_a_duplicated_run_and_reads_verdicts_off_the_interval(tmp_path):
    # oblique-none minus the CLIP sphere: +20, -10, +5 points at noise 0 (mean +5, interval +-37: includes 0),
    # +2.0, +2.1, +1.9 at noise 0.4 (excludes 0)
    base = {0.0: [0.60, 0.61, 0.62], 0.4: [0.40, 0.41, 0.42]}
    gain = {0.0: [0.20, -0.10, 0.05], 0.4: [0.020, 0.021, 0.019]}
    rows = [_fast_row("sphere-learnable", n, s, base[n][s]) for n in base for s in range(3)]
    rows += [_fast_row("oblique-none", n, s, base[n][s] + gain[n][s]) for n in base for s in range(3)]
    duplicate = dict(rows[4], zero_shot_top1=0.99)  # sphere-learnable noise 0.4 seed 1, trained twice
    folder = _planted(tmp_path, [*rows, duplicate])
    with pytest.raises(results.DuplicateRunError, match="sphere-learnable noise 0.4 batch 128 seed 1 "):
        report.write_report(folder, command="cmd")
    with pytest.raises(results.DuplicateRunError, match="different results"):
        report.write_report(folder, command="cmd", drop_duplicates=True)  # which copy to keep is not its call
    assert not (folder / "results.md").exists()

    (folder / "results.csv").unlink()
    _planted(tmp_path, [*rows, dict(rows[4], wall_time_seconds=9.0)])  # an identical copy (only its timing differs)
    with pytest.raises(results.DuplicateRunError, match="identical results"):
        report.write_report(folder, command="cmd")
    report.write_report(folder, command="cmd", drop_duplicates=True)
    md = (folder / "results.md").read_text()
    assert "appear twice" in md and "sphere-learnable noise 0.4 batch 128 seed 1 (300 steps)" in md
    assert "| sphere-learnable | 61.0 ± 2.5 (3) | 41.0 ± 2.5 (3) |" in md  # counted once
    answer = next(line for line in md.splitlines() if line.startswith("3. **Oblique"))
    half0 = 100 * _half(gain[0.0])
    assert f"noise 0: +5.0 ± {half0:.1f} (3) points (no difference detected)" in answer
    assert f"noise 0.4: +2.0 ± {100 * _half(gain[0.4]):.1f} (3) points (higher)" in answer
    assert f"| oblique-none | +5.0 ± {half0:.1f} (3) **n.d.** | +2.0 ± 0.2 (3) |" in md
    assert stats.RULE in md


def test_results_file_gains_a_column_for_a_new_geometry_value(tmp_path):
    path = tmp_path / "results.csv"
    results.append_rows(path, [_fast_row("sphere-learnable", 0.0, 0, 0.5)], grid.COLUMNS)
    results.append_rows(path, [_fast_row("lorentz-k1", 0.0, 0, 0.4, curvature=0.8)], grid.COLUMNS)
    rows = results.read_csv(path)
    assert [r["topology"] for r in rows] == ["sphere-learnable", "lorentz-k1"]
    assert math.isnan(rows[0]["curvature"]) and rows[1]["curvature"] == 0.8
    assert results.value_columns(rows) == ["curvature"]


def test_appending_to_an_older_file_keeps_its_rows_as_written(tmp_path):
    path = tmp_path / "trajectories.csv"
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([["topology", "similarity", "noise", "seed", "step", "scale"],
                                      ["sphere-none", "cosine", "0.2", "3", "5", "1.0"]])
    new = {"mode": "fast", "topology": "lorentz-k1", "geometry": "lorentz", "noise": 0.0, "seed": 0, "step": 5,
           "scale": 14.0, "curvature": 0.9}
    results.append_rows(path, [new], ("topology", "noise", "seed", "step", "scale"))
    assert results.header(path) == ["topology", "geometry", "noise", "seed", "step", "scale", "curvature"]
    old, added = results.read_csv(path, mode="fast")
    assert (old["geometry"], old["seed"], math.isnan(old["curvature"])) == ("cosine", 3, True)
    assert (added["geometry"], added["curvature"]) == ("lorentz", 0.9)
    results.append_rows(path, [dict(new, seed=1)], ("topology", "noise", "seed", "step", "scale"))  # plain append
    assert [r["seed"] for r in results.read_csv(path)] == [3, 0, 1]


def test_older_files_name_the_geometry_similarity(tmp_path):
    path = tmp_path / "results.csv"
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([["topology", "similarity", "noise", "seed", "final_temperature"],
                                      ["lorentz-k1", "lorentz", "0.2", "3", "14.5"]])
    (row,) = results.read_csv(path)
    assert (row["geometry"], row["mode"], row["scale"], row["seed"]) == ("lorentz", "full", 14.5, 3)


# --------------------------------------------------------------------------------------------------
# the fast mode
# --------------------------------------------------------------------------------------------------
def test_mode_flag_is_split_off():
    assert cli.split_mode(["--quick", "--mode", "fast", "--seeds", "2"]) == ("fast", ["--quick", "--seeds", "2"])
    assert cli.split_mode(["--mode=full"]) == ("full", [])
    assert cli.split_mode([]) == ("full", [])
    with pytest.raises(SystemExit, match="--mode"):
        cli.split_mode(["--mode", "slow"])


def test_bag_features_see_word_order():
    from topology import fast

    a, b, a_again = fast.bag_features(["three then seven", "seven then three", "three then seven"])
    assert not torch.allclose(a, b)
    torch.testing.assert_close(a, a_again)
    assert a.norm() == pytest.approx(math.sqrt(fast.TEXT_DIM), rel=1e-5)


def test_loss_floor():
    assert spec.loss_floor(1) == 0.0
    assert spec.loss_floor(32768) == pytest.approx(math.log(1 + 32767 / math.e))


@pytest.fixture(scope="module")
def tiny_data():
    from topology import fast

    return fast.build_data(0.4, (0, 1))


@pytest.mark.parametrize("name", ["sphere-learnable", "lorentz-k4"])
def test_seeds_train_as_they_would_alone(tiny_data, name):
    """Seed 1 trained beside seed 0 ends where seed 1 trained alone ends (per-seed clip, elementwise AdamW)."""
    from topology import fast

    topo = spec.topology(name)
    alone_data = fast.FastData(**{**tiny_data.__dict__, "train_captions": tiny_data.train_captions[1:]})
    kwargs = dict(steps=6, batch_size=32, hidden=16, evals=2)
    both, traj = fast.train(topo, tiny_data, (0, 1), **kwargs)
    alone, _ = fast.train(topo, alone_data, (1,), **kwargs)
    for key in ("zero_shot_top1", "retrieval_R@1", "final_loss", "scale"):
        assert both[1][key] == pytest.approx(alone[0][key], rel=1e-4, abs=2e-3), key
    assert [p["step"] for p in traj[0]] == [3, 6]
    if topo.geometry == "lorentz":  # its learned values come through values(), by name
        assert {"curvature", "image_scale", "text_scale"} <= set(both[1])
        assert both[1]["curvature"] == pytest.approx(alone[0]["curvature"], rel=1e-4)


def test_zero_shot_prototype_is_the_geometry_s_mean():
    """The engine's class prototypes are ``geometry.mean`` of the projected prompts: for lorentz the mean in the
    tangent space at the origin, written out here with the exponential and log maps in float64."""
    from topology import geometry

    g = geometry.build("lorentz", n_tokens=2, token_dim=3).double()
    x = g.project(torch.randn(20, 2, 3, dtype=torch.float64), modality="text").view(4, 5, 2, 3)  # 4 classes, 5 templates
    c = float(g.values()["curvature"])
    norm = x.norm(dim=-1, keepdim=True)
    tangent = torch.asinh(math.sqrt(c) * norm) / (math.sqrt(c) * norm) * x  # log_0 of space components
    mean = tangent.mean(1)
    r = mean.norm(dim=-1, keepdim=True)
    expected = torch.sinh(math.sqrt(c) * r) / (math.sqrt(c) * r) * mean  # exp_0, space components
    torch.testing.assert_close(g.mean(x, dim=1), expected)


def test_power_extension_adds_seeds_only_where_needed():
    args = cli.resolve_fast_args(cli.build_fast_parser().parse_args(
        ["--topologies", "sphere-learnable,oblique-none,sphere-none", "--noise", "0"]))

    def rows_of(topo, seeds, acc, spread):
        return [_fast_row(topo, 0.0, s, acc + spread * (-1) ** s * (s % 3)) for s in seeds]

    rows = (rows_of("sphere-learnable", range(5), 0.7, 0.0) + rows_of("oblique-none", range(5), 0.72, 0.05)
            + rows_of("sphere-none", range(5), 0.3, 0.001))  # noisy: half-width >> 1.5; tight: done
    cells = grid.power_cells(rows, args)
    assert {(c.topology, c.seeds) for c in cells} == {("oblique-none", (5, 6, 7, 8, 9)),
                                                      ("sphere-learnable", (5, 6, 7, 8, 9))}
    rows += rows_of("oblique-none", range(5, 80), 0.72, 0.05) + rows_of("sphere-learnable", range(5, 80), 0.7, 0.0)
    assert grid.power_cells(rows, args) == []  # target met or max_seeds (80) reached


def test_a_cell_plans_only_the_seeds_without_a_row():
    args = cli.resolve_fast_args(cli.build_fast_parser().parse_args([]))
    done = {results.run_key(r) for r in results.read_csv(Path("/nonexistent"))}
    cell = grid.Cell("sphere-none", 0.2, 128, (20, 21, 22, 23, 24), "power")
    assert cell.missing(done, args) == cell
    done |= {results.run_key(_fast_row("sphere-none", 0.2, s, 0.4)) for s in (20, 22)}
    assert cell.missing(done, args).seeds == (21, 23, 24)
    done |= {results.run_key(_fast_row("sphere-none", 0.2, s, 0.4)) for s in (21, 23, 24)}
    assert cell.missing(done, args) is None


def test_a_second_grid_into_the_same_folder_is_refused(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, sys, time
        handle = open({str(tmp_path / grid.LOCK)!r}, "a")
        fcntl.flock(handle, fcntl.LOCK_EX)
        print("held", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit, match="another grid is running into this folder"):
            with grid.holding(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with grid.holding(tmp_path):  # free again once the other process is gone
        pass


def _fast_argv(out):
    return ["--mode", "fast", "--output", str(out), "--steps", "3", "--hidden", "8", "--seeds", "2",
            "--max-seeds", "2", "--noise", "0,0.4", "--k-values", "1,16",
            "--topologies", "sphere-learnable,oblique-none,sphere-none,lorentz-k16,joint-control"]


def test_fast_grid_resumes_and_report_only_reproduces(tmp_path, capsys):
    out = tmp_path / "fast"
    assert cli.main(_fast_argv(out)) == 0
    rows = results.read_csv(out / "results.csv")
    # 4 topologies x 2 noise + k = 1 at 0.4, 2 seeds each (the batch sweep is --sweep batch's)
    assert len(rows) == 2 * (4 * 2 + 1)
    assert {(r["negatives"], r["train_pairs"]) for r in rows} == {("all", 5000)}
    assert {r["mode"] for r in rows} == {"fast"} and "joint-control" not in {r["topology"] for r in rows}
    for r in rows:
        assert 0 <= r["zero_shot_top1"] <= 1 and math.isfinite(r["final_loss"]) and r["scale"] > 0
    lorentz = [r for r in rows if r["topology"] == "lorentz-k16"]
    assert all(r["curvature"] > 0 and 0 < r["text_scale"] <= 1 for r in lorentz)
    md = (out / "results.md").read_text()
    assert "| joint-control | = sphere-learnable" in md and "## The six answers" in md
    assert "| lorentz-k16 | curvature |" in md
    for name in ("accuracy_vs_noise.png", "scale_vs_noise.png", "paired_differences.png",
                 "trajectories.png", "accuracy_vs_k.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"

    tables = md[md.index("## The six answers"):]
    (out / "results.md").unlink()
    assert cli.main(_fast_argv(out) + ["--report-only"]) == 0
    again = (out / "results.md").read_text()
    assert again[again.index("## The six answers"):] == tables  # every number from results.csv alone

    capsys.readouterr()
    assert cli.main(_fast_argv(out)) == 0  # resume: nothing left to run
    assert "0 cells in" in capsys.readouterr().out
    lines = (out / "results.csv").read_text().splitlines()
    kept = [line for line in lines if ",sphere-none," not in line or ",0.4," not in line
            or not line.split(",")[8] == "1"]  # as if seed 1 of that cell never got its row
    assert len(kept) == len(lines) - 1
    (out / "results.csv").write_text("\n".join(kept) + "\n")
    assert cli.main(_fast_argv(out)) == 0
    out_text = capsys.readouterr().out
    assert "1 cells in" in out_text and "sphere-none noise 0.4 batch 128 seeds 1-1" in out_text  # seed 0 not again
    again_rows = results.read_csv(out / "results.csv")
    assert len(again_rows) == len(rows) and not results.duplicates(again_rows)


def test_a_registered_geometry_runs_by_name(tmp_path):
    """A geometry registered from outside the benchmark (here: by this test) is a topology by its name, trained,
    its learned value recorded and reported, with no file of the benchmark naming it."""
    from manifold_align import register_geometry
    from manifold_align.geometries import GEOMETRIES
    from manifold_align.geometries.oblique import ObliqueGeometry

    @register_geometry("outside-test")
    class Outside(ObliqueGeometry):
        """Oblique with one learned factor on the scores."""

        def __init__(self, *, n_tokens: int, token_dim: int) -> None:
            super().__init__(n_tokens=n_tokens, token_dim=token_dim)
            self.log_weight = torch.nn.Parameter(torch.zeros(()))

        def _pairwise(self, a, b):
            return super()._pairwise(a, b) * self.log_weight.exp()

        def _paired(self, a, b):
            return super()._paired(a, b) * self.log_weight.exp()

        def values(self):
            return {"weight": self.log_weight.detach().exp()}

    try:
        out = tmp_path / "fast"
        argv = ["--mode", "fast", "--output", str(out), "--steps", "3", "--hidden", "8", "--seeds", "2",
                "--max-seeds", "2", "--noise", "0,0.4", "--k-values", "", "--batch-sizes", "",
                "--topologies", "sphere-learnable,outside-test-k4"]
        assert cli.main(argv) == 0
        rows = [r for r in results.read_csv(out / "results.csv") if r["topology"] == "outside-test-k4"]
        assert {(r["geometry"], r["k"], r["d"], r["temperature"]) for r in rows} == {("outside-test", 4, 128, "none")}
        assert all(r["weight"] != 1.0 for r in rows)  # it trained, and its values() reached the results
        md = (out / "results.md").read_text()
        assert "| outside-test-k4 |" in md and "| outside-test-k4 | weight |" in md
    finally:
        GEOMETRIES._factories.pop("outside-test", None)


def test_a_geometry_of_another_installed_package_runs_by_name(tmp_path):
    """The example package of tests/plugins/packages declares `weighted-oblique` under the entry points (conftest
    puts it on the path): the benchmark lists it among its default topologies and trains and reports it by name."""
    assert "weighted-oblique" in spec.default_topologies()
    out = tmp_path / "fast"
    argv = ["--mode", "fast", "--output", str(out), "--steps", "3", "--hidden", "8", "--seeds", "2", "--max-seeds",
            "2", "--noise", "0", "--k-values", "", "--batch-sizes", "", "--topologies",
            "sphere-learnable,weighted-oblique-k16"]
    assert cli.main(argv) == 0
    rows = [r for r in results.read_csv(out / "results.csv") if r["topology"] == "weighted-oblique-k16"]
    assert len(rows) == 2 and all(r["geometry"] == "weighted-oblique" and r["largest_weight"] > 1.0 for r in rows)
    assert "| weighted-oblique-k16 | largest_weight |" in (out / "results.md").read_text()


def test_gpu_profile_plan_and_budget_on_cpu(tmp_path, capsys):
    args = cli.resolve_fast_args(cli.build_fast_parser().parse_args(["--profile", "gpu"]))
    profile = spec.PROFILES["gpu"]
    assert {key: getattr(args, key) for key in ("device", "hidden", "batch_size", "time_budget")} == {
        key: profile[key] for key in ("device", "hidden", "batch_size", "time_budget")}
    assert args.output.name == "topologies-fast-gpu" and args.docs_img is None
    assert cli.main(["--mode", "fast", "--profile", "gpu", "--dry-run"]) == 0
    assert "cells, then seed chunks" in capsys.readouterr().out
    out = tmp_path / "gpu"
    argv = ["--mode", "fast", "--profile", "gpu", "--device", "cpu", "--output", str(out), "--steps", "2",
            "--hidden", "8", "--seeds", "2", "--noise", "0", "--k-values", "", "--batch-sizes", "",
            "--time-budget", "0.001", "--topologies", "sphere-learnable,oblique-none"]
    assert cli.main(argv) == 0
    assert "time budget of 0.001 s spent" in capsys.readouterr().out
    rows = results.read_csv(out / "results.csv")
    assert {r["profile"] for r in rows} == {"gpu"} and len(rows) == 2  # the first cell, then the budget stops it


# --------------------------------------------------------------------------------------------------
# end to end, full mode: --quick on a tiny budget, then a second call that resumes (skips everything)
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_quick_end_to_end_and_resume(tmp_path, capsys):
    out, runs = tmp_path / "results", tmp_path / "runs"
    argv = ["--quick", "--topologies", "sphere-learnable,block-control", "--noise", "0.4", "--steps", "2",
            "--batch-size", "32", "--k-values", "", "--output", str(out), "--runs-dir", str(runs),
            "--set", "data.dataset=synthetic", "--set", "data.num_samples=64", "--set", "model.name=digits-tiny",
            "--set", "eval.batch_size=64"]
    assert cli.main(argv) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert sorted(r["topology"] for r in rows) == ["block-control", "sphere-learnable"]
    for row in rows:
        assert row["steps"] == "2" and row["batch_size"] == "32" and row["dataset"] == "synthetic"
        assert 0.0 <= float(row["zero_shot_top1"]) <= 1.0 and 0.0 <= float(row["retrieval_R@1"]) <= 1.0
        assert math.isfinite(float(row["gap"]))
    by_topo = {r["topology"]: r for r in results.read_csv(out / "results.csv")}
    assert by_topo["block-control"]["geometry"] == "oblique"
    assert by_topo["block-control"]["class_tokens"] == 1 and by_topo["block-control"]["k"] == 16
    assert by_topo["block-control"]["final_temperature"] == 1.0
    cap = spec.TOPOLOGIES["sphere-learnable"].temperature["max_scale"]
    assert 1.0 < by_topo["sphere-learnable"]["final_temperature"] <= cap
    # the trajectory of every logged step (log.every = 5 of 2 steps: the last), in trajectories.csv
    points = [p for p in results.read_csv(out / "trajectories.csv") if p["topology"] == "sphere-learnable"]
    assert [p["step"] for p in points] == [2] and points[0]["mode"] == "full" and points[0]["scale"] > 1.0
    md = (out / "results.md").read_text()
    assert "full mode, task synthetic, towers digits-tiny, 2 steps, batch 32, 1 seed per point (seed 0)" in md
    # what trained each run, read here from /proc/cpuinfo: the row and the page say it
    cpu = cpu_model_name()
    assert {r["hardware"] for r in rows} == {cpu} and f"Trained on: {cpu} (2 runs)." in md
    assert "| block-control |" in md and "| sphere-learnable |" in md
    for name in ("accuracy_vs_noise.png", "scale_vs_noise.png", "trajectories.png"):
        assert (out / name).stat().st_size > 5000
    assert not any(runs.glob("*/checkpoints/*.pt"))  # deleted once a run is done

    capsys.readouterr()
    stamps = {p: p.stat().st_mtime_ns for p in runs.glob("*/summary.json")}
    assert cli.main(argv) == 0
    assert "2 runs planned, 2 with a row; shard 0/1: 0 to run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*/summary.json")} == stamps


# --------------------------------------------------------------------------------------------------
# the batch sweep: same-class pairs left out of the negatives, its own training set, folder and schema
# --------------------------------------------------------------------------------------------------
def test_same_class_per_anchor_and_the_floor_against_enumeration():
    """E[m] = (N - 1)(P - 1)/(n - 1) against every batch of 3 out of 6 pairs (3 classes of 2), and the floors."""
    import itertools

    labels = [0, 0, 1, 1, 2, 2]
    counts = [sum(labels[j] == labels[i] for j in batch if j != i)
              for batch in itertools.combinations(range(6), 3) for i in batch]
    assert spec.same_class_per_anchor(3, 6, n_classes=3) == pytest.approx(sum(counts) / len(counts), rel=1e-12)
    m = spec.same_class_per_anchor(16384, 80000)
    assert m == pytest.approx(16383 * 799 / 79999)
    assert spec.row_floor(16384, "other-class", 80000) == pytest.approx(math.log(1 + (16383 - m) / math.e))
    assert spec.row_floor(16384, "all", 80000) == spec.loss_floor(16384)


def test_old_rows_read_as_the_main_setting_and_never_match_the_batch_sweep(tmp_path):
    """A row written before `negatives` and `train_pairs` existed is a main-grid run (all negatives, 5000 pairs):
    the main sweep does not train it again, the batch sweep's runs are other runs, and appending them to that
    older file adds the two columns rather than dropping them."""
    path = tmp_path / "results.csv"
    old_columns = [c for c in grid.COLUMNS if c not in ("negatives", "train_pairs")]
    results.append_rows(path, [_fast_row("oblique-none", 0.0, 0, 0.5, batch=32)], old_columns)
    main = cli.resolve_fast_args(cli.build_fast_parser().parse_args([]))
    batch = cli.resolve_fast_args(cli.build_fast_parser().parse_args(["--sweep", "batch"]))
    done = {results.run_key(r) for r in results.read_csv(path)}
    cell = grid.Cell("oblique-none", 0.0, 32, (0,), "batch")
    assert cell.missing(done, main) is None
    assert cell.missing(done, batch) == cell
    masked = _fast_row("oblique-none", 0.0, 0, 0.6, batch=32, negatives="other-class", train_pairs=80000)
    results.append_rows(path, [masked], grid.COLUMNS)
    rows = results.read_csv(path)
    assert [(r["negatives"], r["train_pairs"], r["zero_shot_top1"]) for r in rows] == [
        ("all", 5000, 0.5), ("other-class", 80000, 0.6)]
    assert not results.duplicates(rows)
    assert report.main_rows(rows) == [rows[0]]  # the masked row is no main-grid row


def test_the_engine_passes_each_batch_s_class_ids():
    """negatives="other-class": the same loss as "all" on a batch of distinct classes, a smaller one on a batch
    with repeated classes (the same-class pairs left out), through the engine's one training step."""
    from topology import fast

    data = fast.build_data(0.0, (0,))
    distinct = torch.tensor([[c * 50 for c in range(8)]])  # 50 pairs per class: rows 0, 50, ... are classes 0..7
    repeated = torch.tensor([[0, 1, 2, 3, 50, 51, 52, 53]])  # classes 0 and 1, four pairs each
    for idx, same in ((distinct, True), (repeated, False)):
        losses = {}
        for negatives in spec.NEGATIVES:
            model = fast.FastModel(spec.topology("oblique-none"), (0,), data.train_images.shape[1],
                                   data.text_table.shape[1], 16)
            loss_fns = [fast.geometries.contrastive_loss(g) for g in model.geometry]
            losses[negatives] = float(fast.train_step(model, fast.build_optimizer(model), loss_fns, data, idx,
                                                      negatives)[0])
        assert data.train_labels[idx[0]].unique().numel() == (8 if same else 2)
        if same:
            assert losses["other-class"] == losses["all"]
        else:
            assert losses["other-class"] < losses["all"] - 0.1


def _planted_batch(tmp_path, setting, sizes):
    negatives, pairs = setting
    rows = [_fast_row(t, 0.0, s, 0.5 + 0.01 * s + 0.001 * n.bit_length(), batch=n, negatives=negatives,
                      train_pairs=pairs, final_loss=spec.row_floor(n, negatives, pairs) + 0.1 * (s + 1))
            for n in sizes for t in spec.BATCH_TOPOLOGIES for s in range(3)]
    return _planted(tmp_path, rows)


def test_batch_table_states_how_same_class_negatives_count_and_the_largest_n(tmp_path):
    out = _planted_batch(tmp_path, ("other-class", 80000), (32, 1024, 16384))
    rows, _, _ = results.load(out)
    md = report.markdown(rows, command="test", machine="test machine")
    assert md.startswith("# Batch sweep, fast mode")
    assert "negatives: other-class" in md and "same-class pairs left out of the negatives" in md
    assert "80000 training pairs (800 per class, 100 classes)" in md
    assert "Largest N in these rows: 16384 (20.5% of the training pairs)." in md
    m = 16383 * 799 / 79999
    line = next(x for x in md.splitlines() if x.startswith("| 16384 |"))
    assert line.startswith(f"| 16384 | {m:.1f} (left out) | {16383 - m:.1f} | "
                           f"{math.log(1 + (16383 - m) / math.e):.3f} |")
    # loss minus floor: 0.1, 0.2, 0.3 over the seeds, mean 0.2, from the rows and the masked floor
    assert "+0.200 ± " in md and "left out of the negatives)" in md
    assert "lower" in md or "higher" in md or stats.NO_DIFFERENCE in md
    # the old sweep's rows say that the same-class captions were counted
    (tmp_path / "old").mkdir()
    old = _planted_batch(tmp_path / "old", ("all", 5000), (32, 64))
    md_old = "\n".join(report.table_batch(results.load(old)[0]))
    assert "every other pair of the batch a negative, same-class captions included" in md_old
    assert f"| 64 | {63 * 49 / 4999:.1f} (counted) | 63.0 | {spec.loss_floor(64):.3f} |" in md_old


def test_a_page_block_of_answers_from_a_batch_sweep_folder_gives_its_range_sentence(tmp_path):
    """A folder with the batch sweep alone has no main grid: the answers are the large-batch range sentence."""
    (tmp_path / "results" / "batch").mkdir(parents=True)
    out = _planted_batch(tmp_path / "results" / "batch", ("other-class", 80000), (32, 1024))
    text = report.block("answers", [out])
    assert text.startswith("Batch sweep N = 32..1024 (80000 training pairs;")
    assert "left out of the negatives" in text and text.count("\n") == 1
    page = tmp_path / "page.md"
    page.write_text("<!-- topology-report answers results/batch -->\nold\n<!-- /topology-report -->\n")
    report.update_pages([page], tmp_path)
    assert text in page.read_text()


@pytest.mark.slow
def test_batch_sweep_end_to_end_into_its_own_folder(tmp_path, capsys):
    out = tmp_path / "batch"
    argv = ["--mode", "fast", "--sweep", "batch", "--output", str(out), "--steps", "3", "--hidden", "8",
            "--seeds", "2", "--batch-sizes", "32,64"]
    assert cli.main(argv) == 0
    rows = results.read_csv(out / "results.csv")
    assert len(rows) == 2 * 2 * 3
    assert {(r["negatives"], r["train_pairs"], r["noise"]) for r in rows} == {("other-class", 80000, 0.0)}
    assert {r["loss_floor"] for r in rows if r["batch_size"] == 64} == {spec.row_floor(64, "other-class", 80000)}
    md = (out / "results.md").read_text()
    assert "Largest N in these rows: 64" in md and "same-class pairs left out of the negatives" in md
    assert (out / "batch_sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "accuracy_vs_noise.png").exists()
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert "0 cells in" in capsys.readouterr().out
    assert cli.main(argv + ["--dry-run"]) == 0
    assert "80000 training pairs, negatives other-class" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--batch-sizes"):
        cli.resolve_fast_args(cli.build_fast_parser().parse_args(["--sweep", "batch", "--batch-sizes", "100000"]))


def test_the_dry_run_prices_the_batch_sweep_from_the_measured_steps(tmp_path):
    """Log-log between measured N, t ~ N^2 above the largest, t ~ N below the smallest; sphere-none priced as
    sphere-learnable; two cores at half the one-thread total."""
    args = cli.resolve_fast_args(cli.build_fast_parser().parse_args(
        ["--sweep", "batch", "--batch-sizes", "512,2048,8192", "--topologies", "sphere-none,oblique-none"]))
    point = dict(seeds=5, load_start=2.0)
    measured = [{**point, "topology": t, "batch_size": n, "seconds_per_step": s}
                for t in ("oblique-none", "sphere-learnable") for n, s in ((1024, 1.0), (4096, 16.0))]
    path = tmp_path / "step_cost.json"
    path.write_text(json.dumps({"machine": "test machine", "points": measured}))
    lines = grid.cost_plan(args, grid.first_pass(args), path)
    hours = {(t, n): 300 * s / 3600 for t in ("sphere-none", "oblique-none")
             for n, s in ((512, 0.5), (2048, 4.0), (8192, 64.0))}
    for (t, n), h in hours.items():
        assert f"#   {t} batch {n}: {h:.2f} h on one thread" in lines
    total = sum(hours.values())
    assert lines[-1] == f"# total {total:.1f} h on one thread; on 2 cores at best {total / 2:.1f} h (--threads 2)"
    path.write_text(json.dumps({"machine": "test machine", "points": measured[:2]}))  # no sphere-learnable
    assert "no 5-seed measurement of sphere-learnable" in grid.cost_plan(args, grid.first_pass(args), path)[0]


def _planted_plots(tmp_path):
    """A fast folder with a main grid (batch 128, noise 0 and 0.4), a batch sweep at noise 0 (N = 32, 128, 256)
    and a k sweep (k = 4 at noise 0.4); trajectories at batch 32 read 90% and at batch 128 50%, so a plot that
    pooled the batch sweep into the main grid's trajectories would show it."""
    rows, traj = [], []
    for s in range(3):
        for topo in ("sphere-learnable", "sphere-none", "oblique-none"):
            for n in (0.0, 0.4):
                # the CLIP sphere's scale: 15 at noise 0, 12 at 0.4 (a -20% change); others 1
                scale = (15.0 if n == 0 else 12.0) if topo == "sphere-learnable" else 1.0
                rows.append(_fast_row(topo, n, s, 0.5 + 0.01 * s - 0.2 * n, scale=scale, scale_at_80pct=scale))
            for batch in (32, 256):
                rows.append(_fast_row(topo, 0.0, s, 0.4 + 0.01 * s, batch=batch))
            for batch, acc in ((128, 0.5), (32, 0.9)):
                traj += [{"profile": "cpu", "topology": topo, "noise": 0.0, "batch_size": batch, "steps": 300,
                          "hidden": 128, "seed": s, "step": step, "zero_shot_top1": acc, "loss": 1.0,
                          "scale": 15.0 if topo == "sphere-learnable" else 1.0} for step in (150, 300)]
        rows.append(_fast_row(spec.k_name(4), 0.4, s, 0.45))
    results.append_rows(tmp_path / "results.csv", rows, grid.COLUMNS)
    results.append_rows(tmp_path / "trajectories.csv", traj, grid.TRAJECTORY_COLUMNS)
    return tmp_path


def test_plots_show_what_their_captions_say_and_fit_the_figure(tmp_path, monkeypatch):
    """Each plot's caption names the mode, budget and seeds; trajectories.png plots the main batch only and says
    so; scale_vs_noise.png is the paired % change on a linear axis; no title or caption leaves the figure."""
    import matplotlib.figure

    folder, seen, save = _planted_plots(tmp_path), {}, matplotlib.figure.Figure.savefig

    def recording(fig, path, *args, **kwargs):
        save(fig, path, *args, **kwargs)  # drawn at its final layout, then inspected
        box = fig.bbox
        texts = [t for ax in fig.axes for t in (ax.title, ax.xaxis.label, ax.yaxis.label)] + list(fig.texts)
        outside = [t.get_text() for t in texts if t.get_text() and not (
            box.x0 - 1 <= (e := t.get_window_extent()).x0 and e.x1 <= box.x1 + 1 and box.y0 - 1 <= e.y0
            and e.y1 <= box.y1 + 1)]
        seen[Path(path).name] = (fig, " ".join(t.get_text() for t in fig.texts), outside)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", recording)
    report.write_report(folder, command="cmd")
    assert set(seen) == {"accuracy_vs_noise.png", "scale_vs_noise.png", "paired_differences.png", "batch_sweep.png",
                         "accuracy_vs_k.png", "trajectories.png"}
    for name, (fig, caption, outside) in seen.items():
        assert not outside, f"{name}: text outside the figure: {outside}"
        assert "fast mode" in caption and "300 steps" in caption and "seeds per point" in caption, (name, caption)
    fig, caption, _ = seen["trajectories.png"]
    assert "batch 128," in caption and "32" not in caption and "256" not in caption
    accuracy = fig.axes[0]
    assert {tuple(line.get_ydata()) for line in accuracy.get_lines() if line.get_label()[0] != "_"} == {(50.0, 50.0)}
    fig, caption, _ = seen["scale_vs_noise.png"]
    scale_axes = fig.axes[0]
    assert scale_axes.get_yscale() == "linear"
    ys = [list(c.lines[0].get_ydata()) for c in scale_axes.containers if c.get_label() == "sphere-learnable"]
    assert ys == [pytest.approx([0.0, -20.0])]
    fig, caption, _ = seen["batch_sweep.png"]
    assert "batch 32, 128, 256" in caption


# --------------------------------------------------------------------------------------------------
# generated blocks of the README and docs, and the agreement between two folders
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("page", ["README.md", "docs/benchmarks.md"])
def test_generated_blocks_match_the_committed_results(page):
    text = (REPO / page).read_text()
    assert report.BLOCK.search(text), f"{page} has no generated topology-report block"
    assert report.render_blocks(text, REPO) == text, (
        f"{page} drifted from its results folders: python benchmarks/topologies.py --mode fast --report-only "
        f"--drop-duplicates --docs {page}")


def _summary_folder(tmp_path):
    # oblique-none minus the CLIP sphere at noise 0: +60, -30, +30 points (mean +20, interval +-112: includes 0)
    gain = [0.60, -0.30, 0.30]
    rows = [_fast_row("sphere-learnable", n, s, 0.35) for n in (0.0, 0.4) for s in range(3)]
    rows += [_fast_row("oblique-none", 0.0, s, 0.35 + gain[s]) for s in range(3)]
    rows += [_fast_row("oblique-none", 0.4, s, 0.37 + 0.001 * s) for s in range(3)]  # +2.0, +2.1, +2.2
    folder = tmp_path / "fast"
    folder.mkdir()
    results.append_rows(folder / "results.csv", rows, grid.COLUMNS)
    page = tmp_path / "README.md"
    # a marker's folder is relative to the repository root, or absolute as here
    page.write_text(f"# x\n\n<!-- topology-report summary {folder} -->\nstale\n<!-- /topology-report -->\n\nafter\n")
    return folder, page, gain, rows


def test_readme_summary_words_come_from_the_interval_and_a_duplicate_is_refused(tmp_path):
    folder, page, gain, rows = _summary_folder(tmp_path)
    assert cli.main(["--mode", "fast", "--report-only", "--output", str(folder), "--docs", str(page)]) == 0
    text = page.read_text()
    assert "stale" not in text and text.endswith("<!-- /topology-report -->\n\nafter\n")
    assert (f"`oblique-none` (OB(32, 16), no temperature) minus `sphere-learnable`: noise 0: +20.0 ± "
            f"{100 * _half(gain):.1f} (3) points (no difference detected); noise 0.4: +2.1 ± "
            f"{100 * _half([0.020, 0.021, 0.022]):.1f} (3) points (higher).") in text
    assert text.startswith(f"# x\n\n<!-- topology-report summary {folder} -->\n12 runs, 0.4 minutes of run time")

    report.write_report(folder, command="cmd", compare_with=folder)
    assert "## Agreement with `fast`" in (folder / "results.md").read_text()

    results.append_rows(folder / "results.csv", [dict(rows[0], zero_shot_top1=0.9)], grid.COLUMNS)
    with pytest.raises(results.DuplicateRunError, match="sphere-learnable noise 0 batch 128 seed 0 "):
        report.render_blocks(text, tmp_path)
    with pytest.raises(SystemExit, match="report refused: .*different results"):
        cli.main(["--mode", "fast", "--report-only", "--drop-duplicates", "--output", str(folder), "--docs", str(page)])
    assert page.read_text() == text  # a refused report writes nothing


def test_report_flags_are_checked_before_any_run(tmp_path):
    with pytest.raises(SystemExit, match="--compare-with: expected a results folder holding results.csv, got"):
        cli.main(["--mode", "fast", "--output", str(tmp_path), "--compare-with", str(tmp_path / "none")])
    (tmp_path / "page.md").write_text("no block\n")
    with pytest.raises(SystemExit, match="--docs: expected a Markdown page with a <!-- topology-report"):
        cli.main(["--output", str(tmp_path), "--docs", str(tmp_path / "page.md")])
    assert not (tmp_path / "results.csv").exists()


def test_agreement_table_judges_only_resolved_comparisons(tmp_path):
    """Fast and full rows planted so that (a) agrees, (b) disagrees and one k is not resolved."""
    def runs(mode_row, shift):
        rows = []
        for s in range(4):
            jitter = 0.001 * s
            rows += [mode_row("sphere-learnable", 0.0, s, 0.50 + jitter),
                     mode_row("sphere-none", 0.0, s, 0.20 + jitter),
                     mode_row("oblique-none", 0.0, s, 0.50 + shift + jitter),  # (b): +shift points
                     mode_row("oblique-none", 0.4, s, 0.40), mode_row(spec.k_name(4), 0.4, s, 0.40 + 0.1 * (s % 2))]
        return rows

    fast_rows = [results.normalize(r) for r in runs(_fast_row, 0.05)]
    full_rows = [results.normalize(_full_row(*a)) for a in
                 [(r["topology"], r["noise"], r["seed"], r["zero_shot_top1"]) for r in runs(_fast_row, -0.05)]]
    table = "\n".join(report.agreement(fast_rows, full_rows, other_name="`full`"))
    assert "| fast mode (points) | full mode (points) | agree? |" in table
    assert ("| (a) sphere-none minus sphere-learnable, noise 0 | -30.0 ± 0.0 (4) (lower) | -30.0 ± 0.0 (4) (lower) "
            "| yes |") in table
    assert ("| (b) oblique-none minus sphere-learnable, noise 0 | +5.0 ± 0.0 (4) (higher) | -5.0 ± 0.0 (4) (lower) "
            "| no |") in table
    k_half = 100 * math.sqrt(sum((x - 0.05) ** 2 for x in (0, .1, 0, .1)) / 3) * 3.182446305 / 2
    assert f"| (c) k = 4 minus k = 16, noise 0.4 | +5.0 ± {k_half:.1f} (4) (no difference detected) |" in table
    assert ("| (a) oblique-none minus sphere-none, noise 0 | +35.0 ± 0.0 (4) (higher) | +25.0 ± 0.0 (4) (higher) "
            "| yes |") in table
    assert table.count("| not resolved |") == 1 and "2 agree, 1 disagree, 1 not resolved, of 4 comparisons" in table


def test_the_page_says_what_trained_the_runs_and_counts_the_rows_that_do_not_say():
    rows = [dict(_full_row("sphere-learnable", 0.0, s, 0.5), hardware=name)
            for s, name in enumerate(["AMD EPYC", "AMD EPYC", "NVIDIA H200", ""])]
    md = report.markdown([results.normalize(r) for r in rows], command="test", machine="test machine")
    assert "Trained on: AMD EPYC (2 runs), NVIDIA H200 (1 run), not recorded (1 run)." in md
    older = [results.normalize(dict(r, hardware="")) for r in rows]
    assert "Trained on" not in report.markdown(older, command="test", machine="test machine")


def test_agreement_judges_a_wide_interval_that_excludes_0_and_not_a_wide_one_that_includes_it():
    """Wide intervals of one sign on both sides agree (a verdict at any width); a narrow interval around 0
    against a verdict disagrees; a wide interval around 0 is not resolved."""
    def runs(mode_row, gains):
        rows = []
        for s, (range_gain, oblique_gain) in enumerate(gains):
            rows += [mode_row("sphere-learnable", 0.0, s, 0.50), mode_row("sphere-none", 0.0, s, 0.50 + range_gain),
                     mode_row("oblique-none", 0.0, s, 0.50 + oblique_gain)]
        return rows

    # fast: sphere-none -30 +- 7.5 (lower, wide); oblique-none +0.2 +- 0.25 (narrow, includes 0)
    fast = [results.normalize(r) for r in runs(_fast_row, [(-0.27, 0.001), (-0.33, 0.003), (-0.30, 0.002)])]
    # full: sphere-none -50 +- 25 (lower, wide); oblique-none +10 +- 5 (higher, wide)
    full = [results.normalize(_full_row(*a)) for a in
            [(r["topology"], r["noise"], r["seed"], r["zero_shot_top1"])
             for r in runs(_fast_row, [(-0.40, 0.08), (-0.60, 0.12), (-0.50, 0.10)])]]
    table = "\n".join(report.agreement(fast, full, other_name="`full`"))
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| (")}
    sphere = rows["(a) sphere-none minus sphere-learnable, noise 0"]
    assert "(lower) | " in sphere and sphere.endswith("| yes |")
    assert stats.t_interval([100 * d for d in stats.paired(full, "sphere-none", "sphere-learnable", 0.0)])[1] > 2
    oblique = rows["(b) oblique-none minus sphere-learnable, noise 0"]
    assert "(no difference detected) | " in oblique and "(higher)" in oblique and oblique.endswith("| no |")
    # a wide interval around 0 on one side: not resolved, whatever the other side says
    wide = [results.normalize(_full_row(*a)) for a in
            [(r["topology"], r["noise"], r["seed"], r["zero_shot_top1"])
             for r in runs(_fast_row, [(-0.40, 0.10), (-0.60, -0.08), (-0.50, 0.01)])]]
    table = "\n".join(report.agreement(fast, wide, other_name="`full`"))
    line = next(l for l in table.splitlines() if l.startswith("| (b) oblique-none minus sphere-learnable, noise 0"))
    assert "(no difference detected) | " in line and line.endswith("| not resolved |")
