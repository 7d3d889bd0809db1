"""Tests of training/metrics_log.py's progress output, through real ``manifold-align train`` processes.

Where stderr goes decides the form: a file or a pipe (a scheduler's log, ``| tee``) gets one plain line per
log step, a terminal (a pseudo-terminal here) gets the tqdm bar.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

STEPS, EVERY = 12, 4
LINE = re.compile(r"train step (\d+)/(\d+) \(\d+%\) loss (\S+) lr (\S+) scale \S+ samples/s (\d+) "
                  r"elapsed \S+ eta \S+")


def _command(run: Path) -> list[str]:
    sets = ["data.batch_size=32", f"train.steps={STEPS}", f"log.every={EVERY}", "log.progress=true",
            "log.tensorboard=false", "train.threads=1", "train.warmup=2", "train.checkpoint_every=0"]
    return [sys.executable, "-m", "manifold_align_train", "train", "--output", str(run),
            *[arg for item in sets for arg in ("--set", item)]]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def _train_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if row["kind"] == "train"]


@pytest.mark.slow
@pytest.mark.parametrize("sink", ["file", "pipe"])
def test_stderr_to_a_file_or_pipe_gets_one_plain_line_per_log_step(tmp_path, sink):
    run = tmp_path / "run"
    if sink == "file":
        with (tmp_path / "stderr.log").open("wb") as handle:
            subprocess.run(_command(run), check=True, env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL,
                           stderr=handle)
        err = (tmp_path / "stderr.log").read_bytes()
    else:
        err = subprocess.run(_command(run), check=True, env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE).stderr
    text = err.decode()
    assert "\r" not in text, text[:500]
    lines = [LINE.fullmatch(line) for line in text.splitlines() if line.startswith("train step")]
    assert all(lines), text
    assert [int(m[1]) for m in lines] == list(range(EVERY, STEPS + 1, EVERY))
    assert {int(m[2]) for m in lines} == {STEPS}
    # the printed numbers are the logged ones
    rows = _train_rows(run)
    assert [row["step"] for row in rows] == [int(m[1]) for m in lines]
    for m, row in zip(lines, rows):
        assert float(m[3]) == pytest.approx(row["loss"], abs=1e-4)
        assert float(m[4]) == pytest.approx(row["lr"], rel=1e-3)
        assert int(m[5]) == pytest.approx(row["samples_per_second"], abs=1)


@pytest.mark.slow
def test_a_terminal_still_gets_the_tqdm_bar(tmp_path):
    controller, terminal = pty.openpty()
    # a new pseudo-terminal is 0 columns wide, where tqdm's dynamic width draws nothing; a terminal has a size
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        proc = subprocess.Popen(_command(tmp_path / "run"), env=_env(), cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=terminal)
    finally:
        os.close(terminal)
    chunks = []
    try:
        while True:  # read as it comes: a full pseudo-terminal buffer would block the child
            ready, _, _ = select.select([controller], [], [], 240)
            assert ready, "no output from the run for 240 s"
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(controller)
        assert proc.wait(timeout=240) == 0
    text = b"".join(chunks).decode(errors="replace")
    assert "\r" in text and f"{STEPS}/{STEPS}" in text and "loss=" in text, text[-500:]
    assert "train step" not in text  # the bar, not the plain lines
