"""The fast mode's engine: the geometry in isolation, several seeds trained at once.

The inputs are fixed once: digit-pairs images (``image_size`` 16, so each digit is the 8 x 8 scan at its own
resolution) as standardized pixels, and captions as fixed bag-of-token vectors (unigrams plus ordered
skip-bigrams, each a fixed random vector, so "three ... seven" and "seven ... three" differ). Caption
phrasings and caption noise come from the task itself (``make_digit_pairs(seed=..., caption_noise=...)``), so
a seed fixes the noise draw, the phrasings, the tower initialization and the batch order, and runs that share a
seed are paired. Each modality has a trainable 2-layer MLP (``in -> hidden -> k * d``, GELU); everything after
the towers is the library's, through :mod:`.geometry`: the geometry module (projection, scores, class mean,
learned values), the contrastive loss, the temperature, ``parameter_groups`` and ``RiemannianAdamW``, with the
trainer's schedule (linear warmup, cosine to 0), betas, eps, weight decay and gradient clipping (per seed).

Seeds are vectorized: the towers' weights carry a leading seed axis (``(S, in, out)``, one ``baddbmm`` per
layer), each seed has its own temperature and geometry module, and the loss is the sum of the S per-seed
losses. AdamW is elementwise and clipping is per seed, so each seed trains exactly as it would alone.

Zero-shot: every class name in the task's four prompt templates, projected, then the geometry's ``mean`` over
the templates (its class prototype); each image scored against the prototypes with ``pairwise``; top-1 over
1000 held-out images (100 classes, chance 1%). Retrieval: the first held-out image of each class with its
caption in the first training phrasing (100 distinct pairs, no ties; the held-out phrasing's unseen words are
random vectors to fixed bags of tokens and would measure those, not the geometry), image-to-text and
text-to-image R@1, averaged.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from manifold_align.optim import NO_DECAY_KEYWORDS, RiemannianAdamW, parameter_groups

from . import geometry as geometries
from .spec import NEGATIVES, Topology

#: the trainer's optimizer settings (manifold_align_train.config.TrainConfig defaults)
LR, WEIGHT_DECAY, BETAS, EPS, GRAD_CLIP = 2e-3, 0.1, (0.9, 0.98), 1e-6, 1.0
#: image side of the fast task: two native 8 x 8 digit scans side by side
IMAGE_SIZE = 16
#: width of the caption bag-of-token vectors
TEXT_DIM = 256
#: the fixed random token vectors come from this generator seed (never the run's seed)
TOKEN_SEED = 1234
#: zero-shot evaluations per run (the trajectory)
EVALS = 20


# --------------------------------------------------------------------------------------------------
# fixed inputs
# --------------------------------------------------------------------------------------------------
def tokens(text: str) -> list[str]:
    """Lower-case words and numerals of ``text``."""
    return re.findall(r"[a-z0-9]+", text.lower())


def bag_features(texts: Sequence[str], dim: int = TEXT_DIM) -> torch.Tensor:
    """Fixed bag-of-token vectors, shape (len(texts), dim), each of norm sqrt(dim).

    A text is the sum of one fixed random vector per unigram and per ordered skip-bigram ``(w_i, w_j)``,
    ``i < j``. The vectors are drawn per token from a generator seeded by :data:`TOKEN_SEED` and the token's
    rank in the sorted vocabulary of ``texts``, so the same texts always get the same features.
    """
    bags = []
    for text in texts:
        words = tokens(text)
        bags.append(words + [f"{a}>{b}" for i, a in enumerate(words) for b in words[i + 1:]])
    vocab = sorted({t for bag in bags for t in bag})
    table = torch.randn(len(vocab), dim, generator=torch.Generator().manual_seed(TOKEN_SEED))
    index = {t: i for i, t in enumerate(vocab)}
    out = torch.stack([table[[index[t] for t in bag]].sum(0) for bag in bags])
    return F.normalize(out, dim=-1) * math.sqrt(dim)


@dataclass
class FastData:
    """Fixed inputs of one caption-noise level for a set of seeds.

    Attributes
    ----------
    train_images : torch.Tensor, shape (n, P)
        Standardized pixels, shared by every seed.
    text_table : torch.Tensor, shape (V, T)
        Bag-of-token vectors of every distinct string used (training captions, prompts, retrieval captions).
    train_captions : torch.Tensor, shape (S, n), int64
        Per seed, the row of ``text_table`` of each training caption (noise and phrasing drawn by the seed).
    train_labels : torch.Tensor, shape (n,), int64
        Class of each training image (``10 * left + right``; at caption noise 0 also its caption's), the
        ``class_ids`` of a batch whose same-class pairs are left out of the negatives.
    test_images : torch.Tensor, shape (m, P)
    test_labels : torch.Tensor, shape (m,)
    prompts : torch.Tensor, shape (C, n_templates), int64
        Rows of ``text_table``: class c in each zero-shot template.
    retrieval_images : torch.Tensor, shape (C, P)
        The first held-out image of each class.
    retrieval_captions : torch.Tensor, shape (C,), int64
        Rows of ``text_table``: its caption in the first training phrasing.
    """

    train_images: torch.Tensor
    text_table: torch.Tensor
    train_captions: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    prompts: torch.Tensor
    retrieval_images: torch.Tensor
    retrieval_captions: torch.Tensor

    def to(self, device) -> "FastData":
        """A copy on ``device``."""
        return FastData(**{k: v.to(device) for k, v in self.__dict__.items()})


def build_data(noise: float, seeds: Sequence[int], *, train_per_class: int = 50) -> FastData:
    """The digit-pairs task at ``IMAGE_SIZE`` for ``seeds`` at caption noise ``noise``, as fixed features.

    ``train_per_class``: training pairs per class (``make_digit_pairs``'s; 50 gives its 5000 pairs). The
    held-out pairs are drawn after the training pairs, so they differ between values of it.
    """
    from manifold_align_train.data.digit_pairs import PAIR_TRAIN_PHRASINGS, make_digit_pairs, pair_caption

    tasks = [make_digit_pairs(IMAGE_SIZE, seed=int(s), caption_noise=float(noise),
                              train_per_class=int(train_per_class)) for s in seeds]
    task = tasks[0]  # images, prompts and held-out data depend on split_seed only
    pixels = torch.from_numpy(task.train_images.reshape(len(task.train_images), -1)).float()
    mean, std = pixels.mean(0), pixels.std(0).clamp(min=1.0)
    standardize = lambda x: (torch.from_numpy(x.reshape(len(x), -1)).float() - mean) / std  # noqa: E731
    test_labels = np.asarray(task.test_labels)
    first = np.array([np.flatnonzero(test_labels == c)[0] for c in range(len(task.classnames))])
    prompts = [t.format(name) for name in task.classnames for t in task.templates]
    retrieval = [pair_caption(int(test_labels[i]), PAIR_TRAIN_PHRASINGS[0]) for i in first]
    strings = sorted({*prompts, *retrieval, *(c for t in tasks for c in t.train_captions)})
    row = {s: i for i, s in enumerate(strings)}
    return FastData(
        train_images=standardize(task.train_images),
        text_table=bag_features(strings),
        train_captions=torch.tensor([[row[c] for c in t.train_captions] for t in tasks]),
        train_labels=torch.from_numpy(np.asarray(task.train_labels)).long(),
        test_images=standardize(task.test_images),
        test_labels=torch.from_numpy(test_labels).long(),
        prompts=torch.tensor([row[p] for p in prompts]).view(len(task.classnames), len(task.templates)),
        retrieval_images=standardize(task.test_images[first]),
        retrieval_captions=torch.tensor([row[c] for c in retrieval]),
    )


# --------------------------------------------------------------------------------------------------
# the model: S independent pairs of towers, temperatures and geometries
# --------------------------------------------------------------------------------------------------
class SeedMLP(nn.Module):
    """S independent 2-layer MLPs (``in -> hidden -> out``, GELU), one per seed, applied with ``baddbmm``.

    Initialized like ``nn.Linear`` (uniform in +-1/sqrt(fan_in)), seed s from ``torch.Generator(seed_s)``.
    """

    def __init__(self, seeds: Sequence[int], n_in: int, hidden: int, n_out: int, salt: int) -> None:
        super().__init__()
        shapes = {"w1": (n_in, hidden), "bias1": (1, hidden), "w2": (hidden, n_out), "bias2": (1, n_out)}
        fan_in = {"w1": n_in, "bias1": n_in, "w2": hidden, "bias2": hidden}
        values = {key: [] for key in shapes}
        for seed in seeds:
            gen = torch.Generator().manual_seed(int(seed) * 1000 + salt)
            for key, shape in shapes.items():
                bound = 1.0 / math.sqrt(fan_in[key])
                values[key].append((torch.rand(shape, generator=gen) * 2 - 1) * bound)
        for key, tensors in values.items():
            setattr(self, key, nn.Parameter(torch.stack(tensors)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (S, N, in) -> (S, N, out)."""
        return torch.baddbmm(self.bias2, F.gelu(torch.baddbmm(self.bias1, x, self.w1)), self.w2)


class FastModel(nn.Module):
    """Towers, temperatures and geometries of S seeds for one topology.

    Parameters
    ----------
    topology : Topology
        Its geometry (registry name and options), k, d and temperature.
    seeds : sequence of int
    n_image, n_text, hidden : int
        Input widths of the towers and their hidden width.
    """

    def __init__(self, topology: Topology, seeds: Sequence[int], n_image: int, n_text: int, hidden: int) -> None:
        super().__init__()
        k, d = topology.n_tokens, topology.token_dim
        self.k, self.d, self.n_seeds = k, d, len(seeds)
        self.image_tower = SeedMLP(seeds, n_image, hidden, k * d, salt=1)
        self.text_tower = SeedMLP(seeds, n_text, hidden, k * d, salt=2)
        self.temperature = nn.ModuleList(geometries.temperature(topology.temperature) for _ in seeds)
        self.geometry = nn.ModuleList(geometries.build(topology.geometry, n_tokens=k, token_dim=d,
                                                       **topology.options) for _ in seeds)

    def raw(self, tower: SeedMLP, x: torch.Tensor) -> torch.Tensor:
        """(S, N, in) -> raw features (S, N, k, d)."""
        out = tower(x)
        return out.view(*out.shape[:2], self.k, self.d)

    def project(self, raw: torch.Tensor, s: int, modality: str) -> torch.Tensor:
        """Seed ``s``'s raw features (N, k, d) on its geometry's space."""
        return self.geometry[s].project(raw, modality=modality)

    @torch.no_grad()
    def clamp_(self) -> None:
        """Every seed's temperature and geometry parameters into their ranges, as the trainer does after each
        optimizer step (``MultiTokenCLIP.clamp_``)."""
        for s in range(self.n_seeds):
            self.temperature[s].clamp_()
            self.geometry[s].clamp_()

    def geometry_values(self) -> list[dict[str, float]]:
        """Per seed: the temperature's ``scale`` and the geometry's learned ``values()`` (none for most)."""
        out = []
        for s in range(self.n_seeds):
            values = {"scale": float(self.temperature[s].scale().detach())}
            values.update({key: float(v.detach()) for key, v in self.geometry[s].values().items()})
            out.append(values)
        return out


def _per_seed_clip_(model: FastModel, max_norm: float) -> None:
    """Clip each seed's gradient to ``max_norm`` (the trainer's global-norm clip, one seed at a time)."""
    sq = torch.zeros(model.n_seeds)
    stacked = [p for tower in (model.image_tower, model.text_tower) for p in tower.parameters() if p.grad is not None]
    for p in stacked:
        sq += p.grad.detach().flatten(1).pow(2).sum(1).cpu()
    owned = [[*model.temperature[s].parameters(), *model.geometry[s].parameters()] for s in range(model.n_seeds)]
    for s, params in enumerate(owned):
        for p in params:
            if p.grad is not None:
                sq[s] += float(p.grad.detach().pow(2).sum())
    factor = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    for p in stacked:
        p.grad.mul_(factor.to(p.grad).view(-1, *[1] * (p.grad.dim() - 1)))
    for s, params in enumerate(owned):
        for p in params:
            if p.grad is not None:
                p.grad.mul_(float(factor[s]))


# --------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: FastModel, data: FastData) -> list[dict[str, float]]:
    """Per seed: ``zero_shot_top1`` and ``retrieval_R@1`` (fractions in [0, 1])."""
    S = model.n_seeds
    expand = lambda x: x.unsqueeze(0).expand(S, *x.shape)  # noqa: E731
    images = model.raw(model.image_tower, expand(data.test_images))
    n_class, n_templates = data.prompts.shape
    prompts = model.raw(model.text_tower, expand(data.text_table[data.prompts.flatten()]))
    r_images = model.raw(model.image_tower, expand(data.retrieval_images))
    r_texts = model.raw(model.text_tower, expand(data.text_table[data.retrieval_captions]))
    out = []
    for s in range(S):
        geometry = model.geometry[s]
        # the class prototype: the geometry's mean of the projected prompts over the templates
        projected = model.project(prompts[s], s, "text")
        classes = geometry.mean(projected.view(n_class, n_templates, *projected.shape[1:]), dim=1)
        scores = geometry.pairwise(model.project(images[s], s, "image"), classes)
        top1 = (scores.argmax(1) == data.test_labels).float().mean()
        sim = geometry.pairwise(model.project(r_images[s], s, "image"), model.project(r_texts[s], s, "text"))
        target = torch.arange(sim.shape[0], device=sim.device)
        r1 = 0.5 * ((sim.argmax(1) == target).float().mean() + (sim.argmax(0) == target).float().mean())
        out.append({"zero_shot_top1": float(top1), "retrieval_R@1": float(r1)})
    return out


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------
def lr_factor(step: int, steps: int, warmup: int) -> float:
    """The trainer's schedule: linear warmup to 1, then cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * t))


def train_step(model: FastModel, optimizer: torch.optim.Optimizer, loss_fns: Sequence, data: FastData,
               idx: torch.Tensor, negatives: str = "all") -> torch.Tensor:
    """One optimizer step of every seed on its batch ``idx`` (S, N) of training rows; returns the S losses
    (detached). ``negatives="other-class"`` passes each batch's class ids to the loss."""
    S = model.n_seeds
    images = model.raw(model.image_tower, data.train_images[idx])
    texts = model.raw(model.text_tower, data.text_table[torch.gather(data.train_captions, 1, idx)])
    class_ids = data.train_labels[idx] if negatives == "other-class" else None  # (S, N)
    per_seed = [loss_fns[s](model.project(images[s], s, "image"), model.project(texts[s], s, "text"),
                            model.temperature[s].scale(), None if class_ids is None else class_ids[s])
                for s in range(S)]
    total = torch.stack(per_seed)
    optimizer.zero_grad(set_to_none=True)
    total.sum().backward()
    _per_seed_clip_(model, GRAD_CLIP)
    optimizer.step()
    model.clamp_()
    return total.detach()


def build_optimizer(model: FastModel) -> RiemannianAdamW:
    """The trainer's optimizer on ``model`` (no weight decay on biases and the library's no-decay names)."""
    groups = parameter_groups(model, WEIGHT_DECAY, no_decay=(*NO_DECAY_KEYWORDS, "bias"))
    return RiemannianAdamW(groups, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)


def train(topology: Topology, data: FastData, seeds: Sequence[int], *, steps: int, batch_size: int, hidden: int,
          device: str = "cpu", evals: int = EVALS, negatives: str = "all", tile_size="auto"
          ) -> tuple[list[dict[str, Any]], list[list[dict[str, float]]]]:
    """Train one topology for every seed at once.

    Parameters
    ----------
    topology : Topology
        Its geometry, k, d and temperature.
    data : FastData
        From :func:`build_data` for these ``seeds`` (same order).
    steps, batch_size, hidden : int
        Optimizer steps, pairs per batch, tower hidden width.
    device : str
    evals : int
        Zero-shot evaluations along the way (the last at the final step).
    negatives : {"all", "other-class"}
        ``"other-class"``: each batch's class ids (``data.train_labels``) go to the loss, which leaves the
        same-class pairs out of the negatives; ``"all"``: every other pair of the batch is a negative.
    tile_size : "auto", int or None
        The loss's (:class:`manifold_align.ContrastiveLoss`); the same loss and gradients to rounding either way.

    Returns
    -------
    rows : list of dict, one per seed
        ``zero_shot_top1``, ``retrieval_R@1``, ``final_loss`` (mean over the last 5% of steps),
        ``scale`` and the geometry's learned values, ``wall_time_seconds`` (the run's wall time divided by the seeds).
    trajectories : list (per seed) of list of dict
        ``step``, ``zero_shot_top1``, ``loss`` (mean since the previous evaluation), ``scale``, geometry values.
    """
    start = time.perf_counter()
    data = data.to(device)
    S, n = data.train_captions.shape[0], data.train_images.shape[0]
    if batch_size > n:
        raise ValueError(f"batch size {batch_size} exceeds the {n} training pairs")
    if negatives not in NEGATIVES:
        raise ValueError(f"`negatives` must be one of {', '.join(NEGATIVES)}, got {negatives!r}")
    model = FastModel(topology, seeds, data.train_images.shape[1], data.text_table.shape[1], hidden).to(device)
    optimizer = build_optimizer(model)
    warmup = max(1, steps // 20)
    loss_fns = [geometries.contrastive_loss(g, tile_size=tile_size) for g in model.geometry]
    gens = [torch.Generator(device=device).manual_seed(int(s) * 7919 + 17) for s in seeds]
    eval_at = sorted({max(1, round(steps * (i + 1) / evals)) for i in range(evals)})
    traj: list[list[dict]] = [[] for _ in range(S)]
    losses = torch.zeros(S, steps)
    since = 0
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = LR * lr_factor(step, steps, warmup)
        idx = torch.stack([torch.randperm(n, generator=g, device=device)[:batch_size] for g in gens])
        losses[:, step] = train_step(model, optimizer, loss_fns, data, idx, negatives).cpu()
        if step + 1 in eval_at:
            metrics, values = evaluate(model, data), model.geometry_values()
            for s in range(S):
                traj[s].append({"step": step + 1, "zero_shot_top1": metrics[s]["zero_shot_top1"],
                                "loss": float(losses[s, since:step + 1].mean()), **values[s]})
            since = step + 1
    seconds = time.perf_counter() - start
    tail = max(1, steps // 20)
    final, values = evaluate(model, data), model.geometry_values()
    rows = [{**final[s], "final_loss": float(losses[s, -tail:].mean()), **values[s],
             "wall_time_seconds": seconds / S} for s in range(S)]
    return rows, traj
