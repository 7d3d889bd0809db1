"""A geometry defined in another package (tests/plugins/packages, an entry point in ``manifold_align.geometries``) is
found by name everywhere, with no file of manifold-align naming it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import manifold_align as ma

NAME = "weighted-oblique"


def test_the_installed_geometry_is_listed_and_built_by_name():
    assert NAME in ma.list_geometries()
    geometry = ma.get_geometry(NAME, n_tokens=4, token_dim=3)
    assert type(geometry).__module__ == "manifold_align_toy_geometry" and geometry.name == NAME
    x = geometry.project(torch.randn(5, 4, 3))
    # at initialization the weights are equal: the oblique inner product
    oblique = ma.get_geometry("oblique", n_tokens=4, token_dim=3)
    torch.testing.assert_close(geometry.pairwise(x, x), oblique.pairwise(x, x))


def test_unknown_names_list_the_built_in_and_the_installed_geometries():
    with pytest.raises(ValueError, match="unknown geometry 'weighted-obliqe'.*weighted-oblique"):
        ma.get_geometry("weighted-obliqe", n_tokens=4, token_dim=3)


@pytest.mark.slow
def test_the_trainer_trains_the_installed_geometry_by_name(tmp_path):
    command = [sys.executable, "-m", "manifold_align_train", "train", "--output", str(tmp_path / "run"),
               "--set", f"model.geometry={NAME}", "--set", "train.steps=60", "--set", "train.warmup=5",
               "--set", "log.progress=false", "--set", "log.tensorboard=false", "--set", "train.threads=1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["config"]["model"]["geometry"] == NAME
    # it trained: well above chance (10 digit classes) in 60 steps, and its learned weights moved
    assert summary["final_metrics"]["zero_shot_top1"] > 0.3
    assert summary["final_geometry"]["largest_weight"] != 1.0
    rows = [json.loads(line) for line in Path(summary["outputs"]["metrics"]).read_text().splitlines()]
    assert any("geometry_largest_weight" in row for row in rows)
