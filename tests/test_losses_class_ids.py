"""Same-class pairs left out of the negatives (``ContrastiveLoss(..., class_ids=...)``), against the formula.

The reference is written out row by row in float64: for InfoNCE, each image row's log-sum-exp runs over its
positive and the captions of *other* classes only (and each caption's over its positive and the images of other
classes); for SigLIP, the sum of ``-log sigmoid(y * logit)`` runs over the positives and the other-class pairs
only. The materialized loss and the tiled loss (tiles of 3 over 7 or 21 rows: masks and positives across tile
borders, the mask recomputed in the backward) must match it, loss and every gradient, for every registered
geometry, both objectives, with and without local_loss. With every class id distinct the loss is the unmasked
loss, bit for bit.
"""

import pytest
import torch

from loss_leaves import loss_leaves
from manifold_align.geometries import get_geometry, list_geometries
from manifold_align.losses import ContrastiveLoss
from manifold_align.tiled import tiled_sigmoid_loss, tiled_softmax_loss

K, D, N, WORLD, RANK = 3, 4, 7, 3, 1


def _leaves(name, n_all, seed=0):
    """The loss leaves (:func:`loss_leaves.loss_leaves`) in float64 and class ids: 3 classes over the rows, so
    every row has same-class pairs in the batch, some across the rank's rows."""
    ids = torch.randint(0, 3, (n_all,), generator=torch.Generator().manual_seed(1000 + seed))
    return (*loss_leaves(name, n_all, n_tokens=K, token_dim=D, seed=seed), ids)


def _reference(geometry, image, text, scale, bias, ids, objective, rows, offset):
    """The masked loss of ``rows`` (this rank's slice of the gathered pairs), one row at a time."""
    per_image = scale * geometry.pairwise(image[rows], text)  # (n, M): this rank's images, all captions
    per_text = scale * geometry.pairwise(image, text[rows]).T  # (n, M): this rank's captions, all images
    mine = ids[rows].tolist()
    everyone = ids.tolist()
    n, total = len(mine), per_image.new_zeros(())
    for i in range(n):
        pos = offset + i
        kept = [j for j in range(len(everyone)) if j == pos or everyone[j] != mine[i]]
        if objective == "softmax":
            for logits in (per_image[i], per_text[i]):
                total = total + (torch.logsumexp(logits[kept], 0) - logits[pos]) / (2 * n)
        else:
            for j in kept:
                sign = 1.0 if j == pos else -1.0
                total = total - torch.nn.functional.logsigmoid(sign * (per_image[i, j] + bias)) / n
    return total


def _library(geometry, image, text, scale, bias, ids, objective, rows, offset, *, path):
    """``path``: ContrastiveLoss materialized or tiled on the whole batch, or the tiled functions on one rank's
    rows against the gathered ones (the materialized local path needs a process group: test_tiled_distributed)."""
    b = bias if objective == "sigmoid" else None
    if path != "tiled-local":
        loss = ContrastiveLoss(geometry, objective=objective, tile_size=None if path == "materialized" else 3)
        return loss(image, text, scale, b, class_ids=ids).loss
    if objective == "sigmoid":
        return tiled_sigmoid_loss(image[rows], text, geometry, logit_scale=scale, logit_bias=bias, offset=offset,
                                  tile_size=3, class_ids=ids[rows], class_ids_all=ids).loss
    return tiled_softmax_loss(image[rows], text[rows], geometry, logit_scale=scale, image_all=image, text_all=text,
                              offset=offset, tile_size=3, class_ids=ids[rows], class_ids_all=ids).loss


def _loss_and_grads(fn, name, objective, local, **kw):
    geometry, raw_image, raw_text, log_scale, bias, ids = _leaves(name, N * WORLD if local else N)
    rows = slice(RANK * N, (RANK + 1) * N) if local else slice(0, N)
    offset = RANK * N if local else 0
    image, text = geometry.project(raw_image), geometry.project(raw_text, modality="text")
    loss = fn(geometry, image, text, log_scale.exp(), bias, ids, objective, rows, offset, **kw)
    leaves = [raw_image, raw_text, log_scale, *([bias] if objective == "sigmoid" else []),
              *(p for p in geometry.parameters() if p.requires_grad)]
    return loss, torch.autograd.grad(loss, leaves)


def _rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


@pytest.mark.parametrize("path", ["materialized", "tiled", "tiled-local"])
@pytest.mark.parametrize("objective", ["softmax", "sigmoid"])
@pytest.mark.parametrize("name", list_geometries())
def test_masked_loss_equals_the_row_by_row_formula(name, objective, path):
    local = path == "tiled-local"
    ref_loss, ref_grads = _loss_and_grads(_reference, name, objective, local)
    loss, grads = _loss_and_grads(_library, name, objective, local, path=path)
    assert _rel(loss, ref_loss) < 1e-10, (float(loss), float(ref_loss))
    for got, ref in zip(grads, ref_grads):
        assert _rel(got, ref) < 1e-10


@pytest.mark.parametrize("objective", ["softmax", "sigmoid"])
def test_masking_changes_the_loss_when_classes_repeat(objective):
    """The reference itself: with repeated classes, leaving pairs out gives a different (smaller) loss."""
    geometry, raw_image, raw_text, log_scale, bias, ids = _leaves("oblique", N)
    image, text = geometry.project(raw_image), geometry.project(raw_text, modality="text")
    scale = log_scale.exp()
    loss = ContrastiveLoss(geometry, objective=objective)
    b = bias if objective == "sigmoid" else None
    masked, plain = loss(image, text, scale, b, class_ids=ids).loss, loss(image, text, scale, b).loss
    assert float(masked.detach()) < float(plain.detach()) - 1e-3


@pytest.mark.parametrize("objective", ["softmax", "sigmoid"])
@pytest.mark.parametrize("tile", [None, 3], ids=["materialized", "tiled"])
def test_distinct_class_ids_give_the_unmasked_loss_exactly(objective, tile):
    outs = []
    for ids in (torch.arange(N), None):
        geometry, raw_image, raw_text, log_scale, bias, _ = _leaves("lorentz", N)
        image, text = geometry.project(raw_image), geometry.project(raw_text, modality="text")
        loss = ContrastiveLoss(geometry, objective=objective, tile_size=tile)
        out = loss(image, text, log_scale.exp(), bias if objective == "sigmoid" else None, class_ids=ids)
        leaves = [raw_image, raw_text, log_scale, *(p for p in geometry.parameters() if p.requires_grad)]
        outs.append((out, torch.autograd.grad(out.loss, leaves)))
    (masked, grads), (plain, ref_grads) = outs
    assert torch.equal(masked.loss, plain.loss)
    for key, value in plain.diagnostics().items():
        assert torch.equal(masked.diagnostics()[key], value), key
    for got, ref in zip(grads, ref_grads):
        assert torch.equal(got, ref)


@pytest.mark.parametrize("objective", ["softmax", "sigmoid"])
def test_tiled_and_materialized_diagnostics_agree_with_the_negatives_counted(objective):
    """negative_similarity is the mean over the pairs counted as negatives, in both paths."""
    geometry, raw_image, raw_text, log_scale, bias, ids = _leaves("oblique", N)
    image, text = geometry.project(raw_image).detach(), geometry.project(raw_text, modality="text").detach()
    scores = geometry.pairwise(image, text)
    kept = (ids[:, None] != ids[None, :])
    expected = float(scores[kept].mean())
    for tile in (None, 3):
        out = ContrastiveLoss(geometry, objective=objective, tile_size=tile)(
            image, text, log_scale.exp(), bias if objective == "sigmoid" else None, class_ids=ids)
        assert float(out.negative_similarity) == pytest.approx(expected, rel=1e-12)
        assert float(out.positive_similarity) == pytest.approx(float(scores.diagonal().mean()), rel=1e-12)


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(N), "integer tensor .*got dtype torch.float32"),
    (torch.zeros(N, dtype=torch.bool), "integer tensor .*got dtype torch.bool"),
    (torch.zeros(N - 1, dtype=torch.long), r"shape \(7,\).*got \(6,\)"),
    (torch.zeros(N, 1, dtype=torch.long), r"shape \(7,\).*got \(7, 1\)"),
    ([0] * N, "integer tensor of shape .*got list"),
])
def test_bad_class_ids_are_refused_by_name(bad, match):
    geometry = get_geometry("oblique", n_tokens=K, token_dim=D)
    x = geometry.project(torch.randn(N, K, D))
    with pytest.raises(ValueError, match="`class_ids` must .*" + match):
        ContrastiveLoss(geometry)(x, x, torch.tensor(1.0), class_ids=bad)
    with pytest.raises(ValueError, match="`class_ids` must .*" + match):
        tiled_softmax_loss(x, x, geometry, logit_scale=torch.tensor(1.0), class_ids=bad)


def test_gathered_class_ids_are_required_with_gathered_features():
    geometry = get_geometry("oblique", n_tokens=K, token_dim=D)
    x = geometry.project(torch.randn(N, K, D))
    ids = torch.zeros(N, dtype=torch.long)
    with pytest.raises(ValueError, match="`class_ids_all`"):
        tiled_softmax_loss(x, x, geometry, logit_scale=torch.tensor(1.0), image_all=x, text_all=x, class_ids=ids)
    with pytest.raises(ValueError, match="`class_ids_all`"):
        tiled_sigmoid_loss(x[:3], x, geometry, logit_scale=torch.tensor(1.0), logit_bias=torch.tensor(0.0),
                           class_ids=ids[:3])
