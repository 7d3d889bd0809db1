"""The tiled contrastive losses (manifold_align.tiled) against the materialized computation written out here.

The reference scores the whole matrix with the geometry's own ``pairwise`` and takes F.cross_entropy /
F.logsigmoid of it, as open_clip's ClipLoss and SigLipLoss do. Loss and every gradient (raw features
through the projection, the temperature's log-scale, the bias, each geometry parameter) must agree to 1e-5
relative in float32 (or, for a gradient the materialized float32 loss itself gets less accurately than that,
within twice its error against float64) and 1e-10 in float64, for every registered geometry, both objectives, with and
without local_loss (one rank's rows against all ranks' columns, labels offset by rank).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from loss_leaves import loss_leaves
from manifold_align.geometries import get_geometry, list_geometries
from manifold_align.losses import ContrastiveLoss
from manifold_align.manifolds.lorentz import space_cdist
from manifold_align.tiled import auto_tile_size, tile_side, tiled_sigmoid_loss, tiled_softmax_loss

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
K, D = 3, 5


def _setup(name, dtype, n_all, seed=0):
    """Geometry and the leaf tensors every gradient is taken for."""
    return loss_leaves(name, n_all, n_tokens=K, token_dim=D, dtype=dtype, seed=seed)


def _reference(geometry, image, text, scale, bias, objective, rows, offset):
    """The materialized loss of this rank's ``rows`` (a slice of the gathered features) against all."""
    labels = torch.arange(rows.stop - rows.start) + offset
    if objective == "softmax":
        per_image = scale * geometry.pairwise(image[rows], text)
        per_text = scale * geometry.pairwise(image, text[rows]).T
        return (F.cross_entropy(per_image, labels) + F.cross_entropy(per_text, labels)) / 2
    logits = scale * geometry.pairwise(image[rows], text) + bias
    signs = -torch.ones_like(logits)
    signs[torch.arange(len(labels)), labels] = 1.0
    return -F.logsigmoid(signs * logits).sum() / len(labels)


def _tiled(geometry, image, text, scale, bias, objective, rows, offset, *, tiled_local, tile):
    if objective == "sigmoid":
        return tiled_sigmoid_loss(image[rows], text, geometry, logit_scale=scale, logit_bias=bias, offset=offset,
                                  tile_size=tile).loss
    if tiled_local:
        return tiled_softmax_loss(image[rows], text[rows], geometry, logit_scale=scale, image_all=image,
                                  text_all=text, offset=offset, tile_size=tile).loss
    return tiled_softmax_loss(image, text, geometry, logit_scale=scale, tile_size=tile).loss


def _loss_and_grads(fn, name, dtype, objective, local, n=7, world=3, rank=1, **kw):
    geometry, raw_image, raw_text, log_scale, bias = _setup(name, dtype, n * world if local else n)
    rows = slice(rank * n, (rank + 1) * n) if local else slice(0, n)
    offset = rank * n if local else 0
    image, text = geometry.project(raw_image), geometry.project(raw_text, modality="text")
    loss = fn(geometry, image, text, log_scale.exp(), bias, objective, rows, offset, **kw)
    leaves = {"image": raw_image, "text": raw_text, "log_scale": log_scale}
    if objective == "sigmoid":
        leaves["bias"] = bias
    leaves.update({name: p for name, p in geometry.named_parameters() if p.requires_grad})
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return loss, dict(zip(leaves, grads))


def _rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("local", [False, True], ids=["full", "local_loss"])
@pytest.mark.parametrize("objective", ["softmax", "sigmoid"])
@pytest.mark.parametrize("name", list_geometries())
def test_tiled_equals_materialized(name, objective, local, dtype):
    # sigmoid is always one rank's rows against all columns: "full" is the one rank of one
    ref_loss, ref_grads = _loss_and_grads(_reference, name, dtype, objective, local)
    # tiles of 4 over 7 or 21 rows: uneven last tiles, positives across tile borders
    loss, grads = _loss_and_grads(_tiled, name, dtype, objective, local, tiled_local=local, tile=4)
    assert loss.dtype == dtype
    assert _rel(loss, ref_loss) < TOL[dtype], (float(loss), float(ref_loss))
    assert grads.keys() == ref_grads.keys()
    truth = _loss_and_grads(_reference, name, torch.float64, objective, local)[1] if dtype == torch.float32 else None
    for key in grads:
        tolerance = TOL[dtype]
        if truth is not None:
            # a gradient that sums many signed contributions (lorentz's curvature: 0.07 from terms of order 1)
            # has a float32 rounding error above 1e-5 of itself in the materialized loss too: there the bar is
            # the materialized float32's own error against float64 (twice it), where that is the larger
            tolerance = max(tolerance, 2 * _rel(ref_grads[key].double(), truth[key]))
        assert _rel(grads[key], ref_grads[key]) < tolerance, key


@pytest.mark.parametrize("objective", ["softmax", "sigmoid"])
def test_one_tile_and_auto_equal_many_tiles(objective):
    losses = []
    for tile in (3, 64, "auto"):
        loss, grads = _loss_and_grads(_tiled, "oblique", torch.float64, objective, False, n=11, tiled_local=False,
                                      tile=tile)
        losses.append((loss, grads))
    for loss, grads in losses[1:]:
        assert _rel(loss, losses[0][0]) < 1e-12
        for key in grads:
            assert _rel(grads[key], losses[0][1][key]) < 1e-12


def test_scores_are_never_held_at_once():
    """Every call of the score function, forward and backward, returns at most one tile."""
    geometry = get_geometry("oblique", n_tokens=K, token_dim=D)
    g = torch.Generator().manual_seed(0)
    image = geometry.project(torch.randn(50, K, D, generator=g)).requires_grad_()
    text = geometry.project(torch.randn(50, K, D, generator=g)).requires_grad_()
    shapes = []

    def recording(a, b):
        out = geometry.pairwise(a, b)
        shapes.append(tuple(out.shape))
        return out

    tiled_softmax_loss(image, text, recording, logit_scale=torch.tensor(3.0), tile_size=8).loss.backward()
    assert shapes and max(r * c for r, c in shapes) <= 64
    # 7 x 7 tiles, each scored once in the forward and once in the backward
    assert len(shapes) == 2 * 49


def test_autocast_scores_in_float32_and_equal_the_float32_loss():
    geometry = get_geometry("oblique", n_tokens=K, token_dim=D)
    g = torch.Generator().manual_seed(0)
    raw_i, raw_t = torch.randn(9, K, D, generator=g), torch.randn(9, K, D, generator=g)
    scale = torch.tensor(4.0)
    image, text = geometry.project(raw_i), geometry.project(raw_t)
    expected = tiled_softmax_loss(image, text, geometry, logit_scale=scale, tile_size=9).loss
    image, text = image.clone().requires_grad_(), text.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = tiled_softmax_loss(image, text, geometry, logit_scale=scale, tile_size=4).loss
    loss.backward()
    assert loss.dtype == torch.float32
    assert image.grad.dtype == torch.float32
    assert _rel(loss, expected) < 1e-5


def test_half_precision_features_get_gradients_in_their_dtype():
    geometry = get_geometry("oblique", n_tokens=K, token_dim=D)
    g = torch.Generator().manual_seed(0)
    image = geometry.project(torch.randn(9, K, D, generator=g)).bfloat16().requires_grad_()
    text = geometry.project(torch.randn(9, K, D, generator=g)).bfloat16().requires_grad_()
    loss = tiled_softmax_loss(image, text, geometry, logit_scale=torch.tensor(2.0), tile_size=4).loss
    loss.backward()
    scores = 2.0 * geometry.pairwise(image.float(), text.float())
    ref = (F.cross_entropy(scores, torch.arange(9)) + F.cross_entropy(scores.T, torch.arange(9))) / 2
    assert loss.dtype == torch.float32 and image.grad.dtype == torch.bfloat16
    assert _rel(loss, ref) < 1e-5


def test_curvature_gradient_at_its_clamp_follows_the_rule_on_the_total():
    """The clamp rule of manifold_align.bounds judges the curvature's total gradient: tiles get stand-ins, so the
    rule is applied once to their sum, as in the materialized loss (applied per tile, inward parts would add)."""
    results = []
    for tile in (2, None):
        geometry = get_geometry("lorentz", n_tokens=1, token_dim=2).double()
        with torch.no_grad():
            geometry.log_curvature.fill_(math.log(10.0))  # at the upper bound (c0 = 1, range 10)
            geometry.log_image_scale.zero_()
            geometry.log_text_scale.zero_()
        g = torch.Generator().manual_seed(3)
        image = geometry.project(torch.randn(6, 1, 2, generator=g, dtype=torch.float64))
        text = geometry.project(torch.randn(6, 1, 2, generator=g, dtype=torch.float64), modality="text")
        loss = ContrastiveLoss(geometry, tile_size=tile)(image, text, torch.tensor(1.0, dtype=torch.float64)).loss
        (grad,) = torch.autograd.grad(loss, [geometry.log_curvature])
        results.append(float(grad))
    assert results[0] == pytest.approx(results[1], rel=1e-10, abs=1e-14)


def test_auto_tile_size_materializes_small_batches_and_shrinks_with_the_grid():
    assert tile_side(1) == 1024 and tile_side(16) == 256
    assert auto_tile_size(4096, 4096) is None
    assert auto_tile_size(4097, 4096) == 1024
    assert auto_tile_size(32768, 32768) == 1024
    # the (k, n, m) grid of a k = 16 geometry: tiled from N = 1025 on, tiles 16 times smaller
    assert auto_tile_size(1024, 1024, grid_factor=16) is None
    assert auto_tile_size(32768, 32768, grid_factor=16) == 256


def test_lorentz_summed_distances_equal_the_float64_formula():
    """space_cdist(sum_factors=True) (the tile formula of lorentz) against acosh(-c <x, y>_L) / sqrt(c)."""
    g = torch.Generator().manual_seed(0)
    c = 0.7
    xs = torch.randn(9, 16, 4, generator=g, dtype=torch.float64)
    ys = torch.cat([xs[:3] + 1e-5 * torch.randn(3, 16, 4, generator=g, dtype=torch.float64),
                    torch.randn(5, 16, 4, generator=g, dtype=torch.float64)])
    x0 = torch.sqrt(1 / c + (xs * xs).sum(-1))
    y0 = torch.sqrt(1 / c + (ys * ys).sum(-1))
    inner = torch.einsum("ibd,jbd->ijb", xs, ys) - x0[:, None, :] * y0[None, :, :]
    expected = (torch.acosh((-c * inner).clamp(min=1)) / math.sqrt(c)).sum(-1)
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 2e-5)):
        got = space_cdist(xs.to(dtype), ys.to(dtype), c, sum_factors=True).double()
        assert float((got - expected).abs().max() / expected.abs().max()) < tol
    assert torch.equal(space_cdist(xs, xs, c, sum_factors=True).diagonal(), torch.zeros(9, dtype=torch.float64))


def test_bad_arguments_are_refused_before_any_work():
    geometry = get_geometry("oblique", n_tokens=K, token_dim=D)
    x = geometry.project(torch.randn(4, K, D))
    scale = torch.tensor(1.0)
    with pytest.raises(ValueError, match="`tile_size`"):
        tiled_softmax_loss(x, x, geometry, logit_scale=scale, tile_size=0)
    with pytest.raises(ValueError, match="`tile_size`"):
        ContrastiveLoss(geometry, tile_size="big")
    with pytest.raises(ValueError, match="`image_all` and `text_all`"):
        tiled_softmax_loss(x, x, geometry, logit_scale=scale, image_all=x)
    with pytest.raises(ValueError, match="offset 2"):
        tiled_softmax_loss(x, x, geometry, logit_scale=scale, image_all=x, text_all=x, offset=2)
    with pytest.raises(ValueError, match="`logit_scale`"):
        tiled_softmax_loss(x, x, geometry, logit_scale=1.0)
    with pytest.raises(ValueError, match="`logit_bias`"):
        tiled_sigmoid_loss(x, x, geometry, logit_scale=scale, logit_bias=None)
    with pytest.raises(ValueError, match="same number of rows"):
        tiled_softmax_loss(x, x[:3], geometry, logit_scale=scale)
    with pytest.raises(ValueError, match="`scores`"):
        tiled_softmax_loss(x, x, "oblique", logit_scale=scale)


@pytest.mark.parametrize("objective", ["softmax", "sigmoid"])
@pytest.mark.parametrize("name", ["oblique", "lorentz"])
def test_contrastive_loss_tiled_equals_materialized_with_its_diagnostics(name, objective):
    """ContrastiveLoss(tile_size=4) against tile_size=None: loss, every diagnostic, every gradient (float64)."""
    outs = []
    for tile in (4, None):
        geometry, raw_image, raw_text, log_scale, bias = _setup(name, torch.float64, 10)
        if name == "lorentz":
            geometry.entailment_weight = 0.2
        image, text = geometry.project(raw_image), geometry.project(raw_text, modality="text")
        loss = ContrastiveLoss(geometry, objective=objective, tile_size=tile)
        out = loss(image, text, log_scale.exp(), bias if objective == "sigmoid" else None)
        leaves = [raw_image, raw_text, log_scale, *(p for p in geometry.parameters() if p.requires_grad)]
        outs.append((out, torch.autograd.grad(out.loss, leaves)))
    (tiled, grads), (materialized, ref_grads) = outs
    for key, value in materialized.diagnostics().items():
        assert _rel(tiled.diagnostics()[key], value) < 1e-10, key
    assert _rel(tiled.loss, materialized.loss) < 1e-10
    for got, ref in zip(grads, ref_grads):
        assert _rel(got, ref) < 1e-10
