"""Two gloo processes on 127.0.0.1, each with half the batch, against one process on the whole batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from manifold_align.distributed import gather_features
from manifold_align.losses import ContrastiveLoss
from manifold_align import get_geometry

WORLD = 2
N_PER_RANK = 4
CASES = [  # (objective, local_loss, gather_with_grad)
    ("softmax", False, True),
    ("softmax", True, True),
    ("softmax", False, False),
    ("sigmoid", False, True),
]


def _batch():
    g = torch.Generator().manual_seed(0)
    geometry = get_geometry("oblique", n_tokens=3, token_dim=4)
    img = geometry.project(torch.randn(WORLD * N_PER_RANK, 3, 4, generator=g, dtype=torch.float64))
    txt = geometry.project(torch.randn(WORLD * N_PER_RANK, 3, 4, generator=g, dtype=torch.float64))
    return img, txt


def _make_loss(objective, local_loss, gather_with_grad, rank, world_size):
    return ContrastiveLoss(
        get_geometry("oblique", n_tokens=3, token_dim=4), objective=objective, local_loss=local_loss,
        gather_with_grad=gather_with_grad, rank=rank, world_size=world_size,
    )


def _run(img, txt, loss):
    img = img.clone().requires_grad_()
    txt = txt.clone().requires_grad_()
    scale = torch.tensor(2.0, dtype=torch.float64)
    bias = torch.tensor(-1.0, dtype=torch.float64) if loss.objective == "sigmoid" else None
    out = loss(img, txt, scale, bias)
    out.loss.backward()
    return out.loss.detach(), img.grad, txt.grad


def _worker(rank, port, path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        img, txt = _batch()
        rows = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
        results = [_run(img[rows], txt[rows], _make_loss(*case, rank, WORLD)) for case in CASES]
        gathered = gather_features(img[rows], txt[rows], rank=rank, world_size=WORLD)
        results.append(gathered)
        torch.save(results, f"{path}.{rank}")
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("dist") / "out")
    mp.spawn(_worker, args=(_free_port(), path), nprocs=WORLD, join=True)
    return [torch.load(f"{path}.{r}") for r in range(WORLD)]


@pytest.mark.parametrize("case_index", range(len(CASES)))
def test_two_ranks_match_one_process(rank_results, case_index):
    objective, local_loss, gather_with_grad = CASES[case_index]
    img, txt = _batch()
    ref_loss, ref_gi, ref_gt = _run(img, txt, _make_loss(objective, local_loss, gather_with_grad, 0, 1))
    losses = torch.stack([rank_results[r][case_index][0] for r in range(WORLD)])
    # non-local softmax: every rank computes the full loss; local softmax and sigmoid: the mean over ranks
    if objective == "softmax" and not local_loss:
        assert torch.allclose(losses, ref_loss.expand(WORLD), atol=1e-5)
    assert abs(float(losses.mean()) - float(ref_loss)) < 1e-5
    for r in range(WORLD):
        rows = slice(r * N_PER_RANK, (r + 1) * N_PER_RANK)
        _, gi, gt = rank_results[r][case_index]
        # with gradient gathering, all_gather's backward sums over ranks and DDP averages: divide by WORLD.
        # without it, each rank's gradient is the local part of the full loss's gradient (open_clip semantics).
        factor = WORLD if gather_with_grad or objective == "sigmoid" else 1
        assert torch.allclose(gi / factor, ref_gi[rows], atol=1e-5)
        assert torch.allclose(gt / factor, ref_gt[rows], atol=1e-5)


def test_gather_features_concatenates_in_rank_order(rank_results):
    img, txt = _batch()
    for r in range(WORLD):
        all_img, all_txt = rank_results[r][-1]
        assert torch.equal(all_img, img) and torch.equal(all_txt, txt)


def test_gather_features_single_process_is_identity():
    img, txt = _batch()
    a, b = gather_features(img, txt, world_size=1)
    assert a is img and b is txt
