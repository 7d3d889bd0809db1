"""Real runs for the fault tests: the ``manifold-align train`` command, alone or under torchrun, watched
through its files (``metrics.jsonl``, ``checkpoints/``) and hit with real signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from manifold_align_train import checkpoint as ckpt

# Tiny and deterministic: 32-pair batches, one thread, a train row every step (the tests poll them), no
# periodic checkpoint unless a test asks for one.
SETTINGS = ["data.batch_size=32", "log.progress=false", "log.tensorboard=false", "log.every=1", "train.threads=1",
            "train.steps=16", "train.warmup=2", "train.checkpoint_every=0", "train.keep_checkpoints=5",
            "train.deterministic=true", "train.device=cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
DEADLINE = 300  # seconds before a test calls a run hung


def sets(*extra: str) -> list[str]:
    return [arg for item in (*SETTINGS, *extra) for arg in ("--set", item)]


def train_cmd(run: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "manifold_align_train", "train", "--output", str(run), *args]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_cmd(*args: str, nproc: int = 2, restarts: int = 0) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            f"--max-restarts={restarts}", "--monitor-interval=0.1", *args]


def start(cmd: list[str], cwd: Path) -> subprocess.Popen:
    """Start ``cmd`` in a session of its own (so a test can signal it as a scheduler signals a job)."""
    return subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def logged_step(run: Path) -> int:
    """The newest step with a ``train`` row in ``run/metrics.jsonl`` (0 before the first)."""
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(line)["step"] for line in lines if line.endswith("}")]
    return max(steps, default=0)


def wait_for_step(run: Path, step: int, proc: subprocess.Popen) -> int:
    """Poll ``metrics.jsonl`` until it shows ``step``; return the newest step logged."""
    deadline = time.monotonic() + DEADLINE
    while (done := logged_step(run)) < step:
        assert proc.poll() is None, f"the run ended before step {step}:\n{proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"step {step} never came"
        time.sleep(0.02)
    return done


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=DEADLINE)
    return proc.returncode, out, err


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=DEADLINE)


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def worker_of_rank(launcher: int, rank: int) -> int:
    """The pid of torchrun's worker of global rank ``rank``."""
    for pid in children(launcher):
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in env:
            return pid
    raise AssertionError(f"no worker of rank {rank} under pid {launcher}")


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_checkpoint(ckpt.find_latest_checkpoint(run / ckpt.CHECKPOINT_DIR))["model"]


def assert_same_weights(got: Path, expected: Path, atol: float = 1e-6) -> None:
    a, b = final_weights(got), final_weights(expected)
    assert a.keys() == b.keys()
    for name in b:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)


def last_line(stderr: str) -> str:
    """The last line of ``stderr`` that is not a rule of ``=`` (torchrun closes its report with one)."""
    lines = [line for line in stderr.splitlines() if line.strip() and set(line.strip()) != {"="}]
    return lines[-1] if lines else ""


def signal_until_exit(proc: subprocess.Popen, sig: int, *, group: bool = False, every: float = 0.02) -> None:
    """Send ``sig`` now and again every ``every`` seconds until ``proc`` exits: a second (and a tenth) signal
    lands while the checkpoint is written."""
    deadline = time.monotonic() + DEADLINE
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        except ProcessLookupError:
            break
        time.sleep(every)
