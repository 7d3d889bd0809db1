"""Gathering features across processes for the contrastive loss (torch.distributed, as in open_clip).

All ranks must hold the same number of rows (``all_gather`` needs equal shapes).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["all_gather_no_grad", "all_gather_with_grad", "gather_features", "is_distributed"]


def is_distributed(world_size: int) -> bool:
    """True when ``world_size > 1`` and a default process group is initialized.

    Raises
    ------
    RuntimeError
        ``world_size > 1`` but no process group is initialized.
    """
    if world_size <= 1:
        return False
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"world_size={world_size} but torch.distributed has no initialized process group; "
            "call torch.distributed.init_process_group first or pass world_size=1"
        )
    return True


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0; gradients flow back to every rank.

    Parameters
    ----------
    tensor : torch.Tensor, shape (N, ...)

    Returns
    -------
    torch.Tensor, shape (world_size * N, ...)
        Rank r's rows at ``[r * N, (r + 1) * N)``. Backward sums the incoming gradients over ranks.
    """
    return _AllGatherWithGrad.apply(tensor)


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums the output gradient over ranks and keeps this rank's rows.

    What ``torch.distributed.nn.all_gather`` computes; that function is deprecated (it warns on every call,
    so once per rank per run) and its suggested replacement is a private module.
    """

    @staticmethod
    def forward(ctx, tensor):  # noqa: D102
        ctx.rows = tensor.shape[0]
        parts = _all_gather_no_grad(tensor, dist.get_world_size())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102
        grad = grad_output.contiguous()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0, without gradient (labels, class ids).

    Parameters
    ----------
    tensor : torch.Tensor, shape (N, ...)

    Returns
    -------
    torch.Tensor, shape (world_size * N, ...)
        Rank r's rows at ``[r * N, (r + 1) * N)``.
    """
    return torch.cat(_all_gather_no_grad(tensor, dist.get_world_size()), dim=0)


def _all_gather_no_grad(tensor: torch.Tensor, world_size: int) -> list[torch.Tensor]:
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.detach().contiguous())
    return parts


def gather_features(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    *,
    local_loss: bool = False,
    gather_with_grad: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather image and text features from all ranks (open_clip's ``gather_features``, no horovod).

    Parameters
    ----------
    image_features, text_features : torch.Tensor, shape (N, ...)
        This rank's features; N equal on all ranks.
    local_loss : bool, keyword-only
        Without ``gather_with_grad``: if False, this rank's own slot in the result is the original
        (grad-carrying) tensor; if True all slots are detached (the caller uses its local tensors for the
        gradient-carrying side).
    gather_with_grad : bool, keyword-only
        Gather with :func:`all_gather_with_grad` so gradients flow to the rank that owns each row.
    rank, world_size : int, keyword-only

    Returns
    -------
    (all_image_features, all_text_features) : tuple of torch.Tensor, shape (world_size * N, ...)
    """
    if world_size <= 1:
        return image_features, text_features
    if gather_with_grad:
        return all_gather_with_grad(image_features), all_gather_with_grad(text_features)
    images = _all_gather_no_grad(image_features, world_size)
    texts = _all_gather_no_grad(text_features, world_size)
    if not local_loss:
        # keep gradients for the local rank: its slot is the original tensor
        images[rank] = image_features
        texts[rank] = text_features
    return torch.cat(images, dim=0), torch.cat(texts, dim=0)
