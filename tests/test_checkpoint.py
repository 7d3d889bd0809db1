"""Tests for training/checkpoint.py: atomic writes, pruning, latest resolution."""

from __future__ import annotations

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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001.pt"]
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
