"""``manifold-align train``'s answers to bad input: one line on stderr, exit status 2, nothing written.

Each of these used to end in a traceback (or, for a too-low ``train.steps`` on resume, in silence and a
duplicated evaluation row).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from manifold_align_train import checkpoint as ckpt
from manifold_align_train.cli import main

QUICK = ["data.dataset=synthetic", "data.num_samples=32", "data.batch_size=16", "data.image_size=32",
         "train.steps=3", "train.warmup=1", "train.checkpoint_every=1", "train.keep_checkpoints=3",
         "log.progress=false", "log.tensorboard=false", "train.threads=1"]


def _train(capsys, *args: str, sets=QUICK) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["train", *args, *[arg for item in sets for arg in ("--set", item)]])
    return code, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "--output", str(run), *[a for item in QUICK for a in ("--set", item)]]) == 0
    return run


@pytest.mark.parametrize("override, key", [("model.token_dim=1", "'model.token_dim'"),
                                           ("model.name=ViT-B-61", "did you mean 'ViT-B-16'"),
                                           ("model.geometry=obliq", "did you mean 'oblique'"),
                                           ("data.dataset=digit", "did you mean 'digits'")])
def test_a_bad_value_fails_before_anything_runs_and_leaves_nothing(tmp_path, capsys, override, key):
    code, err = _train(capsys, "--output", str(tmp_path / "run"), sets=QUICK + [override])
    assert code == 2 and key in _one_line(err)
    assert not (tmp_path / "run").exists()


def test_a_missing_config_file_is_one_line(tmp_path, capsys):
    code, err = _train(capsys, "--config", str(tmp_path / "nope.yaml"), "--output", str(tmp_path / "run"))
    assert code == 2 and "no configuration file at" in _one_line(err)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_new_run_into_a_folder_with_checkpoints_is_one_line(finished_run, capsys):
    code, err = _train(capsys, "--output", str(finished_run))
    assert code == 2 and "already holds checkpoints" in _one_line(err) and "--resume latest" in err


@pytest.mark.slow
def test_resuming_an_older_checkpoint_beside_later_ones_is_one_line(finished_run, capsys):
    (oldest_step, oldest), *_ = ckpt.list_checkpoints(finished_run / "checkpoints")
    code, err = _train(capsys, "--output", str(finished_run), "--resume", str(oldest))
    assert code == 2 and f"resuming at step {oldest_step}" in _one_line(err)
    assert len(ckpt.list_checkpoints(finished_run / "checkpoints")) == 3  # nothing deleted


@pytest.mark.slow
def test_resuming_with_fewer_steps_says_so_and_keeps_one_row_per_step(finished_run, capsys):
    for _ in range(2):
        code, err = _train(capsys, "--output", str(finished_run), "--resume", "latest",
                           sets=QUICK + ["train.steps=2"])
        assert code == 0
        assert "the checkpoint is at step 3 and train.steps is 2: nothing to train" in err
    rows = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    keys = [(row["step"], row["kind"]) for row in rows]
    assert len(keys) == len(set(keys)), keys
    assert keys.count((3, "eval")) == 1
