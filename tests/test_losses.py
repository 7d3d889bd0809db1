"""Tests for manifold_align.losses.ContrastiveLoss against open_clip and the authors' formula."""

import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

from manifold_align.losses import ContrastiveLoss, ContrastiveLossOutput
from manifold_align.similarity import ObliqueSimilarity, get_similarity

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
    pos, neg, scale, stats = _diagnostics(s, offset, {}, torch.tensor(2.5))
    assert stats == {} and scale == 2.5
    assert pos == pytest.approx(float(s[positive].mean()), abs=1e-12)
    assert neg == pytest.approx(float(s[~positive].mean()), abs=1e-12)


# ---- features off the manifold ------------------------------------------------------------------
def _largest_norm_error(x, flat):
    """max | |row| - 1 | in float64, written out independently of the library."""
    rows = x.double().flatten(1) if flat else x.double()
    return float((rows.norm(dim=-1) - 1).abs().max())


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("objective", ["softmax", "sigmoid"])
def test_raw_features_are_refused_naming_the_tensor_and_its_deviation(name, objective):
    """Raw features used to give a plausible loss tens of nats off the projected one."""
    img = get_similarity(name).project(_features(8, 4, 6, 0)).reshape(8, 4, 6)
    raw = _features(8, 4, 6, 1)
    deviation = _largest_norm_error(raw, flat=name == "cosine")
    loss = ContrastiveLoss(name, objective=objective)
    with pytest.raises(ValueError, match=rf"`text_features` must lie on .* got a largest \| \|row\| - 1 \| of "
                                         rf"{deviation:.3g}; project"):
        loss(img, raw)


def test_check_on_manifold_false_scores_raw_features_as_given():
    raw_img, raw_txt = _features(8, 4, 6, 0), _features(8, 4, 6, 1)
    out = ContrastiveLoss("oblique", check_on_manifold=False)(raw_img, raw_txt)
    logits = torch.einsum("abd,cbd->ac", raw_img, raw_txt)  # the unnormalized formula, written out
    labels = torch.arange(8)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_features_projected_in_low_precision_pass_the_manifold_check(dtype):
    sim = get_similarity("oblique")
    img, txt = (sim.project(_features(8, 16, 32, s, dtype=torch.float32).to(dtype)) for s in (0, 1))
    assert _largest_norm_error(img, flat=False) > 0  # rounding, inside the tolerance
    ContrastiveLoss("oblique")(img, txt)


def test_off_manifold_check_shares_the_diagnostics_transfer():
    """The deviation comes back with the diagnostics (one host transfer), next to the NaN/Inf counts."""
    from manifold_align.losses import _diagnostics

    s = torch.zeros(3, 3, dtype=torch.float64)
    x = torch.tensor([[1.0, float("nan")]])
    _, _, scale, stats = _diagnostics(s, 0, {"x": x}, torch.tensor(3.0),
                                      {"x": torch.tensor(0.25), "y": torch.tensor(2.0)})
    assert stats["x"] == (1, 0, 0.25) and stats["y"] == (0, 0, 2.0) and scale == 3.0


def test_similarity_without_a_manifold_skips_the_check():
    """A similarity on unconstrained features (as a Euclidean one will be) returns no deviation."""

    class Unconstrained(ObliqueSimilarity):
        name = "unconstrained-dot"

        def manifold_deviation(self, features):
            return None

    raw_img, raw_txt = _features(8, 4, 6, 0), _features(8, 4, 6, 1)
    out = ContrastiveLoss(Unconstrained())(raw_img, raw_txt)
    assert torch.isfinite(out.loss)


# ---- bad shapes and dtypes name the loss's own arguments -----------------------------------------
@pytest.mark.parametrize(
    "image, text, name, message",
    [
        (torch.randn(8, 512), torch.randn(8, 512), "image_features",
         r"must have shape \(N, k, d\).*got shape \(8, 512\)"),
        (torch.randn(0, 4, 6), torch.randn(0, 4, 6), "image_features",
         r"must have shape \(N, k, d\) with every size >= 1, got the empty shape \(0, 4, 6\)"),
        (torch.ones(8, 4, 6, dtype=torch.int64), torch.ones(8, 4, 6), "image_features",
         r"must be a floating-point tensor .*got dtype torch.int64"),
        (torch.ones(8, 4, 6), torch.ones(8, 4, 6, dtype=torch.int32), "text_features",
         r"must be a floating-point tensor .*got dtype torch.int32"),
    ],
    ids=["flat-features-for-oblique", "empty-batch", "int64-image", "int32-text"],
)
def test_bad_inputs_name_the_loss_argument_expected_and_received(image, text, name, message):
    """(8, 512) used to name the similarity's internal `a`; an empty batch gave NaN; ints a torch error."""
    with pytest.raises(ValueError, match=rf"`{name}` {message}"):
        ContrastiveLoss("oblique")(image, text)
