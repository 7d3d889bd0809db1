"""Faults of a running job (training/faults.py, training/distributed_env.py): a worker SIGKILLed under torchrun's
elastic restarts, an exception or a hang on one rank, a data-loader worker killed by the OOM killer.

Real processes throughout: the ``manifold-align train`` command, under ``torchrun`` where it takes two
processes, hit with ``kill -9``; where a fault must come from inside a rank, ``tests/fault_worker.py`` injects
it into the loss and runs the real command around it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from fault_runs import (
    assert_same_weights, children, finish, last_line, logged_step, run, sets, start, torchrun_cmd, train_cmd,
    wait_for_step, worker_of_rank,
)
from manifold_align_train import checkpoint as ckpt
from manifold_align_train.faults import LoaderWorkerDied, explain, loader_batches

WORKER = Path(__file__).with_name("fault_worker.py")


@pytest.mark.slow
def test_a_worker_sigkilled_under_torchrun_restarts_and_ends_with_the_uninterrupted_weights(tmp_path, straight_runs):
    """The issue's command: ``torchrun --standalone --nproc_per_node=2 --max-restarts=1 ... --resume latest``.
    Before each attempt joined under its own store prefix, the restarted group hung in init_process_group or
    failed with "Connection refused" (it read the dead group's addresses)."""
    job = tmp_path / "run"
    cmd = torchrun_cmd("-m", "manifold_align_train", "train", "--output", str(job), "--resume", "latest",
                       *sets("train.checkpoint_every=4"), restarts=1)
    proc = start(cmd, cwd=tmp_path)
    wait_for_step(job, 6, proc)
    os.kill(worker_of_rank(proc.pid, 1), signal.SIGKILL)
    status, _, err = finish(proc)
    assert status == 0, err[-4000:]
    assert_same_weights(job, straight_runs(2))


@pytest.mark.slow
def test_an_exception_on_rank_1_stops_both_ranks_and_is_the_launchers_last_line(tmp_path):
    job = tmp_path / "run"
    cmd = torchrun_cmd(str(WORKER), "raise", "1", "3", "train", "--output", str(job),
                       *sets("train.checkpoint_every=1"))
    done = run(cmd, cwd=tmp_path)  # returns: both workers are gone (a hang would end in the test's timeout)
    assert done.returncode != 0
    line = last_line(done.stderr)
    assert "manifold-align train: rank 1 of 2 failed at step 2: ValueError: injected fault on rank 1" in line, (
        done.stderr[-4000:])
    assert "rank 0" not in line
    # no rank's collective error buries it: rank 0 printed no traceback of its own
    assert "[rank0]" not in done.stderr and "Connection closed by peer" not in done.stderr, done.stderr[-4000:]
    # nothing was written from the failed step
    assert [step for step, _ in ckpt.list_checkpoints(job / "checkpoints")] == [1, 2]
    assert all(ckpt.load_checkpoint(path)["step"] == step for step, path in ckpt.list_checkpoints(job / "checkpoints"))


@pytest.mark.slow
def test_a_hung_rank_is_given_up_on_after_the_collective_timeout(tmp_path):
    """Rank 1 never returns from its loss; rank 0 waits in the feature gather for train.collective_timeout
    (2 s here) and fails, naming itself and the timeout; torchrun then ends rank 1 (SIGTERM, which a stuck
    process cannot act on, then SIGKILL 30 s later). With torch's default gloo timeout this took 30 minutes."""
    job = tmp_path / "run"
    cmd = torchrun_cmd(str(WORKER), "hang", "1", "3", "train", "--output", str(job),
                       *sets("train.collective_timeout=2"))
    done = run(cmd, cwd=tmp_path)
    assert done.returncode != 0
    line = last_line(done.stderr)
    assert line.strip().startswith("manifold-align train: rank 0 of 2 failed at step 2: RuntimeError: "), (
        done.stderr[-4000:])
    assert line.endswith("(no answer from the other processes within train.collective_timeout = 2 s)"), line


@pytest.mark.slow
def test_a_dead_loader_worker_ends_the_run_clearly_and_resume_matches(tmp_path, straight_runs):
    job = tmp_path / "run"
    extra = ["data.workers=1", "train.checkpoint_every=4"]
    proc = start(train_cmd(job, *sets(*extra)), cwd=tmp_path)
    wait_for_step(job, 6, proc)
    loader_workers = children(proc.pid)
    assert len(loader_workers) == 1, loader_workers
    os.kill(loader_workers[0], signal.SIGKILL)  # what the out-of-memory killer does
    status, _, err = finish(proc)
    assert status == 1, err[-3000:]
    newest = ckpt.find_latest_checkpoint(job / "checkpoints")
    assert last_line(err).startswith(f"manifold-align train: a data-loading worker process (pid {loader_workers[0]}) "
                                     f"killed by signal"), err[-3000:]
    assert f"the newest checkpoint is {newest}; continue with --resume latest" in last_line(err)
    assert ckpt.load_checkpoint(newest)["step"] <= logged_step(job)

    done = run(train_cmd(job, "--resume", "latest", *sets(*extra)), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_weights(job, straight_runs(1))


class _SecondItemHangs(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        time.sleep(60 * index)
        return index


def test_a_loader_worker_killed_while_the_main_process_waits_is_named_with_its_signal():
    """Killed while the main process blocks on the data queue, torch's SIGCHLD handler raises ``is killed by
    signal`` inside the queue wait and torch raises ``exited unexpectedly`` from it. The explanation used to
    read only the outer error and lost the signal and the out-of-memory hint (a flaky CI run of the test above:
    which of the two the run sees depends on where the main process is when the worker dies)."""
    before = set(children(os.getpid()))
    batches = iter(torch.utils.data.DataLoader(_SecondItemHangs(), batch_size=1, num_workers=1))
    next(batches)
    (worker,) = set(children(os.getpid())) - before
    killer = threading.Timer(1.0, os.kill, (worker, signal.SIGKILL))  # once the main process waits for item 1
    killer.start()
    with pytest.raises(RuntimeError) as raised:
        next(batches)
    killer.join()
    assert "exited unexpectedly" in str(raised.value), raised.value  # the case this test is about
    explained = explain(raised.value, step=7, last_checkpoint=None)
    assert isinstance(explained, LoaderWorkerDied), raised.value
    assert str(explained).startswith(f"a data-loading worker process (pid {worker}) killed by signal Killed at "
                                     "step 7 (SIGKILL: most often the out-of-memory killer"), str(explained)


def _reset_connection():
    raise ConnectionResetError(104, "Connection reset by peer")


class _ResetsOnArrival:
    """Unpickles in the main process as the reset connection of a worker killed while its batch's file
    descriptors are fetched (``multiprocessing.resource_sharer``)."""

    def __reduce__(self):
        return _reset_connection, ()


class _SecondItemsWorkerDies(torch.utils.data.Dataset):
    """Item 1's worker sends its batch, whose fetch fails, and is SIGKILLed half a second later: the order of
    events when the out-of-memory killer takes a worker mid-transfer and the kernel is still ending it."""

    def __len__(self):
        return 2

    def __getitem__(self, index):
        if index == 0:
            return torch.zeros(3)
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGKILL)).start()
        return _ResetsOnArrival()


def test_a_connection_reset_by_a_dying_loader_worker_is_named_as_its_death():
    """The flaky CI run of test_a_dead_loader_worker_ends_the_run_clearly_and_resume_matches: torch found the
    worker alive and re-raised the bare ConnectionResetError, which the run printed as its last line."""
    before = set(children(os.getpid()))
    loader = torch.utils.data.DataLoader(_SecondItemsWorkerDies(), batch_size=None, num_workers=1)
    batches = loader_batches(loader)
    next(batches)
    (worker,) = set(children(os.getpid())) - before
    with pytest.raises(RuntimeError) as raised:
        next(batches)
    explained = explain(raised.value, step=3, last_checkpoint=None)
    assert isinstance(explained, LoaderWorkerDied), repr(raised.value)
    assert str(explained).startswith(f"a data-loading worker process (pid {worker}) killed by signal Killed at "
                                     "step 3 (SIGKILL: most often the out-of-memory killer"), str(explained)


def test_a_connection_error_with_every_loader_worker_alive_is_raised_as_it_came():
    class ItemOneResets(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            return torch.zeros(3) if index == 0 else _ResetsOnArrival()

    batches = loader_batches(torch.utils.data.DataLoader(ItemOneResets(), batch_size=None, num_workers=1))
    next(batches)
    with pytest.raises(ConnectionResetError):
        next(batches)


def test_a_connection_error_in_a_loader_without_workers_is_raised_at_once(monkeypatch):
    """No worker to wait for: without the guard, ``multiprocessing.connection.wait([])`` sleeps its whole timeout."""
    class Resets(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            _reset_connection()

    def no_wait(*args, **kwargs):
        raise AssertionError("waited for loader workers where there are none")

    monkeypatch.setattr("multiprocessing.connection.wait", no_wait)
    with pytest.raises(ConnectionResetError):
        next(loader_batches(torch.utils.data.DataLoader(Resets(), batch_size=None, num_workers=0)))
