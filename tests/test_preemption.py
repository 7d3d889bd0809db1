"""Preemption (training/preemption.py): SIGTERM or the early-warning signal stops a run at a step boundary with
a checkpoint, and ``--resume latest`` ends with the weights of the uninterrupted run.

Real processes and real signals: the ``manifold-align train`` command alone and under torchrun, signalled
once the run's ``metrics.jsonl`` shows a step between periodic checkpoints (there are none here: without
the stop, nothing would be saved before the end).
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from fault_runs import (
    assert_same_weights, finish, last_line, run, sets, signal_until_exit, start, torchrun_cmd, train_cmd,
    wait_for_step,
)
from manifold_align_train import checkpoint as ckpt
from manifold_align_train.preemption import PREEMPTED_EXIT_CODE, StopRequest

STEPS = 16


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_signal_between_checkpoints_stops_with_a_checkpoint_and_resume_matches(tmp_path, straight_runs, sig):
    stopped = tmp_path / "run"
    proc = start(train_cmd(stopped, *sets()), cwd=tmp_path)
    wait_for_step(stopped, 3, proc)
    # the signal again every 20 ms until the process is gone: some land while the checkpoint is written
    signal_until_exit(proc, sig)
    status, _, err = finish(proc)
    assert status == PREEMPTED_EXIT_CODE, err[-3000:]
    found = ckpt.list_checkpoints(stopped / "checkpoints")
    assert len(found) == 1 and 3 <= found[0][0] < STEPS, found
    step, path = found[0]
    assert last_line(err) == (f"manifold-align train: stopped by {sig.name} at step {step}; checkpoint {path} "
                              f"written; continue with --resume latest (exit status {PREEMPTED_EXIT_CODE})")
    assert ckpt.load_checkpoint(path)["step"] == step  # matches its SHA-256: not corrupted by the later signals
    rows = [json.loads(line) for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1] == {"step": step, "kind": "stop", "signal": sig.name, "checkpoint": str(path)}
    assert not list((stopped / "checkpoints").glob(".*.tmp"))

    done = run(train_cmd(stopped, "--resume", "latest", *sets()), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_weights(stopped, straight_runs(1))


@pytest.mark.slow
def test_sigterm_to_a_torchrun_job_stops_both_ranks_at_one_step_and_resume_matches(tmp_path, straight_runs):
    """SIGTERM to every process of the job, as SLURM sends it: each worker gets it twice (from the scheduler and
    forwarded by torchrun), possibly at different steps; both stop after the same one."""
    job = lambda run_dir, *extra: torchrun_cmd("-m", "manifold_align_train", "train", "--output", str(run_dir),
                                               *extra, *sets())
    stopped = tmp_path / "stopped"
    proc = start(job(stopped), cwd=tmp_path)
    wait_for_step(stopped, 3, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    status, _, err = finish(proc)
    found = ckpt.list_checkpoints(stopped / "checkpoints")
    assert len(found) == 1 and 3 <= found[0][0] < STEPS, (found, err[-3000:])
    step, path = found[0]
    assert f"manifold-align train: stopped by SIGTERM at step {step}; checkpoint {path} written" in err
    assert err.count("manifold-align train: stopped by") == 1  # rank 0 says it, once
    assert status != 0  # the job is not done

    done = run(job(stopped, "--resume", "latest"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_weights(stopped, straight_runs(2))


def test_a_stop_request_records_the_first_signal_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGUSR2)
    with StopRequest("SIGUSR2") as request:
        assert not request.pending
    assert signal.getsignal(signal.SIGUSR2) is before
    with StopRequest("SIGUSR2") as request:
        signal.raise_signal(signal.SIGUSR2)
        signal.raise_signal(signal.SIGTERM)
        assert request.received == "SIGUSR2"
    # a process that was told to stop ignores the stop signals until it exits
    assert signal.getsignal(signal.SIGTERM) == signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGUSR2, before)


def test_an_unknown_early_warning_signal_is_a_configuration_error():
    from manifold_align_train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"'train.preempt_signal': expected one of 'SIGUSR1'.*did you mean 'SIGUSR2'"):
        load_config(None, ["train.preempt_signal=SIGUSR3"])
