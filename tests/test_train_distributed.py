"""Two gloo processes under torchrun train like one process on the concatenated batch.

The test launches this very file with ``python -m torch.distributed.run --nproc_per_node 2``; each
worker builds a :class:`manifold_align_train.trainer.Trainer` (DDP-wrapped model, loss gathering features with
gradient), runs forward and backward on its half of one fixed batch and rank 0 saves the loss and the
(DDP-averaged) gradients. A single process does the same on the whole batch; both must agree to 1e-5.
A second test runs the ``train`` command itself under torchrun for a few steps.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BATCH = 16
SETTINGS = ["data.batch_size=16", "log.progress=false", "log.tensorboard=false", "train.threads=1",
            "train.steps=3", "train.warmup=1", "train.device=cpu"]
CAPTIONS = ["a photo of the digit {}", "handwritten {}", "the figure {} in pen", "digit {}"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fixed_batch(tokenizer):
    from manifold_align_train.data import Batch

    generator = torch.Generator().manual_seed(123)
    images = torch.randn(BATCH, 3, 32, 32, generator=generator)
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    texts = tokenizer([CAPTIONS[i % 4].format(words[(3 * i) % 10]) for i in range(BATCH)])
    return Batch(images, texts, 0)


def one_step(out_file: Path, split: int = 1) -> None:
    """Build a Trainer in this process (single or torchrun worker), run one forward/backward on this
    rank's rows of the fixed batch and save the loss and the gradients (rank 0). ``split > 1``: the rows as
    ``split`` micro-batches of one step with exact accumulation (``train.accumulation=split``)."""
    from manifold_align_train.config import load_config
    from manifold_align_train.data import Batch
    from manifold_align_train.distributed_env import cleanup_distributed, init_distributed
    from manifold_align_train.trainer import Trainer

    cfg = load_config(None, SETTINGS + [f"train.accumulation={split}"])
    env = init_distributed("cpu")
    torch.set_num_threads(1)
    trainer = Trainer(cfg, out_file.parent / f"run{env.world_size}", env=env)
    batch = _fixed_batch(trainer.tokenizer)
    per_rank = BATCH // env.world_size
    size = per_rank // split
    starts = [env.rank * per_rank + i * size for i in range(split)]
    micro = [Batch(batch.images[a:a + size], batch.texts[a:a + size], 0) for a in starts]
    trainer.forward_model.train()
    (result, *_), _ = trainer._gradients(micro, validate=True)
    if env.is_main:
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        torch.save({"loss": result.loss.detach(), "grads": grads}, out_file)
    cleanup_distributed()


def _torchrun(*args: str, cwd: Path, show_warnings: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
           "127.0.0.1", "--master_port", str(_free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONWARNINGS", None)
    if not show_warnings:
        env["PYTHONWARNINGS"] = "ignore"
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_two_processes_match_one_on_the_concatenated_batch(tmp_path):
    _torchrun(__file__, "--worker", str(tmp_path / "ddp.pt"), cwd=tmp_path)
    one_step(tmp_path / "single.pt")
    ddp, single = torch.load(tmp_path / "ddp.pt"), torch.load(tmp_path / "single.pt")
    torch.testing.assert_close(ddp["loss"], single["loss"], atol=1e-5, rtol=0)
    assert ddp["grads"].keys() == single["grads"].keys()
    for name, grad in single["grads"].items():
        torch.testing.assert_close(ddp["grads"][name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
def test_two_processes_with_exact_accumulation_match_one_process_on_the_whole_batch(tmp_path):
    """Each of two processes accumulates 4 micro-batches of 2 (DDP no_sync on all but the last re-run): the loss
    and the DDP-averaged gradients of one process's plain step on the 16 pairs."""
    _torchrun(__file__, "--worker", str(tmp_path / "ddp.pt"), "--split", "4", cwd=tmp_path)
    one_step(tmp_path / "single.pt")
    ddp, single = torch.load(tmp_path / "ddp.pt"), torch.load(tmp_path / "single.pt")
    torch.testing.assert_close(ddp["loss"], single["loss"], atol=1e-5, rtol=0)
    assert ddp["grads"].keys() == single["grads"].keys()
    for name, grad in single["grads"].items():
        torch.testing.assert_close(ddp["grads"][name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
def test_train_command_under_torchrun_beside_a_users_training_package(tmp_path):
    """Launched from a project that has its own ``training/`` package (most ML repositories do): the
    trainer's import name cannot collide with it, and no rank prints a warning of ours."""
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "__init__.py").write_text("raise ImportError('the user package was imported')\n")
    args = ["-m", "manifold_align_train", "train", "--output", str(tmp_path / "run")]
    for item in SETTINGS:
        args += ["--set", item]
    proc = _torchrun(*args, cwd=tmp_path, show_warnings=True)
    assert "Warning" not in proc.stderr, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["final_step"] == 3
    assert summary["samples_seen"] == 3 * BATCH
    assert (tmp_path / "run" / "checkpoints" / "step_00000003.pt").is_file()


@pytest.mark.slow
def test_a_two_process_run_resumed_in_one_process_continues_like_a_one_process_run(tmp_path, capsys):
    """The data stream does not depend on the number of processes, so resuming with another world size
    lands where resuming a one-process run does (up to DDP's summation order)."""
    from manifold_align_train import cli

    def sets(items):
        return [arg for item in items for arg in ("--set", item)]

    _torchrun("-m", "manifold_align_train", "train", "--output", str(tmp_path / "two"), *sets(SETTINGS), cwd=tmp_path)
    assert cli.main(["train", "--output", str(tmp_path / "one"), *sets(SETTINGS)]) == 0
    finals = []
    for run in ("two", "one"):
        capsys.readouterr()
        assert cli.main(["train", "--output", str(tmp_path / run), "--resume", "latest",
                         *sets(SETTINGS + ["train.steps=5"])]) == 0
        notice = "resuming a checkpoint written by 2 process(es) with 1"
        assert (notice in capsys.readouterr().err) == (run == "two")
        finals.append(torch.load(tmp_path / run / "checkpoints" / "step_00000005.pt", weights_only=False)["model"])
    assert finals[0].keys() == finals[1].keys()
    for name, value in finals[1].items():
        torch.testing.assert_close(finals[0][name], value, atol=1e-5, rtol=1e-4, msg=name)


if __name__ == "__main__":  # a torchrun worker: python tests/test_train_distributed.py --worker OUT
    split = int(sys.argv[sys.argv.index("--split") + 1]) if "--split" in sys.argv else 1
    one_step(Path(sys.argv[sys.argv.index("--worker") + 1]), split)
