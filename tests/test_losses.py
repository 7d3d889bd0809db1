"""Tests for manifold_align.losses.ContrastiveLoss against open_clip's ClipLoss / SigLipLoss and the authors'
formulas written out in float64."""

import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

from manifold_align import ContrastiveLoss, ContrastiveLossOutput, get_geometry
from manifold_align.losses import SIGLIP_BIAS_INIT, _similarity_means

SPHERES = ["cosine", "oblique", "geodesic", "chordal"]
BUILTINS = [*SPHERES, "euclidean", "lorentz"]
F64 = torch.float64


def _features(n, k, d, seed, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, d, generator=g, dtype=dtype)


def _geometry(name="oblique", k=4, d=6, **options):
    return get_geometry(name, n_tokens=k, token_dim=d, **options).double()


def _pair(n=8, k=4, d=6, seed=0, geometry="oblique"):
    geo = _geometry(geometry, k, d)
    return geo.project(_features(n, k, d, seed)), geo.project(_features(n, k, d, seed + 1), modality="text")


def _scalar(value):
    return torch.tensor(value, dtype=F64)


# ---- against open_clip -------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1.0, 14.3])
def test_cosine_softmax_equals_open_clip(scale):
    img, txt = _pair(geometry="cosine")
    ours = ContrastiveLoss(_geometry("cosine"))(img, txt, _scalar(scale))
    ref = ClipLoss()(img.flatten(1), txt.flatten(1), _scalar(scale))
    assert isinstance(ours, ContrastiveLossOutput)
    assert abs(ours.loss.item() - ref.item()) < 1e-6
    assert ours.scale.item() == pytest.approx(scale)


@pytest.mark.parametrize("scale,bias", [(1.0, -10.0), (10.0, -3.0), (7.5, -4.0)])
def test_cosine_sigmoid_equals_open_clip(scale, bias):
    img, txt = _pair(geometry="cosine")
    ours = ContrastiveLoss(_geometry("cosine"), objective="sigmoid")(img, txt, _scalar(scale), _scalar(bias))
    ref = SigLipLoss()(img.flatten(1), txt.flatten(1), _scalar(scale), _scalar(bias))
    assert abs(ours.loss.item() - ref.item()) < 1e-6
    assert ours.scale.item() == pytest.approx(scale)


def test_siglip_bias_init_is_open_clips():
    assert SIGLIP_BIAS_INIT == -10.0  # open_clip's init_logit_bias for SigLIP (Zhai et al., 2023)


# ---- against the authors' formulas ---------------------------------------------------------------------------
def test_oblique_equals_authors_formula():
    raw_img, raw_txt = _features(8, 16, 32, 0), _features(8, 16, 32, 1)
    scale = 3.95
    # the authors' formula, written out independently
    u = raw_img / raw_img.norm(dim=-1, keepdim=True)
    v = raw_txt / raw_txt.norm(dim=-1, keepdim=True)
    logits = scale * torch.einsum("abd,cbd->ac", u, v)
    labels = torch.arange(8)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    geo = _geometry("oblique", 16, 32)
    out = ContrastiveLoss(geo)(geo.project(raw_img), geo.project(raw_txt), _scalar(scale))
    assert abs(out.loss.item() - expected.item()) < 1e-12


def _euclidean_scores(a, b):
    return -((a[:, None] - b[None]) ** 2).sum((-2, -1))


def test_euclidean_softmax_is_the_scaled_negative_squared_distance():
    img, txt = _features(6, 2, 4, 0), _features(6, 2, 4, 1)
    logits = 3.5 * _euclidean_scores(img, txt)
    labels = torch.arange(6)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    out = ContrastiveLoss(_geometry("euclidean", 2, 4))(img, txt, _scalar(3.5))
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-9) and out.scale.item() == pytest.approx(3.5)


def test_euclidean_sigmoid_uses_the_given_bias():
    img, txt = _features(5, 2, 4, 0), _features(5, 2, 4, 1)
    logits = 2.0 * _euclidean_scores(img, txt) - 1.5
    labels = 2 * torch.eye(5, dtype=F64) - 1
    expected = -F.logsigmoid(labels * logits).sum() / 5
    out = ContrastiveLoss(_geometry("euclidean", 2, 4), objective="sigmoid")(img, txt, _scalar(2.0), _scalar(-1.5))
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-9)


def test_loss_floor_on_sphere_at_scale_one():
    # perfect alignment at scale 1 on the sphere: diagonal 1, negatives ~ -1/(N-1) for a simplex
    n = 16
    x = torch.eye(n, dtype=F64) - 1.0 / n
    x = (x / x.norm(dim=-1, keepdim=True))[:, None]  # (n, 1, n): k = 1
    out = ContrastiveLoss(_geometry("cosine", 1, n))(x, x, _scalar(1.0))
    neg = -1.0 / (n - 1)
    floor = math.log(1 + (n - 1) * math.exp(neg - 1))
    assert abs(out.loss.item() - floor) < 1e-9
    assert out.positive_similarity.item() == pytest.approx(1.0)
    assert out.negative_similarity.item() == pytest.approx(neg)
    assert out.gap.item() == pytest.approx(1.0 - neg)


# ---- the output: tensors, diagnostics ------------------------------------------------------------------------
def test_diagnostics_are_0_dim_tensors_without_gradient():
    img, txt = _pair()
    scale = _scalar(2.0).requires_grad_()
    out = ContrastiveLoss(_geometry())(img.requires_grad_(), txt, scale)
    # the authors' formula in float64, independent of the library's geometry
    s = torch.einsum("abd,cbd->ac", F.normalize(img.detach(), dim=-1), F.normalize(txt, dim=-1))
    n = s.shape[0]
    pos = s.diag().mean().item()
    neg = ((s.sum() - s.diag().sum()) / (n * n - n)).item()
    assert out.positive_similarity.item() == pytest.approx(pos) and out.negative_similarity.item() == pytest.approx(neg)
    assert out.gap.item() == pytest.approx(pos - neg)
    assert out.loss.requires_grad and out.loss.dim() == 0
    diagnostics = out.diagnostics()
    assert set(diagnostics) == {"contrastive_loss", "temperature", "positive_similarity", "negative_similarity", "gap"}
    for value in diagnostics.values():
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad
    assert out.contrastive.item() == pytest.approx(out.loss.item())


def test_extra_terms_are_reported_by_name():
    geo = _geometry("lorentz", 2, 3, entailment_weight=0.2)
    img, txt = geo.project(_features(6, 2, 3, 0)), geo.project(_features(6, 2, 3, 1), modality="text")
    out = ContrastiveLoss(geo)(img, txt, _scalar(1.0))
    assert set(out.extra) == {"entailment"} and "entailment_loss" in out.diagnostics()
    assert out.loss.item() == pytest.approx(out.contrastive.item() + 0.2 * out.extra["entailment"].item(), abs=1e-12)


@pytest.mark.parametrize("offset", [0, 4, 8])
def test_similarity_means_with_rank_offset(offset):
    """Positives at (i, offset + i), as on a rank other than 0 with local_loss."""
    s = torch.randn(4, 12, dtype=F64, generator=torch.Generator().manual_seed(offset))
    positive = torch.zeros(4, 12, dtype=torch.bool)
    positive[torch.arange(4), torch.arange(4) + offset] = True
    pos, neg = _similarity_means(s, offset)
    assert pos.item() == pytest.approx(s[positive].mean().item(), abs=1e-12)
    assert neg.item() == pytest.approx(s[~positive].mean().item(), abs=1e-12)


def test_batch_of_one_has_no_negatives():
    img, txt = _pair(n=1)
    out = ContrastiveLoss(_geometry())(img, txt, _scalar(1.0))
    assert out.loss.item() == 0.0 and math.isnan(out.negative_similarity.item())


# ---- gradients -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("objective", ["softmax", "sigmoid"])
def test_loss_gradcheck_float64(name, objective):
    geo = _geometry(name, 2, 3)
    img = geo.project(_features(4, 2, 3, 0)).detach().requires_grad_()
    txt = geo.project(_features(4, 2, 3, 1), modality="text").detach().requires_grad_()
    scale = _scalar(2.0).requires_grad_()
    loss = ContrastiveLoss(geo, objective=objective)
    if objective == "softmax":
        assert torch.autograd.gradcheck(lambda a, b, s: loss(a, b, s).loss, (img, txt, scale))
    else:
        bias = _scalar(-1.0).requires_grad_()
        assert torch.autograd.gradcheck(lambda a, b, s, c: loss(a, b, s, c).loss, (img, txt, scale, bias))


def test_the_given_scale_and_bias_get_gradients():
    img, txt = _pair()
    scale, bias = _scalar(2.0).requires_grad_(), _scalar(-1.0).requires_grad_()
    ContrastiveLoss(_geometry(), objective="sigmoid")(img, txt, scale, bias).loss.backward()
    assert scale.grad is not None and bias.grad is not None


# ---- the geometry instance ------------------------------------------------------------------------------------
def test_the_loss_holds_the_models_geometry_without_owning_its_parameters():
    geo = _geometry("lorentz", 2, 3)
    loss = ContrastiveLoss(geo)
    assert loss.geometry is geo
    assert list(loss.parameters()) == [] and loss.state_dict() == {}
    img, txt = geo.project(_features(4, 2, 3, 0)), geo.project(_features(4, 2, 3, 1), modality="text")
    loss(img, txt, _scalar(1.0)).loss.backward()
    assert geo.log_curvature.grad is not None  # the gradient reaches the model's instance
    assert "geometry='lorentz'" in repr(loss)


def test_cache_labels():
    img, txt = _pair()
    loss = ContrastiveLoss(_geometry(), cache_labels=True)
    loss(img, txt, _scalar(1.0))
    (cached,) = loss._labels.values()
    loss(img, txt, _scalar(1.0))
    assert len(loss._labels) == 1 and next(iter(loss._labels.values())) is cached  # reused, not rebuilt
    uncached = ContrastiveLoss(_geometry())
    uncached(img, txt, _scalar(1.0))
    assert uncached._labels == {}


@pytest.mark.parametrize("objective", ["softmax", "sigmoid"])
def test_autocast_bf16_loss_is_float32(objective):
    img, txt = _pair()
    bias = torch.tensor(-1.0) if objective == "sigmoid" else None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ContrastiveLoss(_geometry(), objective=objective)(img.bfloat16(), txt.bfloat16(), torch.tensor(2.0), bias)
    assert out.loss.dtype == torch.float32
    assert math.isfinite(out.loss.item())


# ---- validation: finite, on the space, one host transfer ----------------------------------------------------------
@pytest.mark.parametrize("objective", ["softmax", "sigmoid"])
def test_non_finite_features_are_named_and_counted(objective):
    img, txt = _pair()
    bad = txt.clone()
    bad[0, 0, 0], bad[1, 2, 3], bad[2, 0, 1] = float("nan"), float("inf"), float("-inf")
    bias = _scalar(-1.0) if objective == "sigmoid" else None
    with pytest.raises(ValueError, match=r"`text_features` must be finite, got 1 NaN and 2 Inf values"):
        ContrastiveLoss(_geometry(), objective=objective)(img, bad, _scalar(1.0), bias)


def test_check_finite_false_lets_non_finite_features_through_as_a_non_finite_loss():
    img, txt = _pair()
    bad = img.clone()
    bad[0, 0, 0] = float("nan")
    out = ContrastiveLoss(_geometry(), check_finite=False, check_on_manifold=False)(bad, txt, _scalar(1.0))
    assert not math.isfinite(out.loss.item())
    # validate=False skips the checks the constructor enabled
    out = ContrastiveLoss(_geometry())(bad, txt, _scalar(1.0), validate=False)
    assert not math.isfinite(out.loss.item())


def _largest_norm_error(x, flat):
    """max | |row| - 1 | in float64, written out independently of the library."""
    rows = x.double().flatten(1) if flat else x.double()
    return (rows.norm(dim=-1) - 1).abs().max().item()


@pytest.mark.parametrize("name", SPHERES)
@pytest.mark.parametrize("objective", ["softmax", "sigmoid"])
def test_raw_features_are_refused_naming_the_tensor_and_its_deviation(name, objective):
    """Raw features used to give a plausible loss tens of nats off the projected one."""
    img = _geometry(name).project(_features(8, 4, 6, 0))
    raw = _features(8, 4, 6, 1)
    deviation = _largest_norm_error(raw, flat=name == "cosine")
    bias = _scalar(-1.0) if objective == "sigmoid" else None
    with pytest.raises(ValueError, match=rf"`text_features` must lie on .* got a largest \| \|row\| - 1 \| of "
                                         rf"{deviation:.3g}; project"):
        ContrastiveLoss(_geometry(name), objective=objective)(img, raw, _scalar(1.0), bias)


def test_check_on_manifold_false_scores_raw_features_as_given():
    raw_img, raw_txt = _features(8, 4, 6, 0), _features(8, 4, 6, 1)
    out = ContrastiveLoss(_geometry(), check_on_manifold=False)(raw_img, raw_txt, _scalar(1.0))
    logits = torch.einsum("abd,cbd->ac", raw_img, raw_txt)  # the unnormalized formula, written out
    labels = torch.arange(8)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-9)


def test_a_geometry_without_a_constraint_skips_the_check():
    raw_img, raw_txt = 10 * _features(8, 4, 6, 0), 10 * _features(8, 4, 6, 1)  # far off any sphere
    out = ContrastiveLoss(_geometry("euclidean"))(raw_img, raw_txt, _scalar(0.01))
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_features_projected_in_low_precision_pass_the_manifold_check(dtype):
    geo = get_geometry("oblique", n_tokens=16, token_dim=32)
    img, txt = (geo.project(_features(8, 16, 32, s, dtype=torch.float32)).to(dtype) for s in (0, 1))
    assert _largest_norm_error(img, flat=False) > 0  # rounding, inside the tolerance
    ContrastiveLoss(geo)(img, txt, torch.tensor(1.0))


class _HostReads:
    """Counts the ways a tensor's value reaches Python (on CPU these are what a GPU would sync on)."""

    NAMES = ("item", "tolist", "__bool__", "__float__", "__int__")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _original=original, **kwargs):
                self.count += 1
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.mark.parametrize("name, options", [
    ("cosine", {}), ("oblique", {}), ("chordal", {}), ("euclidean", {}), ("geodesic", {}),
    pytest.param("euclidean", {"squared": False}, id="euclidean-unsquared"),
    pytest.param("lorentz", {"entailment_weight": 0.2}, id="lorentz-entailment"),
])
@pytest.mark.parametrize("objective", ["softmax", "sigmoid"])
def test_the_loss_reads_the_device_only_to_validate(monkeypatch, name, options, objective):
    geo = _geometry(name, 4, 6, **options)
    img, txt = geo.project(_features(8, 4, 6, 0)), geo.project(_features(8, 4, 6, 1), modality="text")
    loss = ContrastiveLoss(geo, objective=objective)
    bias = _scalar(-1.0) if objective == "sigmoid" else None
    reads = _HostReads(monkeypatch)
    loss(img, txt, _scalar(1.0), bias, validate=False)
    unvalidated = reads.count
    out = loss(img, txt, _scalar(1.0), bias)
    validated = reads.count - unvalidated
    monkeypatch.undo()
    assert validated == unvalidated + 1  # NaN/Inf counts and deviations come back in one transfer
    assert unvalidated == 0
    assert math.isfinite(out.loss.item())


# ---- bad arguments name themselves -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "image, text, name, message",
    [
        (torch.randn(8, 512), torch.randn(8, 512), "image_features",
         r"must have shape \(N, 4, 6\).*got shape \(8, 512\)"),
        (torch.randn(0, 4, 6), torch.randn(0, 4, 6), "image_features",
         r"must have shape \(N, k, d\) with N >= 1, got the empty shape \(0, 4, 6\)"),
        (torch.ones(8, 4, 6, dtype=torch.int64), torch.ones(8, 4, 6), "image_features",
         r"must be a floating-point tensor .*got dtype torch.int64"),
        (torch.ones(8, 4, 6), torch.ones(8, 4, 6, dtype=torch.int32), "text_features",
         r"must be a floating-point tensor .*got dtype torch.int32"),
        (torch.ones(8, 4, 6), torch.ones(8, 5, 6), "text_features", r"must have shape \(N, 4, 6\).*\(8, 5, 6\)"),
    ],
    ids=["flat-features-for-oblique", "empty-batch", "int64-image", "int32-text", "wrong-k-text"],
)
def test_bad_inputs_name_the_loss_argument_expected_and_received(image, text, name, message):
    """(8, 512) used to name the geometry's internal `a`; an empty batch gave NaN; ints a torch error."""
    with pytest.raises(ValueError, match=rf"`{name}` {message}"):
        ContrastiveLoss(get_geometry("oblique", n_tokens=4, token_dim=6))(image, text, torch.tensor(1.0))


def test_forward_argument_errors():
    img, txt = _pair()
    loss = ContrastiveLoss(_geometry())
    with pytest.raises(ValueError, match="same shape"):
        loss(img, txt[:-1], _scalar(1.0))
    with pytest.raises(ValueError, match="`logit_scale` must be a one-element floating-point tensor.*got float"):
        loss(img, txt, 2.0)
    with pytest.raises(ValueError, match="`logit_scale` must be a one-element.*got \\(2,\\)"):
        loss(img, txt, torch.ones(2))
    with pytest.raises(ValueError, match="`logit_bias` is only used with objective='sigmoid'"):
        loss(img, txt, _scalar(1.0), _scalar(0.0))
    with pytest.raises(ValueError, match="`logit_bias` is required with objective='sigmoid'"):
        ContrastiveLoss(_geometry(), objective="sigmoid")(img, txt, _scalar(1.0))
    with pytest.raises(RuntimeError, match="process group"):
        ContrastiveLoss(_geometry(), rank=0, world_size=2)(img, txt, _scalar(1.0))


@pytest.mark.parametrize("kwargs, match", [
    ({"objective": "hinge"}, "`objective` must be one of softmax, sigmoid"),
    ({"local_loss": "no"}, "`local_loss` must be True or False"),
    ({"check_finite": 1}, "`check_finite` must be True or False"),
    ({"world_size": 0}, "`world_size` must be an int >= 1"),
    ({"rank": 2, "world_size": 2}, r"`rank` must be an int in \[0, world_size = 2\)"),
])
def test_constructor_errors_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ContrastiveLoss(_geometry(), **kwargs)


def test_a_name_instead_of_a_geometry_is_refused():
    with pytest.raises(ValueError, match="`geometry` must be a Geometry.*got str"):
        ContrastiveLoss("oblique")
