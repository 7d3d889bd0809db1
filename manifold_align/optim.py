"""Riemannian optimizers with torch semantics, built on geoopt.

geoopt's ``RiemannianAdam`` and ``RiemannianSGD`` are the engine: the manifold operations
(``egrad2rgrad``, ``component_inner``, ``retr_transp``, ``projx``/``proju`` for stabilization) are
theirs. What this module changes is where geoopt departs from ``torch.optim``:

- weight decay is never written into ``p.grad`` (geoopt does ``grad.add_(point, alpha=wd)``);
- ``RiemannianAdamW`` decays decoupled, like ``torch.optim.AdamW``;
- weight decay is skipped on parameters constrained to a non-Euclidean manifold, where shrinking
  the point towards the origin has no meaning;
- the first SGD momentum buffer is the gradient itself, as in ``torch.optim.SGD`` (geoopt
  seeds it with the raw gradient and then adds the gradient again);
- torch keyword arguments that would be silently ignored (``foreach``, ``maximize``, ...) are
  rejected, and hyper-parameters are validated with messages naming the argument;
- float16/bfloat16 parameters are updated in float32 (geoopt's ``EPS`` tables only have float32
  and float64 keys), with the optimizer state kept in float32;
- ``RiemannianAdamW`` steps its Euclidean float32/float64 parameters together with torch's own
  AdamW kernel (fused on CPU and CUDA, multi-tensor elsewhere) instead of geoopt's per-tensor
  Python update with its full-size temporaries;
- where a parameter's manifold offers in-place steps (``manifold.inplace_steps(param)`` returns them,
  as :class:`~manifold_align.manifolds.Oblique` does for float32/float64 parameters, see
  :mod:`manifold_align.manifolds.oblique.steps`) ``RiemannianAdamW`` and ``RiemannianSGD`` take the same
  step in place, with the manifold's operations written out instead of geoopt's calls, each of which
  returns a new parameter-sized tensor.

``parameter_groups`` splits a model's parameters into "manifold", "decay" and "no_decay" groups.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable
from typing import Any

import geoopt
import torch
from torch import nn
from torch.optim.adamw import adamw as _torch_adamw

from .dtypes import compute_dtype as _compute_dtype

__all__ = ["NO_DECAY_KEYWORDS", "RiemannianAdamW", "RiemannianSGD", "parameter_groups"]

NO_DECAY_KEYWORDS: tuple[str, ...] = (
    "class_embedding",
    "positional_embedding",
    "logit_scale",
    "temperature",
    "logit_bias",
    "class_tokens",
)
"""Substrings of parameter names that ``parameter_groups`` never decays by default."""

# Keys torch itself may put into a param group dict passed to ``add_param_group``.
_EXTRA_GROUP_KEYS = frozenset({"params", "name", "stabilize", "initial_lr", "param_names"})
# Euclidean parameters of these dtypes take RiemannianAdamW's batched path (state in the
# parameter's dtype, as in torch); float16/bfloat16 keep float32 state, so they take the
# per-parameter path.
_BATCHED_DTYPES = (torch.float32, torch.float64)
# Devices with a fused AdamW kernel in torch (one pass over each tensor, no temporaries); any
# other device gets torch's multi-tensor (foreach) AdamW.
_FUSED_DEVICES = ("cpu", "cuda")


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------
def _reject_unsupported(owner: str, given: dict[str, Any], accepted: Iterable[str]) -> None:
    """Raise ``TypeError`` naming every keyword in ``given`` and listing the accepted ones."""
    if given:
        names = ", ".join(f"`{k}`" for k in sorted(given))
        raise TypeError(
            f"{owner} does not support the argument(s) {names}; "
            f"accepted arguments: {', '.join(sorted(accepted))}"
        )


def _is_real(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not value.is_complex()
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_real(name: str, value: Any, ok: bool, expected: str) -> None:
    if not _is_real(value) or not ok:
        raise ValueError(f"`{name}` must be {expected}, received {value!r}")


def _check_nonnegative(name: str, value: Any) -> None:
    _check_real(name, value, _is_real(value) and bool(value >= 0), "a real number >= 0")


def _check_positive(name: str, value: Any) -> None:
    _check_real(name, value, _is_real(value) and bool(value > 0), "a real number > 0")


def _check_betas(betas: Any) -> None:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"`betas` must be a pair (beta1, beta2) with values in [0, 1), received {betas!r}")
    for i, beta in enumerate(betas):
        _check_real(f"betas[{i}]", beta, _is_real(beta) and bool(0 <= beta < 1), "in [0, 1)")


def _check_stabilize(stabilize: Any) -> None:
    ok = stabilize is None or (isinstance(stabilize, int) and not isinstance(stabilize, bool) and stabilize > 0)
    if not ok:
        raise ValueError(f"`stabilize` must be None or a positive int (steps), received {stabilize!r}")


def _check_group_keys(owner: str, group: dict, defaults: dict) -> None:
    accepted = set(defaults) | _EXTRA_GROUP_KEYS
    _reject_unsupported(f"{owner} param group", {k: v for k, v in group.items() if k not in accepted}, accepted)


def _validate_adamw(group: dict) -> None:
    _check_nonnegative("lr", group["lr"])
    _check_betas(group["betas"])
    _check_positive("eps", group["eps"])
    _check_nonnegative("weight_decay", group["weight_decay"])
    _check_stabilize(group.get("stabilize"))


def _validate_sgd(group: dict) -> None:
    _check_nonnegative("lr", group["lr"])
    _check_nonnegative("momentum", group["momentum"])
    _check_real("dampening", group["dampening"], _is_real(group["dampening"]), "a real number")
    _check_nonnegative("weight_decay", group["weight_decay"])
    _check_stabilize(group.get("stabilize"))
    if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
        raise ValueError(
            "`nesterov=True` requires `momentum` > 0 and `dampening` == 0, received "
            f"momentum={group['momentum']!r}, dampening={group['dampening']!r}"
        )


# ----------------------------------------------------------------------------------------------
# helpers shared by both optimizers
# ----------------------------------------------------------------------------------------------
def _manifold_of(param: torch.Tensor) -> geoopt.Manifold:
    """The manifold a parameter lives on (``geoopt.Euclidean`` for plain tensors)."""
    if isinstance(param, (geoopt.ManifoldParameter, geoopt.ManifoldTensor)):
        return param.manifold
    return geoopt.Euclidean()


def _is_euclidean(manifold: geoopt.Manifold) -> bool:
    return isinstance(manifold, geoopt.Euclidean)


def _is_manifold_constrained(param: torch.Tensor) -> bool:
    """Whether ``param`` is a geoopt tensor on a non-Euclidean manifold (no weight decay there)."""
    return not _is_euclidean(_manifold_of(param))


def _inplace_steps(param: torch.Tensor, manifold: geoopt.Manifold):
    """The manifold's in-place steps for ``param`` (``manifold.inplace_steps(param)``), or None: manifolds
    without the method (geoopt's own, third-party ones) take the generic path."""
    offer = getattr(manifold, "inplace_steps", None)
    return None if offer is None else offer(param)


def _scratch_like(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> torch.Tensor:
    """Work space shaped like ``param`` for the in-place steps: one buffer per optimizer, device
    and dtype, as large as the largest parameter that needed one (not optimizer state: never saved)."""
    key = (param.device, param.dtype)
    buffers = optimizer.__dict__.setdefault("_scratch", {})
    if key not in buffers or buffers[key].numel() < param.numel():
        buffers[key] = torch.empty(param.numel(), dtype=param.dtype, device=param.device)
    return buffers[key][: param.numel()].view_as(param)


def _read_grad(param: torch.Tensor, dtype: torch.dtype, *, private: bool) -> torch.Tensor:
    """``param.grad`` in ``dtype``; a copy when ``private`` so that callees may modify it.

    Third-party ``egrad2rgrad`` implementations may work in place, so non-Euclidean parameters
    get a private copy; the Euclidean path only uses out-of-place ops on the gradient.
    """
    grad = param.grad
    if grad.is_sparse:
        raise RuntimeError("manifold_align.optim does not support sparse gradients")
    return grad.to(dtype, copy=private)


def _state_zeros(param: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)


def _project_group(optimizer: torch.optim.Optimizer, group: dict, buffer_key: str) -> None:
    """Project manifold parameters back onto their manifold and their buffer onto the tangent space."""
    for param in group["params"]:
        manifold = _manifold_of(param)
        if _is_euclidean(manifold):
            continue
        point = manifold.projx(param.to(_compute_dtype(param.dtype)))
        param.copy_(point)
        buffer = optimizer.state[param].get(buffer_key) if param in optimizer.state else None
        if buffer is not None:
            buffer.copy_(manifold.proju(point, buffer))


def _as_float(value: Any) -> float:
    """A hyper-parameter as a Python float (a one-element tensor is allowed by validation)."""
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


def _split_batched(params: Iterable[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Parameters with a gradient, split into (Euclidean dense float32/float64, all others)."""
    batched, single = [], []
    for param in params:
        if param.grad is None:
            continue
        fast = (
            param.dtype in _BATCHED_DTYPES
            and param.grad.layout == torch.strided
            and _is_euclidean(_manifold_of(param))
        )
        (batched if fast else single).append(param)
    return batched, single


def _by_device(params: list[torch.Tensor]) -> dict[torch.device, list[int]]:
    """Indices of ``params`` per device (torch's AdamW splits each device's list by dtype)."""
    out: dict[torch.device, list[int]] = {}
    for i, param in enumerate(params):
        out.setdefault(param.device, []).append(i)
    return out


def _steps_as_int(optimizer: torch.optim.Optimizer) -> None:
    # torch.optim.Adam.__setstate__ turns integer steps into tensors; the update wants ints.
    for state in optimizer.state.values():
        if isinstance(state.get("step"), torch.Tensor):
            state["step"] = int(state["step"].item())


# ----------------------------------------------------------------------------------------------
# AdamW
# ----------------------------------------------------------------------------------------------
class RiemannianAdamW(geoopt.optim.RiemannianAdam):
    r"""Riemannian Adam with decoupled weight decay, matching :class:`torch.optim.AdamW`.

    On Euclidean parameters (plain tensors, or ``ManifoldParameter`` on ``geoopt.Euclidean``)
    one step equals ``torch.optim.AdamW``'s: ``p <- p * (1 - lr * weight_decay)``, then the Adam
    update. On manifold parameters the update is geoopt's Riemannian Adam (Riemannian gradient,
    moments from ``component_inner``, ``retr_transp`` of the first moment) and weight decay is
    skipped.

    Parameters
    ----------
    params : iterable
        Parameters or dicts defining parameter groups (keys: ``params``, the hyper-parameters
        below, ``stabilize``, ``name``).
    lr : float
        Learning rate, >= 0.
    betas : tuple of float
        Coefficients of the running averages of the gradient and its square, each in [0, 1).
    eps : float
        Added to the denominator for numerical stability, > 0.
    weight_decay : float
        Decoupled weight decay, >= 0; applied to Euclidean parameters only.
    amsgrad : bool
        Use the AMSGrad variant.
    stabilize : int or None
        Every ``stabilize`` steps, project manifold parameters back onto their manifold and their
        first moment onto the tangent space (geoopt's stabilization). ``None``: never.

    Raises
    ------
    TypeError
        For keyword arguments of ``torch.optim.AdamW`` this optimizer does not implement
        (``foreach``, ``fused``, ``capturable``, ``maximize``, ``differentiable``, ...) or unknown ones.
    ValueError
        For out-of-range hyper-parameters.

    Notes
    -----
    The gradient ``p.grad`` is only read. float16/bfloat16 parameters are updated in float32
    and their state is kept in float32. Euclidean float32/float64 parameters are stepped together
    by torch's functional AdamW (fused kernel on CPU and CUDA, multi-tensor ops elsewhere);
    manifold, low-precision and complex parameters one at a time.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        stabilize: int | None = None,
        **unsupported: Any,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        _reject_unsupported(type(self).__name__, unsupported, [*defaults, "params", "stabilize"])
        _validate_adamw({**defaults, "stabilize": stabilize})
        self._stabilize = stabilize
        # Skip torch.optim.Adam.__init__: it would add foreach/maximize/fused/... defaults this
        # update never reads.
        torch.optim.Optimizer.__init__(self, params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        """Add a parameter group after checking its keys and hyper-parameters."""
        _check_group_keys(type(self).__name__, param_group, self.defaults)
        super().add_param_group(param_group)
        _validate_adamw(self.param_groups[-1])

    def __setstate__(self, state: dict) -> None:
        torch.optim.Optimizer.__setstate__(self, state)
        _steps_as_int(self)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Perform one optimization step; ``closure`` re-evaluates the loss (optional)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            batched, single = _split_batched(group["params"])
            steps = self._update_batched(batched, group)
            steps += [self._update(param, group) for param in single]
            if group["stabilize"] is not None and any(step % group["stabilize"] == 0 for step in steps):
                self.stabilize_group(group)
        return loss

    @torch.no_grad()
    def stabilize_group(self, group: dict) -> None:
        """Project the group's manifold parameters and first moments back where they belong."""
        _project_group(self, group, "exp_avg")

    def _init_state(self, param: torch.Tensor, dtype: torch.dtype, *, amsgrad: bool) -> dict:
        state = self.state[param]
        if not state:
            state["step"] = 0
            state["exp_avg"] = _state_zeros(param, dtype)
            state["exp_avg_sq"] = _state_zeros(param, dtype)
        if amsgrad and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = _state_zeros(param, dtype)
        return state

    def _update_batched(self, params: list[torch.Tensor], group: dict) -> list[int]:
        """One AdamW step for Euclidean float32/float64 ``params``; returns their step counts.

        The arithmetic is torch's functional AdamW (the kernel behind ``torch.optim.AdamW``),
        fed with this optimizer's state. Its step counters are tensors that it increments itself:
        it gets views of one fresh tensor holding the previous counts, and the integer counts in
        the state stay the source of truth (``state_dict`` keeps its layout).
        """
        if not params:
            return []
        amsgrad = group["amsgrad"]
        states = [self._init_state(p, p.dtype, amsgrad=amsgrad) for p in params]
        previous = [state["step"] for state in states]
        for state in states:
            state["step"] += 1
        for device, members in _by_device(params).items():
            fused = device.type in _FUSED_DEVICES
            # fused kernels read float32 steps on the device; foreach reads them on the host
            steps_on = dict(dtype=torch.float32, device=device) if fused else dict(dtype=torch.float64)
            chosen = [states[i] for i in members]
            counts = [previous[i] for i in members]
            counters = self._step_counters((id(group), device), counts, steps_on)
            _torch_adamw(
                [params[i] for i in members],
                [_read_grad(params[i], params[i].dtype, private=False) for i in members],
                [state["exp_avg"] for state in chosen],
                [state["exp_avg_sq"] for state in chosen],
                [state["max_exp_avg_sq"] for state in chosen] if amsgrad else [],
                counters,
                foreach=not fused,
                fused=fused,
                amsgrad=amsgrad,
                beta1=_as_float(group["betas"][0]),
                beta2=_as_float(group["betas"][1]),
                lr=_as_float(group["lr"]),
                weight_decay=_as_float(group["weight_decay"]),
                eps=_as_float(group["eps"]),
                maximize=False,
            )
            # the kernel has added 1 to the counters: they hold the counts of the next step
            self._step_counter_cache[(id(group), device)] = (counters, [count + 1 for count in counts])
        return [state["step"] for state in states]

    def _step_counters(self, key: tuple, counts: list[int], steps_on: dict) -> list[torch.Tensor]:
        """Step counters holding ``counts`` for torch's kernel: views of one tensor.

        torch's kernel adds 1 to them in place, so after a step they hold the next step's counts. The
        views are kept per (group, device) once the kernel has run and handed out again when they hold
        exactly the counts asked for, as at every ordinary step: no host-to-device copy, hence no GPU
        sync, per step. Other ``counts`` (first step, a loaded state dict, a changed parameter list)
        get fresh counters. The entry is taken out while the kernel runs, so a step that raises leaves
        none behind.
        """
        cache = self.__dict__.setdefault("_step_counter_cache", {})
        cached = cache.pop(key, None)
        if cached is not None and cached[1] == counts:
            return cached[0]
        return list(torch.tensor(counts, **steps_on).unbind())

    def _update(self, param: torch.Tensor, group: dict) -> int:
        """One AdamW step for ``param``; returns its step count."""
        manifold = _manifold_of(param)
        steps = _inplace_steps(param, manifold)
        if steps is not None:
            return self._update_in_place(param, group, steps)
        euclidean = _is_euclidean(manifold)
        dtype = _compute_dtype(param.dtype)
        grad = _read_grad(param, dtype, private=not euclidean)
        point = param.to(dtype)  # an alias when no cast: only out-of-place ops below
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        state = self._init_state(param, dtype, amsgrad=group["amsgrad"])
        state["step"] += 1
        if euclidean and group["weight_decay"] != 0:
            point = point * (1 - lr * group["weight_decay"])
        rgrad = grad if euclidean else manifold.egrad2rgrad(point, grad)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(rgrad, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).add_(manifold.component_inner(point, rgrad), alpha=1 - beta2)
        second = exp_avg_sq
        if group["amsgrad"]:
            second = torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
        denom = (second / (1 - beta2 ** state["step"])).sqrt_().add_(eps)
        direction = exp_avg / (1 - beta1 ** state["step"]) / denom
        new_point, new_exp_avg = manifold.retr_transp(point, -lr * direction, exp_avg)
        param.copy_(new_point)
        exp_avg.copy_(new_exp_avg)
        return state["step"]

    def _update_in_place(self, param: torch.Tensor, group: dict, steps) -> int:
        """The same step with the manifold's in-place ``steps`` (``InplaceSteps``)."""
        state = self._init_state(param, param.dtype, amsgrad=group["amsgrad"])
        state["step"] += 1
        beta1, beta2 = (_as_float(beta) for beta in group["betas"])
        steps.adam_step_(
            param, param.grad, state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq"),
            _scratch_like(self, param), lr=_as_float(group["lr"]), beta1=beta1, beta2=beta2,
            eps=group["eps"], step=state["step"],
        )
        return state["step"]


# ----------------------------------------------------------------------------------------------
# SGD
# ----------------------------------------------------------------------------------------------
class RiemannianSGD(geoopt.optim.RiemannianSGD):
    r"""Riemannian SGD matching :class:`torch.optim.SGD` on Euclidean parameters.

    Euclidean parameters get torch's coupled L2 weight decay ``g <- g + weight_decay * p``
    (computed out of place), momentum ``buf <- momentum * buf + (1 - dampening) * g`` with
    ``buf = g`` on the first step, and optional Nesterov momentum. Manifold parameters use the
    Riemannian gradient, ``retr_transp`` to move and carry the momentum buffer, and no weight
    decay.

    Parameters
    ----------
    params : iterable
        Parameters or dicts defining parameter groups.
    lr : float
        Learning rate, >= 0.
    momentum : float
        Momentum factor, >= 0.
    dampening : float
        Dampening for momentum.
    weight_decay : float
        L2 penalty, >= 0; applied to Euclidean parameters only.
    nesterov : bool
        Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``).
    stabilize : int or None
        Every ``stabilize`` calls of ``step``, project manifold parameters onto their manifold
        and momentum buffers onto the tangent space. ``None``: never.

    Raises
    ------
    TypeError
        For ``torch.optim.SGD`` keywords not implemented here (``maximize``, ``foreach``,
        ``differentiable``, ``fused``) and unknown keywords.
    ValueError
        For out-of-range hyper-parameters.
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        stabilize: int | None = None,
        **unsupported: Any,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
        _reject_unsupported(type(self).__name__, unsupported, [*defaults, "params", "stabilize"])
        _validate_sgd({**defaults, "stabilize": stabilize})
        super().__init__(params, stabilize=stabilize, **defaults)

    def add_param_group(self, param_group: dict) -> None:
        """Add a parameter group after checking its keys and hyper-parameters."""
        _check_group_keys(type(self).__name__, param_group, self.defaults)
        super().add_param_group(param_group)
        _validate_sgd(self.param_groups[-1])

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Perform one optimization step; ``closure`` re-evaluates the loss (optional)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            group["step"] = group.get("step", 0) + 1  # geoopt's per-group counter for stabilize
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group)
            if group["stabilize"] is not None and group["step"] % group["stabilize"] == 0:
                self.stabilize_group(group)
        return loss

    @torch.no_grad()
    def stabilize_group(self, group: dict) -> None:
        """Project the group's manifold parameters and momentum buffers back where they belong."""
        _project_group(self, group, "momentum_buffer")

    def _update(self, param: torch.Tensor, group: dict) -> None:
        """One SGD step for ``param``."""
        manifold = _manifold_of(param)
        steps = _inplace_steps(param, manifold)
        if steps is not None:
            self._update_in_place(param, group, steps)
            return
        euclidean = _is_euclidean(manifold)
        dtype = _compute_dtype(param.dtype)
        grad = _read_grad(param, dtype, private=not euclidean)
        point = param.to(dtype)  # an alias when no cast: only out-of-place ops below
        if euclidean and group["weight_decay"] != 0:
            grad = grad.add(point, alpha=group["weight_decay"])
        rgrad = grad if euclidean else manifold.egrad2rgrad(point, grad)
        momentum = group["momentum"]
        if momentum == 0:
            param.copy_(manifold.retr(point, -group["lr"] * rgrad))
            return
        buffer = self._momentum(param, rgrad, dtype, momentum=momentum, dampening=group["dampening"])
        direction = rgrad.add(buffer, alpha=momentum) if group["nesterov"] else buffer
        new_point, new_buffer = manifold.retr_transp(point, -group["lr"] * direction, buffer)
        param.copy_(new_point)
        buffer.copy_(new_buffer)

    def _update_in_place(self, param: torch.Tensor, group: dict, steps) -> None:
        """The same step with the manifold's in-place ``steps`` (``InplaceSteps``)."""
        rgrad = steps.riemannian_grad(param, param.grad, out=_scratch_like(self, param))
        momentum, buffer = group["momentum"], None
        direction = rgrad
        if momentum != 0:
            buffer = self._momentum(param, rgrad, param.dtype, momentum=momentum, dampening=group["dampening"])
            direction = rgrad.add_(buffer, alpha=momentum) if group["nesterov"] else buffer
        steps.retract_(param.add_(direction, alpha=-_as_float(group["lr"])))
        if buffer is not None:
            steps.transport_(param, buffer)

    def _momentum(self, param, rgrad, dtype, *, momentum: float, dampening: float) -> torch.Tensor:
        """Update and return the momentum buffer; the first buffer is the gradient (torch rule)."""
        state = self.state[param]
        buffer = state.get("momentum_buffer")
        if buffer is None:
            buffer = state["momentum_buffer"] = rgrad.to(dtype, copy=True).contiguous()
        else:
            buffer.mul_(momentum).add_(rgrad, alpha=1 - dampening)
        return buffer


# ----------------------------------------------------------------------------------------------
# parameter groups
# ----------------------------------------------------------------------------------------------
NoDecayRule = Callable[[str, nn.Parameter], bool]


def _model_no_weight_decay(model: nn.Module) -> set[str]:
    """Names from ``model.no_weight_decay()`` (timm convention), or an empty set."""
    hook = getattr(model, "no_weight_decay", None)
    return set(hook()) if callable(hook) else set()


def _listed(name: str, listed: set[str]) -> bool:
    """``name`` is listed, or lies under a listed module (``"pos" `` covers ``"pos.weight"``)."""
    return name in listed or any(name.startswith(entry + ".") for entry in listed)


def _default_rule(keywords: tuple[str, ...], listed: set[str]) -> NoDecayRule:
    def rule(name: str, param: nn.Parameter) -> bool:
        return param.ndim < 2 or _listed(name, listed) or any(k in name for k in keywords)

    return rule


def _no_decay_rule(no_decay, model: nn.Module) -> NoDecayRule:
    if callable(no_decay):
        return no_decay
    if no_decay is None:
        keywords = NO_DECAY_KEYWORDS
    elif isinstance(no_decay, str):
        keywords = (no_decay,)
    elif isinstance(no_decay, Iterable):
        keywords = tuple(no_decay)
        if not all(isinstance(k, str) for k in keywords):
            raise TypeError(f"`no_decay` must hold name substrings (str), received {keywords!r}")
    else:
        raise TypeError(
            "`no_decay` must be None, an iterable of name substrings or a callable (name, param) -> bool, "
            f"received {type(no_decay).__name__}"
        )
    return _default_rule(keywords, _model_no_weight_decay(model))


def parameter_groups(model: nn.Module, weight_decay: float, *, no_decay=None) -> list[dict]:
    """Split a model's trainable parameters into optimizer groups.

    Each trainable parameter (``requires_grad`` True) lands in exactly one group:

    - ``"manifold"``: a ``geoopt.ManifoldParameter`` on a non-Euclidean manifold; weight decay 0.
    - ``"no_decay"``: by default a parameter with ``ndim < 2`` (biases, norm scales, scalars), a
      name returned by ``model.no_weight_decay()`` if the model defines it (exact name, or a
      module name covering the parameter), or a name containing one of ``NO_DECAY_KEYWORDS``;
      weight decay 0.
    - ``"decay"``: everything else; weight decay ``weight_decay``.

    Frozen parameters are left out, as are empty groups.

    Parameters
    ----------
    model : torch.nn.Module
        The model; shared parameters are listed once.
    weight_decay : float
        Weight decay of the ``"decay"`` group, >= 0.
    no_decay : None, iterable of str or callable, optional
        ``None``: the default rules above. Iterable of str: replaces ``NO_DECAY_KEYWORDS`` (the
        ``ndim < 2`` and ``no_weight_decay()`` rules still apply). Callable ``(name, param) -> bool``:
        replaces all three rules.

    Returns
    -------
    list of dict
        In the order manifold, decay, no_decay; each with keys ``"name"``, ``"params"`` and
        ``"weight_decay"``. Pass it to any ``torch.optim`` optimizer or to this module's.
    """
    _check_nonnegative("weight_decay", weight_decay)
    rule = _no_decay_rule(no_decay, model)
    groups: dict[str, list[nn.Parameter]] = {"manifold": [], "decay": [], "no_decay": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if _is_manifold_constrained(param):
            groups["manifold"].append(param)
        elif rule(name, param):
            groups["no_decay"].append(param)
        else:
            groups["decay"].append(param)
    decay = {"manifold": 0.0, "decay": weight_decay, "no_decay": 0.0}
    return [{"name": key, "params": params, "weight_decay": decay[key]} for key, params in groups.items() if params]
