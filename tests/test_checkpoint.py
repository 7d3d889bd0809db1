"""Tests for training/checkpoint.py: atomic writes, pruning, latest resolution, checksums, damaged files, a full disk."""

from __future__ import annotations

import json

import pytest
import torch

from manifold_align_train import atomic_write as atomic_write_module
from manifold_align_train import checkpoint as ckpt


def _state(value: float) -> dict:
    return {"step": int(value), "model": {"w": torch.full((4,), value)}}


def test_save_and_load_round_trip(tmp_path):
    path = ckpt.save_checkpoint(_state(3), tmp_path, 3, keep=2)
    assert path.name == "step_00000003.pt"
    loaded = ckpt.load_checkpoint(path)
    assert loaded["step"] == 3 and torch.equal(loaded["model"]["w"], torch.full((4,), 3.0))


def test_keep_latest_n(tmp_path):
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(_state(step), tmp_path, step, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [3, 4]
    assert ckpt.find_latest_checkpoint(tmp_path).name == "step_00000004.pt"


def test_latest_of_missing_or_empty_folder(tmp_path):
    assert ckpt.find_latest_checkpoint(tmp_path / "nope") is None
    assert ckpt.find_latest_checkpoint(tmp_path) is None


class _Unpicklable:
    """Makes ``torch.save`` fail half way through writing."""

    def __reduce__(self):
        raise RuntimeError("disk full (simulated)")


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path):
    ckpt.save_checkpoint(_state(1), tmp_path, 1, keep=1)
    bad = {"model": {"w": torch.zeros(1000)}, "boom": _Unpicklable()}
    with pytest.raises(RuntimeError, match="disk full"):
        ckpt.save_checkpoint(bad, tmp_path, 2, keep=1)
    # no partial file under any name, the previous checkpoint untouched and still "latest"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001.pt", "step_00000001.pt.sha256"]
    assert ckpt.load_checkpoint(ckpt.find_latest_checkpoint(tmp_path))["step"] == 1


def test_overwrite_is_atomic_replace(tmp_path, monkeypatch):
    # A crash between writing the temp file and the rename must leave the old file readable.
    ckpt.save_checkpoint(_state(5), tmp_path, 5, keep=3)

    def crash(src, dst):
        raise OSError("killed before rename (simulated)")

    monkeypatch.setattr(atomic_write_module.os, "replace", crash)
    with pytest.raises(OSError, match="killed before rename"):
        ckpt.save_checkpoint(_state(6), tmp_path, 5, keep=3)
    monkeypatch.undo()
    assert ckpt.load_checkpoint(tmp_path / "step_00000005.pt")["step"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000005.pt"]


def test_temp_files_are_not_checkpoints(tmp_path):
    (tmp_path / ".step_00000009.pt.abc.tmp").write_bytes(b"partial")
    ckpt.save_checkpoint(_state(2), tmp_path, 2, keep=1)
    assert ckpt.find_latest_checkpoint(tmp_path).name == "step_00000002.pt"


class _CreatesFile:
    """Unpickling this object opens (creates) ``path``: what a hostile checkpoint could do instead."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_checkpoint_carrying_a_pickled_object_is_refused_without_running_it(tmp_path, capsys):
    from manifold_align_train import cli

    marker = tmp_path / "created_by_unpickling"
    path = tmp_path / "run" / "checkpoints" / "step_00000001.pt"
    path.parent.mkdir(parents=True)
    torch.save({**_state(1), "payload": _CreatesFile(marker)}, path)
    try:
        ckpt.load_checkpoint(path)
        error = None
    except Exception as caught:  # noqa: BLE001 (checked below, after the marker)
        error = caught
    assert not marker.exists(), "loading the checkpoint ran the code in its pickle"
    assert type(error).__name__ == "UnsafeCheckpointError" and isinstance(error, ValueError)
    assert "refused to load: it holds a pickled Python object (io.open)" in str(error)
    for command in (["eval", "--checkpoint", str(path)], ["train", "--resume", str(path)]):
        capsys.readouterr()
        assert cli.main(command) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "refused to load" in err and str(path) in err
        assert not marker.exists()


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    from manifold_align_train.rng import rng_state, seed_everything, set_rng_state

    seed_everything(5)
    random.gauss(0, 1), np.random.normal()  # leave cached gaussians in both states
    ckpt.save_checkpoint({"step": 1, "rng": [rng_state()]}, tmp_path, 1, keep=1)

    def draws():
        return random.random(), random.gauss(0, 1), np.random.normal(), np.random.rand(), torch.rand(2).tolist()

    expected = draws()
    seed_everything(99)
    set_rng_state(ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path, 1))["rng"][0])
    assert draws() == expected


# -- checksums, damaged files, a full disk ------------------------------------------------------------
def test_the_checksum_file_is_what_sha256sum_checks(tmp_path):
    import shutil
    import subprocess

    path = ckpt.save_checkpoint(_state(3), tmp_path, 3, keep=2)
    assert ckpt.checksum_path(path).name == "step_00000003.pt.sha256"
    if shutil.which("sha256sum") is None:  # the coreutils tool is the independent reference
        pytest.skip("sha256sum is not installed")
    check = subprocess.run(["sha256sum", "-c", ckpt.checksum_path(path).name], cwd=tmp_path, capture_output=True,
                           text=True)
    assert check.returncode == 0 and "step_00000003.pt: OK" in check.stdout, check.stdout + check.stderr


def test_pruning_removes_the_checksum_files_too(tmp_path):
    for step in (1, 2, 3):
        ckpt.save_checkpoint(_state(step), tmp_path, step, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000003.pt", "step_00000003.pt.sha256"]


@pytest.mark.parametrize("damage", ["truncated", "one byte changed"])
def test_a_damaged_checkpoint_is_refused_with_the_reason(tmp_path, damage):
    path = ckpt.save_checkpoint(_state(3), tmp_path, 3, keep=2)
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]  # what a node lost mid-write leaves on a shared filesystem
    else:
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.DamagedCheckpointError, match=r"step_00000003\.pt is damaged: its SHA-256 .* does not "
                                                          r"match step_00000003\.pt\.sha256"):
        ckpt.load_checkpoint(path)


def test_a_truncated_checkpoint_without_its_checksum_is_refused_by_the_zip_reader(tmp_path):
    path = ckpt.save_checkpoint(_state(3), tmp_path, 3, keep=2)
    ckpt.checksum_path(path).unlink()  # as written before checksums
    assert ckpt.load_checkpoint(path)["step"] == 3
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ckpt.DamagedCheckpointError, match=r"step_00000003\.pt cannot be read \(.*\): truncated"):
        ckpt.load_checkpoint(path)


@pytest.mark.slow
def test_resume_latest_skips_a_truncated_newest_checkpoint_and_ends_like_the_uninterrupted_run(tmp_path, straight_runs):
    from fault_runs import assert_same_weights, run, sets, train_cmd

    job = tmp_path / "run"
    done = run(train_cmd(job, *sets("train.checkpoint_every=4")), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    newest = ckpt.find_latest_checkpoint(job / "checkpoints")
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 3])
    done = run(train_cmd(job, "--resume", "latest", *sets("train.checkpoint_every=4")), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (f"--resume latest: skipping step_00000016.pt: {newest} is damaged: its SHA-256" in done.stderr
            and "renamed to step_00000016.pt.damaged" in done.stderr), done.stderr[-3000:]
    summary = json.loads((job / "summary.json").read_text())
    assert summary["resumed_from"].endswith("step_00000012.pt")
    assert (job / "checkpoints" / "step_00000016.pt.damaged").is_file()
    assert_same_weights(job, straight_runs(1))


def test_eval_refuses_a_damaged_checkpoint_in_one_line(tmp_path, capsys):
    from manifold_align_train import cli

    path = ckpt.save_checkpoint(_state(3), tmp_path / "run" / "checkpoints", 3, keep=2)
    path.write_bytes(path.read_bytes()[:-10])
    assert cli.main(["eval", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"manifold-align eval: {path} is damaged"), err


@pytest.fixture
def small_disk(tmp_path):
    """A 100 MiB tmpfs (a real filesystem that fills up), unmounted after the test; root only."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoints_and_says_what_is_needed(small_disk, capsys):
    """The tiny run's checkpoints are 40 MiB (AdamW moments of the 49408-word embedding): the third write
    fills the 100 MiB disk (the older ones are deleted only once a new one is complete)."""
    from fault_runs import SETTINGS

    from manifold_align_train import cli

    job = small_disk / "run"
    args = [arg for item in SETTINGS + ["train.steps=8", "train.checkpoint_every=2", "train.keep_checkpoints=2"]
            for arg in ("--set", item)]
    assert cli.main(["train", "--output", str(job), *args]) == 1
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    folder = job / "checkpoints"
    assert line.startswith(f"manifold-align train: no space left in {folder} to write step_00000006.pt: a "
                           f"checkpoint needs about "), err[-3000:]
    assert "the previous checkpoints are intact (newest: step_00000004.pt)" in line
    assert sorted(p.name for p in folder.iterdir()) == ["step_00000002.pt", "step_00000002.pt.sha256",
                                                        "step_00000004.pt", "step_00000004.pt.sha256"]
    assert ckpt.load_checkpoint(folder / "step_00000004.pt")["step"] == 4
