"""Tests for manifold_align.losses.ContrastiveLoss against open_clip and the authors' formula."""

import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

from manifold_align.losses import ContrastiveLoss, ContrastiveLossOutput
from manifold_align.similarity import get_similarity

BUILTINS = ["cosine", "oblique", "geodesic", "chordal"]


def _features(n, k, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, d, generator=g, dtype=dtype)


def _pair(n=8, k=4, d=6, seed=0, similarity="oblique"):
    sim = get_similarity(similarity)
    return sim.project(_features(n, k, d, seed)), sim.project(_features(n, k, d, seed + 1))


@pytest.mark.parametrize("scale", [1.0, 14.3])
def test_cosine_softmax_equals_open_clip(scale):
    img, txt = _pair(similarity="cosine")
    ours = ContrastiveLoss("cosine", {"name": "fixed", "scale": scale})(img, txt)
    ref = ClipLoss()(img, txt, torch.tensor(scale, dtype=torch.float64))
    assert isinstance(ours, ContrastiveLossOutput)
    assert abs(float(ours.loss) - float(ref)) < 1e-6
    assert ours.scale == pytest.approx(scale)


@pytest.mark.parametrize("objective", ["softmax", "sigmoid"])
def test_model_owned_scale_and_bias_equal_open_clip(objective):
    """The trainer's call: the loss has no temperature; the model's forward supplies scale and bias."""
    img, txt = _pair(similarity="cosine")
    scale, bias = torch.tensor(7.5, dtype=torch.float64), torch.tensor(-4.0, dtype=torch.float64)
    loss = ContrastiveLoss("cosine", objective=objective)
    if objective == "softmax":
        ours = loss(img, txt, logit_scale=scale)
        ref = ClipLoss()(img, txt, scale)
    else:
        ours = loss(img, txt, logit_scale=scale, logit_bias=bias)
        ref = SigLipLoss()(img, txt, scale, bias)
    assert abs(float(ours.loss) - float(ref)) < 1e-6
    assert ours.scale == pytest.approx(7.5)


@pytest.mark.parametrize("scale,bias", [(1.0, -10.0), (10.0, -3.0)])
def test_cosine_sigmoid_equals_open_clip(scale, bias):
    img, txt = _pair(similarity="cosine")
    loss = ContrastiveLoss("cosine", {"name": "fixed", "scale": scale}, "sigmoid", bias_init=bias)
    ref = SigLipLoss()(img, txt, torch.tensor(scale, dtype=torch.float64), torch.tensor(bias, dtype=torch.float64))
    assert abs(float(loss(img, txt).loss.detach()) - float(ref)) < 1e-6


def test_oblique_equals_authors_formula():
    raw_img, raw_txt = _features(8, 16, 32, 0), _features(8, 16, 32, 1)
    scale = 3.95
    # the authors' formula, written out independently
    u = raw_img / raw_img.norm(dim=-1, keepdim=True)
    v = raw_txt / raw_txt.norm(dim=-1, keepdim=True)
    logits = scale * torch.einsum("abd,cbd->ac", u, v)
    labels = torch.arange(8)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    sim = get_similarity("oblique")
    loss = ContrastiveLoss("oblique", {"name": "fixed", "scale": scale}).double()
    out = loss(sim.project(raw_img), sim.project(raw_txt))
    # the fixed scale is a float32 buffer: 3.95 is stored to ~1e-7 relative accuracy
    assert abs(float(out.loss) - float(expected)) < 1e-6


def test_loss_floor_on_sphere_at_scale_one():
    # perfect alignment at scale 1 on the sphere: diagonal 1, negatives ~ -1/(N-1) for a simplex
    n = 16
    x = torch.eye(n, dtype=torch.float64) - 1.0 / n
    x = x / x.norm(dim=-1, keepdim=True)
    out = ContrastiveLoss("cosine")(x, x)
    neg = -1.0 / (n - 1)
    floor = math.log(1 + (n - 1) * math.exp(neg - 1))
    assert abs(float(out.loss) - floor) < 1e-9
    assert out.positive_similarity == pytest.approx(1.0)
    assert out.negative_similarity == pytest.approx(neg)
    assert out.gap == pytest.approx(1.0 - neg)


def test_diagnostics():
    img, txt = _pair()
    out = ContrastiveLoss("oblique")(img, txt)
    # the authors' formula in float64, independent of the library's similarity
    s = torch.einsum("abd,cbd->ac", F.normalize(img.double(), dim=-1), F.normalize(txt.double(), dim=-1))
    n = s.shape[0]
    pos = float(s.diag().mean())
    neg = float((s.sum() - s.diag().sum()) / (n * n - n))
    assert out.positive_similarity == pytest.approx(pos) and out.negative_similarity == pytest.approx(neg)
    assert out.gap == pytest.approx(pos - neg)
    assert not out.loss.requires_grad or out.loss.grad_fn is not None


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("objective", ["softmax", "sigmoid"])
def test_loss_gradcheck_float64(name, objective):
    img, txt = _pair(n=4, k=2, d=3, similarity=name)
    loss = ContrastiveLoss(name, {"name": "fixed", "scale": 2.0}, objective, bias_init=-1.0).double()
    img.requires_grad_()
    txt.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: loss(a, b).loss, (img, txt))


def test_learnable_temperature_and_bias_get_gradients():
    img, txt = _pair()
    loss = ContrastiveLoss("oblique", {"name": "learnable", "init": 0.5, "max_scale": 3.95}, "sigmoid")
    loss(img.float(), txt.float()).loss.backward()
    assert loss.temperature.log_scale.grad is not None and loss.logit_bias.grad is not None


def test_external_logit_bias_is_shared():
    bias = torch.nn.Parameter(torch.tensor(-2.0))
    loss = ContrastiveLoss("oblique", None, "sigmoid", logit_bias=bias)
    assert loss.logit_bias is bias
    with pytest.raises(ValueError, match="logit_bias"):
        ContrastiveLoss("oblique", None, "softmax", logit_bias=bias)


def test_cache_labels():
    img, txt = _pair()
    loss = ContrastiveLoss("oblique", cache_labels=True)
    loss(img, txt)
    (cached,) = loss._labels.values()
    loss(img, txt)
    assert len(loss._labels) == 1 and next(iter(loss._labels.values())) is cached  # reused, not rebuilt
    uncached = ContrastiveLoss("oblique")
    uncached(img, txt)
    assert uncached._labels == {}


@pytest.mark.parametrize("objective", ["softmax", "sigmoid"])
def test_autocast_bf16_loss_is_float32(objective):
    img, txt = _pair(similarity="oblique")
    loss = ContrastiveLoss("oblique", {"name": "learnable"}, objective)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(img.bfloat16(), txt.bfloat16())
    assert out.loss.dtype == torch.float32
    assert math.isfinite(float(out.loss))


@pytest.mark.parametrize("objective", ["softmax", "sigmoid"])
def test_non_finite_features_are_named_and_counted(objective):
    img, txt = _pair()
    bad = txt.clone()
    bad[0, 0, 0], bad[1, 2, 3], bad[2, 0, 1] = float("nan"), float("inf"), float("-inf")
    with pytest.raises(ValueError, match=r"`text_features` must be finite, got 1 NaN and 2 Inf values"):
        ContrastiveLoss("oblique", objective=objective)(img, bad)


def test_check_finite_false_lets_non_finite_features_through_as_a_non_finite_loss():
    img, txt = _pair()
    bad = img.clone()
    bad[0, 0, 0] = float("nan")
    out = ContrastiveLoss("oblique", check_finite=False)(bad, txt)
    assert not math.isfinite(float(out.loss))


def test_errors():
    img, txt = _pair()
    loss = ContrastiveLoss("oblique")
    bad = img.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="image_features"):
        loss(bad, txt)
    with pytest.raises(ValueError, match="text_features"):
        loss(img, bad)
    with pytest.raises(ValueError, match="same shape"):
        loss(img, txt[:-1])
    with pytest.raises(ValueError, match="objective"):
        ContrastiveLoss("oblique", objective="hinge")
    with pytest.raises(RuntimeError, match="process group"):
        ContrastiveLoss("oblique", rank=0, world_size=2)(img, txt)


def test_batch_of_one_has_no_negatives():
    img, txt = _pair(n=1)
    out = ContrastiveLoss("oblique")(img, txt)
    assert float(out.loss) == 0.0 and math.isnan(out.negative_similarity)


@pytest.mark.parametrize("offset", [0, 4, 8])
def test_diagnostics_with_rank_offset(offset):
    """Positives at (i, offset + i), as on a rank other than 0 with local_loss."""
    from manifold_align.losses import _diagnostics

    s = torch.randn(4, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(offset))
    positive = torch.zeros(4, 12, dtype=torch.bool)
    positive[torch.arange(4), torch.arange(4) + offset] = True
    pos, neg, scale, bad = _diagnostics(s, offset, {}, torch.tensor(2.5))
    assert bad == {} and scale == 2.5
    assert pos == pytest.approx(float(s[positive].mean()), abs=1e-12)
    assert neg == pytest.approx(float(s[~positive].mean()), abs=1e-12)
