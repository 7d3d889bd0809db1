"""Tests for training/atomic_write.py, through the files written with it: summary.json and metrics.jsonl."""

from __future__ import annotations

import json
import os
import stat

import pytest

import manifold_align_train.atomic_write as atomic_write_module
from manifold_align_train.atomic_write import atomic_write, atomic_write_text
from manifold_align_train.metrics_log import MetricsLog
from manifold_align_train.run_summary import write_json


def test_text_round_trip_and_no_temporary_left(tmp_path):
    path = atomic_write_text(tmp_path / "sub" / "a.txt", "héllo\n")
    assert path.read_text(encoding="utf-8") == "héllo\n"
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]


def test_an_error_while_writing_keeps_the_previous_file(tmp_path):
    path = atomic_write_text(tmp_path / "a.txt", "old")

    def fail(handle):
        handle.write(b"half of the new con")
        raise RuntimeError("disk full (simulated)")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_summary_json_survives_a_crash_before_the_rename(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_json({"step": 1}, path)

    def crash(src, dst):
        raise OSError("killed before rename (simulated)")

    monkeypatch.setattr(atomic_write_module.os, "replace", crash)
    with pytest.raises(OSError, match="killed before rename"):
        write_json({"step": 2}, path)
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_metrics_truncation_is_atomic(tmp_path, monkeypatch):
    log = MetricsLog(tmp_path, tensorboard=False)
    for step in (1, 2, 3):
        log.log(step, {"loss": float(step)})
    before = log.path.read_text()

    def crash(src, dst):
        raise OSError("killed before rename (simulated)")

    monkeypatch.setattr(atomic_write_module.os, "replace", crash)
    with pytest.raises(OSError):
        log.truncate_after(1)
    monkeypatch.undo()
    assert log.path.read_text() == before
    log.truncate_after(1)
    assert [json.loads(line)["step"] for line in log.path.read_text().splitlines()] == [1]


@pytest.fixture(params=[(0o022, 0o644), (0o027, 0o640)], ids=["umask022", "umask027"])
def umask(request):
    """Run under a given umask (restored after); yields ``(umask, the mode open() would give a file)``."""
    old = os.umask(request.param[0])
    try:
        yield request.param
    finally:
        os.umask(old)


def test_outputs_get_the_mode_open_would_give_them(tmp_path, umask):
    import torch

    from manifold_align_train.checkpoint import save_checkpoint

    _, expected = umask
    with open(tmp_path / "plain.txt", "w"):
        pass
    log = MetricsLog(tmp_path, tensorboard=False)
    log.log(1, {"loss": 1.0})
    log.log(2, {"loss": 0.5})
    log.truncate_after(1)  # rewritten through atomic_write
    write_json({"step": 1}, tmp_path / "summary.json")
    written = [tmp_path / "summary.json", log.path, atomic_write_text(tmp_path / "a.txt", "x"),
               save_checkpoint({"w": torch.zeros(2)}, tmp_path / "checkpoints", 1, keep=1)]
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == expected
    assert {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in written} == {
        path.name: oct(expected) for path in written}
