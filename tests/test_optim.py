"""Tests for manifold_align.optim.

References are independent: torch.optim.AdamW / torch.optim.SGD for Euclidean parity, closed-form
optima for the manifold convergence tests, bit patterns and version counters for "grad untouched".
"""

from __future__ import annotations

import copy
import math

import geoopt
import pytest
import torch
from torch import nn

import manifold_align.optim as optim_module
from manifold_align.manifolds import Oblique, ObliqueExact
from manifold_align.manifolds.oblique.steps import OBLIQUE_STEPS
from manifold_align.optim import RiemannianAdamW, RiemannianSGD, parameter_groups

DTYPE = torch.float64

# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
ADAMW_CONFIGS = [
    dict(lr=1e-2, weight_decay=0.0, amsgrad=False),
    dict(lr=1e-2, weight_decay=0.1, amsgrad=False),
    dict(lr=3e-2, weight_decay=0.5, amsgrad=True, betas=(0.8, 0.99)),
    dict(lr=1e-3, weight_decay=1e-2, amsgrad=True, eps=1e-6),
]
SGD_CONFIGS = [
    dict(lr=0.05),
    dict(lr=0.05, weight_decay=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.02, momentum=0.9, dampening=0.5, weight_decay=0.01),
    dict(lr=0.02, momentum=0.8, nesterov=True, weight_decay=0.05),
]
PARAM_KINDS = ["parameter", "euclidean_manifold_parameter"]
TORCH_ONLY_KWARGS = ["foreach", "fused", "capturable", "maximize", "differentiable", "decoupled_weight_decay", "bogus"]
N_STEPS = 60


def _manifolds():
    """Non-Euclidean manifolds whose rows are unit vectors: points of shape (k, d)."""
    return [
        pytest.param(geoopt.Sphere(), id="sphere"),
        pytest.param(geoopt.SphereExact(), id="sphere_exact"),
        pytest.param(Oblique(), id="oblique"),
        pytest.param(ObliqueExact(), id="oblique_exact"),
    ]


def _euclidean_params(kind: str, *, seed: int = 0, dtype=DTYPE) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(5, 3), (4,), (2, 3, 2)]
    tensors = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    if kind == "parameter":
        return [nn.Parameter(t) for t in tensors]
    return [geoopt.ManifoldParameter(t, manifold=geoopt.Euclidean(ndim=1)) for t in tensors]


def _loss(params) -> torch.Tensor:
    """A smooth non-quadratic loss so that trajectories depend on the iterates."""
    return sum(((p - 0.3).pow(2) * (1 + p.sin().pow(2))).sum() + p.cos().sum() for p in params)


def _set_grads(params) -> None:
    for p in params:
        p.grad = None
    _loss(params).backward()


def _run(optimizer, params, n_steps: int = N_STEPS) -> None:
    for _ in range(n_steps):
        _set_grads(params)
        optimizer.step()


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bit pattern of a float tensor (distinguishes -0.0 from 0.0)."""
    return t.detach().clone().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _make(optimizer_cls, params, **kwargs):
    """An optimizer of either class; SGD gets momentum so that its buffer is exercised too."""
    if optimizer_cls is RiemannianSGD:
        kwargs.setdefault("momentum", 0.5)
    return optimizer_cls(params, **kwargs)


def _on_rows_of_unit_norm(x: torch.Tensor, *, atol: float) -> bool:
    return bool(torch.allclose(x.detach().norm(dim=-1), torch.ones((), dtype=x.dtype), atol=atol, rtol=0))


def _random_point(k: int, d: int, *, seed: int, dtype=DTYPE) -> torch.Tensor:
    """A (k, d) tensor with unit rows: a point of OB(d, k), built without the code under test."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(k, d, generator=gen, dtype=dtype)
    return x / x.norm(dim=-1, keepdim=True)


# ----------------------------------------------------------------------------------------------
# parity with torch on Euclidean parameters
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", PARAM_KINDS)
@pytest.mark.parametrize("config", ADAMW_CONFIGS)
def test_adamw_matches_torch_adamw(kind, config):
    ours, ref = _euclidean_params(kind), _euclidean_params("parameter")
    _run(RiemannianAdamW(ours, **config), ours)
    _run(torch.optim.AdamW(ref, foreach=False, **config), ref)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", PARAM_KINDS)
@pytest.mark.parametrize("config", SGD_CONFIGS)
def test_sgd_matches_torch_sgd(kind, config):
    ours, ref = _euclidean_params(kind), _euclidean_params("parameter")
    _run(RiemannianSGD(ours, **config), ours)
    _run(torch.optim.SGD(ref, foreach=False, **config), ref)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("fused_devices", [("cpu", "cuda"), ()], ids=["fused", "foreach"])
def test_adamw_batched_path_matches_torch_with_mixed_dtypes(monkeypatch, fused_devices):
    # float32 and float64 Euclidean tensors share the batched path, split by dtype; () forces
    # torch's multi-tensor kernel, the one devices without a fused kernel get.
    monkeypatch.setattr(optim_module, "_FUSED_DEVICES", fused_devices)
    dtypes = [torch.float32, torch.float64, torch.float32]
    make = lambda: [nn.Parameter(p.detach().to(d)) for p, d in zip(_euclidean_params("parameter"), dtypes)]  # noqa: E731
    ours, ref = make(), make()
    config = dict(lr=1e-2, weight_decay=0.1, amsgrad=True)
    _run(RiemannianAdamW(ours, **config), ours)
    _run(torch.optim.AdamW(ref, foreach=False, **config), ref)
    for a, b in zip(ours, ref):
        assert a.dtype == b.dtype
        tol = 1e-6 if a.dtype == torch.float64 else 1e-5
        torch.testing.assert_close(a.detach(), b.detach(), atol=tol, rtol=tol)


def test_adamw_batched_path_keeps_per_parameter_steps():
    # a parameter without a gradient is skipped, so step counts differ between parameters
    ours, ref = _euclidean_params("parameter"), _euclidean_params("parameter")
    opt_a = RiemannianAdamW(ours, lr=1e-2, weight_decay=0.1)
    opt_b = torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.1, foreach=False)
    for step in range(12):
        for params, opt in ((ours, opt_a), (ref, opt_b)):
            _set_grads(params)
            if step % 3:
                params[0].grad = None
            opt.step()
    assert [opt_a.state[p]["step"] for p in ours] == [4, 12, 12]
    assert all(type(opt_a.state[p]["step"]) is int for p in ours)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-6, rtol=1e-6)


def test_adamw_mixed_group_matches_torch_on_euclidean_members():
    # batched Euclidean tensors, a per-parameter sphere point and a bfloat16 tensor in one group
    params = _mixed_params() + [nn.Parameter(torch.randn(3, 2, dtype=torch.bfloat16))]
    ref = [nn.Parameter(p.detach().clone()) for p in params[:2]]
    opt_a = RiemannianAdamW(params, lr=1e-2, weight_decay=0.1)
    opt_b = torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.1, foreach=False)
    gen = torch.Generator().manual_seed(11)
    for _ in range(10):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
        for p, r in zip(params, ref):
            r.grad = p.grad.clone()
        opt_a.step()
        opt_b.step()
    for a, b in zip(params, ref):
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-6, rtol=1e-6)
    assert _on_rows_of_unit_norm(params[2], atol=1e-10)
    assert opt_a.state[params[3]]["exp_avg"].dtype == torch.float32


def test_adamw_parity_survives_state_dict_round_trip():
    ours, ref = _euclidean_params("parameter"), _euclidean_params("parameter")
    first = RiemannianAdamW(ours, lr=1e-2, weight_decay=0.1, amsgrad=True)
    _run(first, ours, 10)
    resumed = RiemannianAdamW(ours, lr=1e-2, weight_decay=0.1, amsgrad=True)
    resumed.load_state_dict(first.state_dict())
    _run(resumed, ours, 10)
    _run(torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.1, amsgrad=True, foreach=False), ref, 20)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-6, rtol=1e-6)


def test_adamw_parity_after_rewinding_the_same_optimizer():
    # loading an older state into the optimizer that ran on must reset its step counters
    ours, ref = _euclidean_params("parameter"), _euclidean_params("parameter")
    opt = RiemannianAdamW(ours, lr=1e-2, weight_decay=0.1)
    _run(opt, ours, 10)
    saved_state = copy.deepcopy(opt.state_dict())  # state_dict() holds references to live tensors
    saved_params = [p.detach().clone() for p in ours]
    _run(opt, ours, 5)
    opt.load_state_dict(saved_state)
    with torch.no_grad():
        for p, saved in zip(ours, saved_params):
            p.copy_(saved)
    _run(opt, ours, 10)
    _run(torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.1, foreach=False), ref, 20)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-6, rtol=1e-6)


def test_adamw_reuses_its_step_counters_between_steps(monkeypatch):
    # a fresh counter tensor per step would be a host-to-device copy (a GPU sync) per step
    seen = []
    kernel = optim_module._torch_adamw

    def recording(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, **kwargs):
        seen.append([id(t) for t in state_steps])
        return kernel(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, **kwargs)

    monkeypatch.setattr(optim_module, "_torch_adamw", recording)
    params = _euclidean_params("parameter")
    _run(RiemannianAdamW(params, lr=1e-2), params, 3)
    assert len(seen) == 3 and seen[0] == seen[1] == seen[2]


def test_adamw_works_with_lr_scheduler():
    ours, ref = _euclidean_params("parameter"), _euclidean_params("parameter")
    opt_a = RiemannianAdamW(ours, lr=0.05)
    opt_b = torch.optim.AdamW(ref, lr=0.05, foreach=False)
    sched = [torch.optim.lr_scheduler.StepLR(o, step_size=5, gamma=0.5) for o in (opt_a, opt_b)]
    for _ in range(20):
        for params, opt in ((ours, opt_a), (ref, opt_b)):
            _set_grads(params)
            opt.step()
        for s in sched:
            s.step()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-6, rtol=1e-6)


def test_step_returns_closure_loss():
    params = _euclidean_params("parameter")
    opt = RiemannianSGD(params, lr=0.1)

    def closure():
        opt.zero_grad()
        loss = _loss(params)
        loss.backward()
        return loss

    expected = _loss(params).item()
    assert opt.step(closure).item() == pytest.approx(expected)


# ----------------------------------------------------------------------------------------------
# gradients are read, never written
# ----------------------------------------------------------------------------------------------
def _mixed_params(dtype=DTYPE):
    sphere = geoopt.Sphere()
    return [
        nn.Parameter(torch.randn(4, 3, dtype=dtype)),
        geoopt.ManifoldParameter(torch.randn(5, dtype=dtype), manifold=geoopt.Euclidean(ndim=1)),
        geoopt.ManifoldParameter(_random_point(3, 4, seed=1, dtype=dtype), manifold=sphere),
    ]


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: RiemannianAdamW(p, lr=0.1, weight_decay=0.5), id="adamw"),
        pytest.param(lambda p: RiemannianAdamW(p, lr=0.1, weight_decay=0.0, amsgrad=True), id="adamw_nowd"),
        pytest.param(lambda p: RiemannianSGD(p, lr=0.1, weight_decay=0.5), id="sgd"),
        pytest.param(lambda p: RiemannianSGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.5), id="sgd_nag"),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["f64", "bf16"])
def test_step_leaves_grad_bitwise_unchanged(make, dtype):
    params = _mixed_params(dtype)
    opt = make(params)
    for step in range(3):
        for p in params:
            g = torch.randn_like(p)
            g.view(-1)[0] = -0.0  # an in-place `grad.add_(p, alpha=0)` would flip its sign bit
            p.grad = g
        before = [(_bits(p.grad), p.grad._version) for p in params]
        opt.step()
        for p, (bits, version) in zip(params, before):
            assert torch.equal(_bits(p.grad), bits)
            assert p.grad._version == version


# ----------------------------------------------------------------------------------------------
# weight decay: decoupled on Euclidean parameters, skipped on manifold parameters
# ----------------------------------------------------------------------------------------------
def test_adamw_decay_is_decoupled_on_euclidean():
    # zero gradient: Adam's direction is 0, so only the decay moves the point: p * (1 - lr * wd)
    p = nn.Parameter(torch.randn(6, dtype=DTYPE))
    start = p.detach().clone()
    p.grad = torch.zeros_like(p)
    RiemannianAdamW([p], lr=0.1, weight_decay=0.5).step()
    torch.testing.assert_close(p.detach(), start * (1 - 0.1 * 0.5), atol=1e-15, rtol=0)


@pytest.mark.parametrize("manifold", _manifolds())
@pytest.mark.parametrize("optimizer_cls", [RiemannianAdamW, RiemannianSGD])
def test_weight_decay_skipped_on_manifold_params_with_zero_grad(manifold, optimizer_cls):
    x = geoopt.ManifoldParameter(_random_point(3, 5, seed=2), manifold=manifold)
    start = x.detach().clone()
    opt = optimizer_cls([x], lr=0.1, weight_decay=0.5)
    for _ in range(5):
        x.grad = torch.zeros_like(x)
        opt.step()
    torch.testing.assert_close(x.detach(), start, atol=1e-14, rtol=0)


@pytest.mark.parametrize("manifold", _manifolds())
@pytest.mark.parametrize("optimizer_cls", [RiemannianAdamW, RiemannianSGD])
def test_weight_decay_has_no_effect_on_manifold_trajectory(manifold, optimizer_cls):
    target = torch.randn(3, 5, dtype=DTYPE, generator=torch.Generator().manual_seed(3))
    finals = []
    for wd in (0.0, 0.7):
        x = geoopt.ManifoldParameter(_random_point(3, 5, seed=4), manifold=manifold)
        opt = _make(optimizer_cls, [x], lr=0.05, weight_decay=wd)
        for _ in range(10):
            x.grad = None
            (-(x * target).sum()).backward()
            opt.step()
        finals.append(_bits(x))
    assert torch.equal(finals[0], finals[1])


@pytest.mark.parametrize("config", [dict(lr=0.05), dict(lr=0.02, amsgrad=True, betas=(0.8, 0.95), eps=1e-6)])
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_adamw_on_oblique_follows_geoopt_adam_on_its_spheres(config, dtype, atol):
    """The in-place Oblique step (manifold_align.manifolds.oblique.steps) against geoopt's RiemannianAdam on
    geoopt.Sphere, whose rows are the same spheres (projection retraction and transport)."""
    start = torch.stack([_random_point(4, 6, seed=seed, dtype=dtype) for seed in range(5)])  # (5, 4, 6)
    target = torch.randn(5, 4, 6, dtype=dtype, generator=torch.Generator().manual_seed(9))
    finals = []
    for manifold, make in ((Oblique(), RiemannianAdamW), (geoopt.Sphere(), geoopt.optim.RiemannianAdam)):
        x = geoopt.ManifoldParameter(start.clone(), manifold=manifold)
        opt = make([x], **config)
        for _ in range(40):
            x.grad = None
            ((x - target).pow(2) * (1 + x.sin().pow(2))).sum().backward()
            opt.step()
        finals.append((x.detach(), opt.state[x]["exp_avg"]))
    (ours, ours_m), (reference, reference_m) = finals
    torch.testing.assert_close(ours, reference, atol=atol, rtol=0)
    torch.testing.assert_close(ours_m, reference_m, atol=atol, rtol=0)
    assert ours.dtype == dtype and _on_rows_of_unit_norm(ours, atol=10 * atol)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_sgd_on_oblique_follows_geoopt_sgd_on_its_spheres(dtype, atol):
    """Without momentum (geoopt's momentum differs on purpose, see docs/optimization.md)."""
    start = torch.stack([_random_point(4, 6, seed=seed, dtype=dtype) for seed in range(5)])
    target = torch.randn(5, 4, 6, dtype=dtype, generator=torch.Generator().manual_seed(9))
    finals = []
    for manifold, make in ((Oblique(), RiemannianSGD), (geoopt.Sphere(), geoopt.optim.RiemannianSGD)):
        x = geoopt.ManifoldParameter(start.clone(), manifold=manifold)
        opt = make([x], lr=0.05)
        for _ in range(40):
            x.grad = None
            ((x - target).pow(2) * (1 + x.sin().pow(2))).sum().backward()
            opt.step()
        finals.append(x.detach())
    torch.testing.assert_close(finals[0], finals[1], atol=atol, rtol=0)


class _ObliqueByGeooptCalls(Oblique):
    """Oblique without in-place steps: the optimizers take their generic path (geoopt's manifold calls)."""

    def inplace_steps(self, param):
        return None


def test_oblique_offers_in_place_steps_only_where_they_apply():
    def param(manifold, dtype=DTYPE, transposed=False):
        data = _random_point(4, 6, seed=0, dtype=dtype)[None].expand(3, 4, 6).clone()
        if transposed:
            data = data.transpose(0, 1).contiguous().transpose(0, 1)
        p = geoopt.ManifoldParameter(data, manifold=manifold)
        p.grad = torch.ones_like(p)
        return p

    assert Oblique().inplace_steps(param(Oblique())) is OBLIQUE_STEPS
    assert Oblique().inplace_steps(param(Oblique(), torch.float32)) is OBLIQUE_STEPS
    assert Oblique().inplace_steps(param(Oblique(), torch.bfloat16)) is None  # float32 state: generic path
    assert Oblique().inplace_steps(param(Oblique(), transposed=True)) is None
    assert ObliqueExact().inplace_steps(param(ObliqueExact())) is None  # its retraction is the exponential map

    class Retracting(Oblique):  # a subclass that changes the retraction falls back without saying so
        retr = Oblique.expmap

    assert Retracting().inplace_steps(param(Retracting())) is None


class _SpheresWithSteps(geoopt.Sphere):
    """geoopt's Sphere on rows (its math is the oblique one, row by row), offering the in-place steps, counting
    how often the optimizers take them: the optimizers ask the manifold, not its type."""

    calls = 0

    def inplace_steps(self, param):
        def counted(fn):
            def wrapper(*args, **kwargs):
                type(self).calls += 1
                return fn(*args, **kwargs)
            return wrapper

        return OBLIQUE_STEPS._replace(riemannian_grad=counted(OBLIQUE_STEPS.riemannian_grad),
                                      adam_step_=counted(OBLIQUE_STEPS.adam_step_))


@pytest.mark.parametrize("make", [
    pytest.param(lambda p: RiemannianAdamW(p, lr=0.05), id="adamw"),
    pytest.param(lambda p: RiemannianSGD(p, lr=0.05, momentum=0.9), id="sgd_momentum"),
])
def test_optimizers_take_the_steps_any_manifold_offers(make):
    start = torch.stack([_random_point(4, 6, seed=seed) for seed in range(5)])
    target = torch.randn(5, 4, 6, dtype=DTYPE, generator=torch.Generator().manual_seed(9))
    finals = []
    _SpheresWithSteps.calls = 0
    for manifold in (_SpheresWithSteps(), geoopt.Sphere()):
        x = geoopt.ManifoldParameter(start.clone(), manifold=manifold)
        opt = make([x])
        for _ in range(10):
            x.grad = None
            ((x - target).pow(2) * (1 + x.sin().pow(2))).sum().backward()
            opt.step()
        finals.append(x.detach())
    assert _SpheresWithSteps.calls == 10
    torch.testing.assert_close(finals[0], finals[1], atol=1e-12, rtol=0)


@pytest.mark.parametrize("make", [
    pytest.param(lambda p: RiemannianAdamW(p, lr=0.05, amsgrad=True), id="adamw_amsgrad"),
    pytest.param(lambda p: RiemannianSGD(p, lr=0.05, momentum=0.9, dampening=0.1), id="sgd_momentum"),
    pytest.param(lambda p: RiemannianSGD(p, lr=0.05, momentum=0.9, nesterov=True), id="sgd_nesterov"),
])
def test_in_place_oblique_steps_equal_the_generic_path(make):
    start = torch.stack([_random_point(4, 6, seed=seed) for seed in range(5)])
    target = torch.randn(5, 4, 6, dtype=DTYPE, generator=torch.Generator().manual_seed(9))
    finals = []
    for manifold in (Oblique(), _ObliqueByGeooptCalls()):
        x = geoopt.ManifoldParameter(start.clone(), manifold=manifold)
        opt = make([x])
        for _ in range(30):
            x.grad = None
            ((x - target).pow(2) * (1 + x.sin().pow(2))).sum().backward()
            opt.step()
        buffer = opt.state[x].get("exp_avg", opt.state[x].get("momentum_buffer"))
        finals.append((x.detach(), buffer))
    torch.testing.assert_close(finals[0], finals[1], atol=1e-12, rtol=0)


def test_adamw_on_a_non_contiguous_oblique_parameter_takes_the_general_path():
    start = torch.stack([_random_point(4, 6, seed=seed) for seed in range(5)])
    finals = []
    for layout in ("contiguous", "transposed"):
        data = start.clone() if layout == "contiguous" else start.transpose(0, 1).contiguous().transpose(0, 1)
        x = geoopt.ManifoldParameter(data, manifold=Oblique())
        assert x.is_contiguous() == (layout == "contiguous")
        opt = RiemannianAdamW([x], lr=0.05)
        for _ in range(10):
            x.grad = None
            (x.sin() * torch.arange(6, dtype=DTYPE)).sum().backward()
            opt.step()
        finals.append(x.detach().clone())
    torch.testing.assert_close(finals[0], finals[1], atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------------------------
# arguments
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TORCH_ONLY_KWARGS)
@pytest.mark.parametrize("optimizer_cls", [RiemannianAdamW, RiemannianSGD])
def test_unsupported_kwargs_are_rejected(optimizer_cls, name):
    params = _euclidean_params("parameter")
    with pytest.raises(TypeError, match=rf"`{name}`.*accepted arguments:.*lr"):
        optimizer_cls(params, lr=0.1, **{name: True})


@pytest.mark.parametrize("optimizer_cls", [RiemannianAdamW, RiemannianSGD])
def test_unsupported_param_group_keys_are_rejected(optimizer_cls):
    params = _euclidean_params("parameter")
    with pytest.raises(TypeError, match="`maximize`"):
        optimizer_cls([{"params": params, "maximize": True}], lr=0.1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=-1.0), r"`lr` must be a real number >= 0, received -1.0"),
        (dict(lr=float("nan")), r"`lr`.*received nan"),
        (dict(betas=(1.0, 0.9)), r"`betas\[0\]` must be in \[0, 1\), received 1.0"),
        (dict(betas=(0.9, -0.1)), r"`betas\[1\]`.*received -0.1"),
        (dict(betas=0.9), r"`betas` must be a pair"),
        (dict(eps=0.0), r"`eps` must be a real number > 0, received 0.0"),
        (dict(weight_decay=-0.1), r"`weight_decay` must be a real number >= 0, received -0.1"),
        (dict(stabilize=0), r"`stabilize`.*received 0"),
    ],
)
def test_adamw_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RiemannianAdamW(_euclidean_params("parameter"), **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=-0.1), r"`lr`.*>= 0.*-0.1"),
        (dict(lr=0.1, momentum=-0.5), r"`momentum`.*>= 0.*-0.5"),
        (dict(lr=0.1, weight_decay=-1), r"`weight_decay`.*>= 0.*-1"),
        (dict(lr=0.1, nesterov=True), r"`nesterov=True` requires `momentum` > 0"),
        (dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), r"dampening=0.1"),
    ],
)
def test_sgd_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RiemannianSGD(_euclidean_params("parameter"), **kwargs)


def test_bad_value_in_param_group_is_rejected():
    a, b = _euclidean_params("parameter")[:2]
    with pytest.raises(ValueError, match="`lr`"):
        RiemannianAdamW([{"params": [a]}, {"params": [b], "lr": -1.0}])


# ----------------------------------------------------------------------------------------------
# convergence on products of spheres with closed-form optima
# ----------------------------------------------------------------------------------------------
def _linear_problem(k=4, d=6, seed=5):
    """min -sum_i <x_i, a_i> over rows of unit norm: optimum a_i / |a_i|."""
    a = torch.randn(k, d, dtype=DTYPE, generator=torch.Generator().manual_seed(seed))
    return (lambda x: -(x * a).sum()), a / a.norm(dim=-1, keepdim=True)


def _karcher_problem(k=3, d=5, angle=0.6, seed=6):
    """Sum of squared geodesic distances to 4 points per sphere placed symmetrically around a
    centre c_i (c cos t +- e_j sin t, e_1 and e_2 orthonormal and orthogonal to c): optimum c_i."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(k, d, 3, dtype=DTYPE, generator=gen))
    centre, e1, e2 = q[..., 0], q[..., 1], q[..., 2]
    points = torch.stack(
        [centre * math.cos(angle) + sign * e * math.sin(angle) for e in (e1, e2) for sign in (1.0, -1.0)]
    )  # (4, k, d)

    def loss(x):
        cos = (x.unsqueeze(0) * points).sum(-1).clamp(-1 + 1e-12, 1 - 1e-12)
        return torch.acos(cos).pow(2).sum()

    return loss, centre


def _minimize(manifold, problem, make_optimizer, *, n_steps, seed):
    loss_fn, optimum = problem
    k, d = optimum.shape
    start = optimum + 0.8 * torch.randn(k, d, dtype=DTYPE, generator=torch.Generator().manual_seed(seed))
    x = geoopt.ManifoldParameter(start / start.norm(dim=-1, keepdim=True), manifold=manifold)
    optimizer, scheduler = make_optimizer([x])
    for _ in range(n_steps):
        optimizer.zero_grad()
        loss_fn(x).backward()
        optimizer.step()
        scheduler.step()
        assert _on_rows_of_unit_norm(x, atol=1e-10)
    return x.detach(), optimum


def _adamw(params):
    opt = RiemannianAdamW(params, lr=0.1, weight_decay=0.1, stabilize=10)
    return opt, torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.99)


def _sgd(params):
    opt = RiemannianSGD(params, lr=0.1, momentum=0.8, weight_decay=0.1, stabilize=10)
    return opt, torch.optim.lr_scheduler.ExponentialLR(opt, gamma=1.0)


@pytest.mark.parametrize("manifold", _manifolds())
@pytest.mark.parametrize("make_optimizer, n_steps", [(_adamw, 300), (_sgd, 150)], ids=["adamw", "sgd"])
@pytest.mark.parametrize("problem", [_linear_problem, _karcher_problem], ids=["linear", "karcher_mean"])
def test_converges_to_known_optimum(manifold, make_optimizer, n_steps, problem):
    x, optimum = _minimize(manifold, problem(), make_optimizer, n_steps=n_steps, seed=7)
    torch.testing.assert_close(x, optimum, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------
# low precision
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("manifold", _manifolds())
@pytest.mark.parametrize("optimizer_cls", [RiemannianAdamW, RiemannianSGD])
def test_low_precision_params_step(optimizer_cls, manifold, dtype):
    x = geoopt.ManifoldParameter(_random_point(3, 8, seed=8, dtype=dtype), manifold=manifold)
    w = nn.Parameter(torch.randn(4, 3, dtype=dtype))
    opt = _make(optimizer_cls, [x, w], lr=0.05, weight_decay=0.1, stabilize=2)
    for _ in range(4):
        x.grad, w.grad = torch.randn_like(x), torch.randn_like(w)
        opt.step()
    assert x.dtype == dtype and w.dtype == dtype
    assert torch.isfinite(x).all() and torch.isfinite(w).all()
    assert _on_rows_of_unit_norm(x.float(), atol=2e-2)


def test_bf16_adamw_step_close_to_float32_torch():
    gen = torch.Generator().manual_seed(9)
    start, grad = torch.randn(16, 8, generator=gen), torch.randn(16, 8, generator=gen)
    ours = nn.Parameter(start.to(torch.bfloat16))
    ref = nn.Parameter(start.clone())
    ours.grad, ref.grad = grad.to(torch.bfloat16), grad.clone()
    RiemannianAdamW([ours], lr=0.1).step()
    torch.optim.AdamW([ref], lr=0.1, foreach=False).step()
    torch.testing.assert_close(ours.float(), ref.detach(), atol=2e-2, rtol=1e-2)


# ----------------------------------------------------------------------------------------------
# parameter groups
# ----------------------------------------------------------------------------------------------
class _TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 8)
        self.norm = nn.LayerNorm(8)
        self.class_embedding = nn.Parameter(torch.randn(3, 8))
        self.pos = nn.Parameter(torch.randn(5, 8))
        self.tokens = geoopt.ManifoldParameter(
            _random_point(3, 8, seed=0, dtype=torch.float32), manifold=geoopt.Sphere()
        )
        self.euclid = geoopt.ManifoldParameter(torch.randn(2, 8), manifold=geoopt.Euclidean(ndim=1))
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)
        self.head = self.proj  # shared module: its parameters must still appear once

    def no_weight_decay(self):
        return {"pos"}


def _group_members(groups):
    return {g["name"]: {id(p) for p in g["params"]} for g in groups}


def test_parameter_groups_default_rules():
    model = _TinyModel()
    groups = parameter_groups(model, 0.05)
    assert [g["name"] for g in groups] == ["manifold", "decay", "no_decay"]
    members = _group_members(groups)
    ids = lambda *ps: {id(p) for p in ps}  # noqa: E731
    assert members["manifold"] == ids(model.tokens)
    assert members["decay"] == ids(model.proj.weight, model.euclid)
    assert members["no_decay"] == ids(model.proj.bias, model.norm.weight, model.norm.bias, model.class_embedding, model.pos)
    assert {g["name"]: g["weight_decay"] for g in groups} == {"manifold": 0.0, "decay": 0.05, "no_decay": 0.0}


def test_parameter_groups_cover_each_trainable_param_exactly_once():
    model = _TinyModel()
    listed = [id(p) for g in parameter_groups(model, 0.1) for p in g["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(listed) == len(set(listed))
    assert set(listed) == trainable
    assert not {id(p) for p in model.frozen.parameters()} & set(listed)


def test_parameter_groups_omit_empty_groups():
    groups = parameter_groups(nn.Linear(3, 3), 0.1)
    assert [g["name"] for g in groups] == ["decay", "no_decay"]


def test_parameter_groups_custom_no_decay():
    model = _TinyModel()
    by_keyword = _group_members(parameter_groups(model, 0.1, no_decay=["proj"]))
    assert id(model.proj.weight) in by_keyword["no_decay"]
    assert id(model.class_embedding) in by_keyword["decay"]  # default keywords replaced
    by_rule = _group_members(parameter_groups(model, 0.1, no_decay=lambda name, p: False))
    assert id(model.proj.bias) in by_rule["decay"]
    assert by_rule["manifold"] == {id(model.tokens)}


def test_parameter_groups_feed_optimizers():
    model = _TinyModel()
    for opt in (RiemannianAdamW(parameter_groups(model, 0.1)), torch.optim.AdamW(parameter_groups(model, 0.1))):
        assert [g["name"] for g in opt.param_groups] == ["manifold", "decay", "no_decay"]


def test_parameter_groups_reject_negative_weight_decay():
    with pytest.raises(ValueError, match="`weight_decay`.*-1"):
        parameter_groups(nn.Linear(2, 2), -1.0)
