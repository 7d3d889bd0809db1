"""The trainer reads the device at most once per optimizer step outside log steps.

A host read is any call that turns a tensor into Python values: ``Tensor.item``, ``tolist``, ``__bool__``,
``__float__``, ``__int__`` (on a GPU each is a device sync that stalls the queue of kernels). The test patches them
on ``torch.Tensor`` and counts the calls a whole ``Trainer.train_step`` makes, for the default oblique run, lorentz
with MERU's entailment loss, accumulation over 4 micro-batches, and two gloo processes under torchrun (this file
launches itself). The first step (which validates the features) and log steps may read more; the others read the
one finite flag.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ["data.batch_size=16", "log.progress=false", "log.tensorboard=false", "train.threads=1", "train.steps=8",
            "train.warmup=1", "train.device=cpu"]
CASES = {
    "oblique": [],
    "lorentz-entailment": ["model.geometry=lorentz", "model.geometry_options.entailment_weight=0.2"],
    "accumulation-4": ["train.accumulation=4", "data.batch_size=8"],
    "sigmoid": ["loss.objective=sigmoid"],
}
READS = ("item", "tolist", "__bool__", "__float__", "__int__")


@contextlib.contextmanager
def counting_reads():
    """Patch every tensor-to-Python conversion on ``torch.Tensor``; yield a list that collects their names."""
    seen: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def counted(name, original):
        def wrapper(self, *args, **kwargs):
            seen.append(name)
            return original(self, *args, **kwargs)
        return wrapper

    for name, original in originals.items():
        setattr(torch.Tensor, name, counted(name, original))
    try:
        yield seen
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def reads_per_step(settings: list[str], output: Path, steps: int = 4) -> list[list[str]]:
    """Build a Trainer and run ``steps`` optimizer steps outside log steps; the reads of each step."""
    from manifold_align_train.config import load_config
    from manifold_align_train.distributed_env import init_distributed
    from manifold_align_train.trainer import Trainer

    cfg = load_config(None, SETTINGS + settings)
    env = init_distributed("cpu")
    torch.set_num_threads(1)
    trainer = Trainer(cfg, output / f"run{env.world_size}", env=env)
    batches = trainer._batches()
    per_step = []
    for step in range(steps + 1):
        group = [next(batches) for _ in range(cfg.train.accumulation)]
        with counting_reads() as seen:
            metrics = trainer.train_step(group, read_metrics=False)
        assert metrics["finite"]
        trainer.step += 1
        if step > 0:  # the first step validates the features (one more transfer)
            per_step.append(seen)
    return per_step


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_host_read_per_step_outside_log_steps(case, tmp_path):
    per_step = reads_per_step(CASES[case], tmp_path)
    assert all(len(reads) <= 1 for reads in per_step), per_step


@pytest.mark.slow
def test_one_host_read_per_step_in_two_gloo_processes(tmp_path):
    out = tmp_path / "reads.json"
    port = _free_port()
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(port), __file__, str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reads = json.loads(out.read_text())
    assert sorted(reads) == ["0", "1"]
    for rank, per_step in reads.items():
        assert all(len(step) <= 1 for step in per_step), (rank, per_step)


def _worker(out: Path) -> None:
    import torch.distributed as dist

    per_step = reads_per_step(CASES["lorentz-entailment"], out.parent)
    gathered = [None, None]
    dist.all_gather_object(gathered, per_step)
    if dist.get_rank() == 0:
        out.write_text(json.dumps({str(rank): steps for rank, steps in enumerate(gathered)}))
    dist.destroy_process_group()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
