"""Tests for manifold_align.temperature."""

import math

import pytest
import torch

from manifold_align.temperature import Temperature, get_temperature, list_temperatures, resolve_auto

SCHEDULES = ["cosine", "linear", "exponential"]


def test_none_and_fixed():
    t = get_temperature("none")
    assert t.value() == 1.0 and t.scale().dim() == 0
    s = torch.randn(3, 4)
    assert torch.equal(t(s), s)
    f = get_temperature("fixed", scale=2.5)
    assert f.value() == 2.5 and torch.allclose(f(s), 2.5 * s)
    assert "2.5" in repr(f)


def test_learnable_init_is_a_temperature():
    t = get_temperature("learnable", init=0.07)
    assert math.isclose(t.value(), 1 / 0.07, rel_tol=1e-6)
    assert math.isclose(float(t.log_scale.detach()), math.log(1 / 0.07), rel_tol=1e-6)


@pytest.mark.parametrize("cap", [3.95, 100.0])
def test_learnable_clamps_at_max_scale(cap):
    t = get_temperature("learnable", init=0.001, max_scale=cap)
    assert math.isclose(t.value(), cap, rel_tol=1e-6)
    t.clamp_()
    assert math.isclose(float(t.log_scale.detach().exp()), cap, rel_tol=1e-6)


def test_learnable_gradient_at_cap_only_inward():
    t = get_temperature("learnable", init=0.01, max_scale=3.95)  # log_scale above the cap
    t.scale().backward()  # loss grows with scale: descent lowers it -> gradient passes
    assert float(t.log_scale.grad) > 0
    t.log_scale.grad = None
    (-t.scale()).backward()  # descent would raise it beyond the cap -> blocked
    assert float(t.log_scale.grad) == 0.0


def test_learnable_min_scale():
    t = get_temperature("learnable", init=10.0, min_scale=0.5)
    assert math.isclose(t.value(), 0.5, rel_tol=1e-6)


def test_learnable_gradcheck_float64():
    t = get_temperature("learnable", init=0.5, max_scale=100.0).double()
    sim = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    log_scale = t.log_scale.detach().clone().requires_grad_()

    def f(log_scale, sim):
        return torch.func.functional_call(t, {"log_scale": log_scale}, (sim,))

    assert torch.autograd.gradcheck(f, (log_scale, sim))


@pytest.mark.parametrize("kind", SCHEDULES)
@pytest.mark.parametrize("start,end", [(1.0, 10.0), (20.0, 2.0)])
def test_schedule_endpoints_and_monotone(kind, start, end):
    t = get_temperature(kind, start=start, end=end, steps=50, warmup=10)
    values = []
    for step in range(0, 61):
        t.set_step(step)
        values.append(t.value())
    assert all(math.isclose(v, start, rel_tol=1e-6) for v in values[:11])
    assert math.isclose(values[50], end, rel_tol=1e-6) and math.isclose(values[60], end, rel_tol=1e-6)
    diffs = [b - a for a, b in zip(values, values[1:])]
    sign = 1 if end > start else -1
    assert all(sign * d >= -1e-9 for d in diffs)


@pytest.mark.parametrize("kind", SCHEDULES)
def test_schedule_without_warmup_starts_at_start(kind):
    t = get_temperature({"name": kind, "start": 3.0, "end": 1.0, "steps": 10})
    assert math.isclose(t.value(), 3.0, rel_tol=1e-6)


def test_schedule_scale_reads_no_device_memory():
    # int() of a GPU buffer is a host-device sync per call; a meta tensor raises where a GPU one syncs
    t = get_temperature("cosine", start=1.0, end=5.0, steps=100, warmup=5)
    t.set_step(40)
    expected = t.value()
    t.to("meta")
    scale = t.scale()
    assert scale.device.type == "meta" and t.scale_at(40) == pytest.approx(expected)


def test_state_dict_round_trip():
    t = get_temperature("cosine", start=1.0, end=5.0, steps=100, warmup=5)
    t.set_step(40)
    u = get_temperature("cosine", start=1.0, end=5.0, steps=100, warmup=5)
    u.load_state_dict(t.state_dict())
    assert u.value() == t.value() and int(u.step) == 40
    a = get_temperature("learnable", init=0.07)
    with torch.no_grad():
        a.log_scale.fill_(1.234)
    b = get_temperature("learnable", init=0.07)
    b.load_state_dict(a.state_dict())
    assert b.value() == a.value()
    f = get_temperature("fixed", scale=7.0)
    g = get_temperature("fixed", scale=1.0)
    g.load_state_dict(f.state_dict())
    assert g.value() == 7.0


def test_get_temperature_accepts_instances_dicts_none():
    t = get_temperature("fixed", scale=2.0)
    assert get_temperature(t) is t
    assert isinstance(get_temperature(None), Temperature)
    assert get_temperature({"name": "learnable", "init": 0.5}).value() == pytest.approx(2.0)


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        (("nope",), {}, "unknown temperature .nope. for argument `name`; accepted: cosine, exponential, fixed, learnable, "
         "linear, none, auto"),
        (("learnable",), {"init": 0.0}, "`init`"),
        (("learnable",), {"init": -1.0}, "`init`"),
        (("learnable",), {"max_scale": 0.0}, "`max_scale`"),
        (("learnable",), {"min_scale": 200.0}, "`min_scale`"),
        (("learnable",), {"temperature": 0.1},
         r"'learnable' takes no option\(s\) \['temperature'\]; accepted: init, max_scale"),
        (("fixed",), {}, "needs arguments"),
        (("fixed",), {"scale": -1}, "`scale`"),
        (("cosine",), {"start": 1, "end": 2, "steps": 5, "warmup": 5}, "`steps`"),
        (("linear",), {"start": 0, "end": 2, "steps": 5}, "`start`"),
        (({"init": 0.1},), {}, "'name' key"),
    ],
)
def test_bad_arguments_raise(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_temperature(*args, **kwargs)


# -- "auto": the geometry's own temperature -----------------------------------------------------------------
@pytest.mark.parametrize("geometry, kind, scale", [
    ("oblique", "NoTemperature", 1.0),  # the paper's: no scale on [-k, k]
    ("cosine", "LearnableTemperature", 1 / 0.07),  # CLIP's
    ("euclidean", "LearnableTemperature", 1 / 20),  # measured on the digits task (scale 1 stays at chance)
    ("lorentz", "LearnableTemperature", 1.0),
])
def test_auto_is_the_geometry_s_own_temperature(geometry, kind, scale):
    from manifold_align import get_geometry
    from manifold_align.clip.embed_config import EmbedConfig
    from manifold_align.geometries import geometry_class

    # an instance or the class: the builders resolve "auto" from the class, before anything is built
    for source in (get_geometry(geometry, n_tokens=2, token_dim=4), geometry_class(geometry)):
        built = get_temperature("auto", geometry=source)
        assert type(built).__name__ == kind and built.value() == pytest.approx(scale, rel=1e-6)
        assert resolve_auto("auto", source) == source.default_temperature
        assert resolve_auto({"name": "auto"}, source) == source.default_temperature
    # a config names the temperature it resolved to, so that a saved model rebuilds the same module
    resolved = EmbedConfig(geometry=geometry).temperature
    assert isinstance(resolved, dict) and resolved["name"] != "auto"
    assert type(get_temperature(resolved)).__name__ == kind


def test_auto_needs_a_geometry_and_takes_no_options():
    from manifold_align import get_geometry

    cosine = get_geometry("cosine", n_tokens=1, token_dim=4)
    with pytest.raises(ValueError, match="pass `geometry`"):
        get_temperature("auto")
    with pytest.raises(ValueError, match=r"takes no options.*'init'"):
        get_temperature("auto", geometry=cosine, init=0.5)
    with pytest.raises(ValueError, match=r"takes no options.*'init'"):
        get_temperature({"name": "auto", "init": 0.5}, geometry=cosine)
    assert "auto" in list_temperatures()
    assert resolve_auto({"name": "fixed", "scale": 2.0}, None) == {"name": "fixed", "scale": 2.0}


def test_clip_constants_are_clips():
    from manifold_align.temperature import CLIP_MAX_SCALE, CLIP_TEMPERATURE

    assert (CLIP_TEMPERATURE, CLIP_MAX_SCALE) == (0.07, 100.0)  # Radford et al., 2021
    default = get_temperature("learnable")
    assert default.value() == pytest.approx(1 / 0.07, rel=1e-6) and default.max_scale == 100.0
