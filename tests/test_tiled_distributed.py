"""The tiled loss under two gloo processes (each half the batch, features gathered) against one process with the
whole batch and the materialized loss: loss, feature gradients and the geometry's parameter gradients (float64).
With ``class_ids`` (gathered like the features), both the tiled and the materialized two-process losses against
the one-process materialized one, which tests/test_losses_class_ids.py checks against the formula."""

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from manifold_align.geometries import get_geometry
from manifold_align.losses import ContrastiveLoss

WORLD, N_PER_RANK, K, D = 2, 5, 3, 4
CASES = [  # (geometry, objective, local_loss, class ids, tile size of the two-process run)
    ("oblique", "softmax", False, False, 3),
    ("oblique", "softmax", True, False, 3),
    ("lorentz", "softmax", True, False, 3),
    ("lorentz", "sigmoid", False, False, 3),
    ("oblique", "softmax", False, True, 3),
    ("oblique", "softmax", True, True, 3),
    ("oblique", "softmax", True, True, None),
    ("lorentz", "sigmoid", False, True, 3),
    ("lorentz", "sigmoid", False, True, None),
]
#: class ids of the whole batch: same-class pairs within a rank and across the two ranks
CLASS_IDS = torch.tensor([0, 1, 0, 2, 1, 1, 3, 0, 2, 4])


def _inputs(name):
    geometry = get_geometry(name, n_tokens=K, token_dim=D).double()
    if name == "lorentz":
        with torch.no_grad():
            geometry.log_curvature.fill_(math.log(0.6))
    g = torch.Generator().manual_seed(0)
    raw_image = torch.randn(WORLD * N_PER_RANK, K, D, generator=g, dtype=torch.float64)
    raw_text = torch.randn(WORLD * N_PER_RANK, K, D, generator=g, dtype=torch.float64)
    return geometry, raw_image, raw_text


def _run(case, rows, rank, world_size, tile_size):
    """Loss, feature gradients of ``rows`` and geometry parameter gradients of one process's loss."""
    name, objective, local_loss, masked, _ = case
    geometry, raw_image, raw_text = _inputs(name)
    image = geometry.project(raw_image[rows]).detach().requires_grad_()
    text = geometry.project(raw_text[rows], modality="text").detach().requires_grad_()
    loss_fn = ContrastiveLoss(geometry, objective=objective, local_loss=local_loss, gather_with_grad=True,
                              rank=rank, world_size=world_size, tile_size=tile_size)
    scale = torch.tensor(2.0, dtype=torch.float64)
    bias = torch.tensor(-1.0, dtype=torch.float64) if objective == "sigmoid" else None
    loss = loss_fn(image, text, scale, bias, class_ids=CLASS_IDS[rows] if masked else None).loss
    params = [p for p in geometry.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [image, text, *params], allow_unused=True)
    return [loss.detach(), *(torch.zeros((), dtype=torch.float64) if g is None else g for g in grads)]


def _worker(rank, port, path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        rows = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
        torch.save([_run(case, rows, rank, WORLD, tile_size=case[-1]) for case in CASES], f"{path}.{rank}")
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def per_rank(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tiled-dist") / "out")
    mp.spawn(_worker, args=(_free_port(), path), nprocs=WORLD, join=True)
    return [torch.load(f"{path}.{rank}", weights_only=True) for rank in range(WORLD)]


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(CASES)), ids=["-".join(map(str, c)) for c in CASES])
def test_two_processes_tiled_equal_one_process_materialized(per_rank, index):
    ref = _run(CASES[index], slice(0, WORLD * N_PER_RANK), 0, 1, tile_size=None)
    ranks = [per_rank[r][index] for r in range(WORLD)]
    # the loss: each rank's equals (full) or averages to (local, sigmoid) the one-process loss
    assert float(sum(r[0] for r in ranks) / WORLD) == pytest.approx(float(ref[0]), rel=1e-10)
    # features: a rank's gradient (summed over ranks by the gather's backward), over the world size as DDP averages
    for r, out in enumerate(ranks):
        rows = slice(r * N_PER_RANK, (r + 1) * N_PER_RANK)
        for got, full in zip(out[1:3], ref[1:3]):
            torch.testing.assert_close(got / WORLD, full[rows], rtol=1e-10, atol=1e-12)
    # the geometry's parameters: DDP's average over the ranks
    for got, full in zip(zip(*(out[3:] for out in ranks)), ref[3:]):
        torch.testing.assert_close(sum(got) / WORLD, full, rtol=1e-10, atol=1e-12)
