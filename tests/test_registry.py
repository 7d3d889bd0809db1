"""manifold_align.registry.Registry (one mechanism for geometries and temperatures), register_geometry, and parts of
other installed packages found through entry points (a real distribution on sys.path, read by importlib.metadata)."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest
import torch

from manifold_align import Geometry, get_geometry, get_temperature, list_geometries, register_geometry
from manifold_align.geometries import GEOMETRIES
from manifold_align.registry import Registry
from manifold_align.temperature import TEMPERATURES

BUILTINS = ["chordal", "cosine", "euclidean", "geodesic", "lorentz", "oblique"]


# ---- the registry mechanism -----------------------------------------------------------------------------------
def test_register_lookup_names_and_errors():
    registry = Registry("widget")

    @registry.register("b")
    class B:
        def __init__(self, size: int = 1, *, colour: str = "red"):
            self.size, self.colour = size, colour

    registry.register("a")(lambda: "made by a function")
    assert registry.names() == ["a", "b"] and "b" in registry and "c" not in registry and 3 not in registry
    assert B.name == "b" and registry.factory("b") is B
    assert registry.build("a") == "made by a function"
    assert registry.build("b", 2, colour="blue").colour == "blue"
    assert registry.accepted_options("b") == ["size", "colour"]
    with pytest.raises(ValueError, match=r"widget 'b' takes no option\(s\) \['color'\]; accepted: size, colour"):
        registry.build("b", color="blue")
    with pytest.raises(ValueError, match="unknown widget 'c'; registered: a, b"):
        registry.factory("c")
    with pytest.raises(ValueError, match="widget 'b' is already registered; pass overwrite=True"):
        registry.register("b")(lambda: None)
    registry.register("b", overwrite=True)(lambda: "replaced")
    assert registry.build("b") == "replaced"
    with pytest.raises(ValueError, match="`name` of a widget must be a non-empty string"):
        registry.register("")
    with pytest.raises(ValueError, match="a widget factory must be a class or a callable, got int"):
        registry.register("d")(3)


def test_factories_taking_any_keyword_are_not_checked():
    registry = Registry("widget")
    registry.register("any")(lambda **kwargs: kwargs)
    assert registry.accepted_options("any") is None
    assert registry.build("any", whatever=1) == {"whatever": 1}


def test_geometries_and_temperatures_share_the_mechanism():
    assert isinstance(GEOMETRIES, Registry) and isinstance(TEMPERATURES, Registry)
    assert set(BUILTINS) <= set(list_geometries())
    with pytest.raises(ValueError, match=r"temperature 'learnable' takes no option\(s\) \['scale'\]"):
        get_temperature("learnable", scale=2.0)


# ---- geometries -------------------------------------------------------------------------------------------------
def test_unknown_geometry_lists_the_registered_ones():
    with pytest.raises(ValueError, match="unknown geometry 'nope'; registered: chordal, cosine, euclidean, geodesic"):
        get_geometry("nope", n_tokens=2, token_dim=3)


def test_shape_arguments_are_not_options():
    with pytest.raises(ValueError, match=r"geometry 'oblique' takes no option\(s\) \['squared'\]; accepted: none"):
        get_geometry("oblique", n_tokens=2, token_dim=3, squared=True)
    with pytest.raises(ValueError, match="accepted: squared, precise"):
        get_geometry("euclidean", n_tokens=2, token_dim=3, sqared=True)
    with pytest.raises(TypeError):
        get_geometry("oblique", 2, 3)  # k and d are keyword-only


@pytest.fixture
def registered():
    """Names registered by a test, removed afterwards so that other tests see the built-ins only."""
    names = []
    yield names
    for name in names:
        GEOMETRIES._factories.pop(name, None)


def test_register_geometry_adds_a_geometry_found_by_name(registered):
    @register_geometry("test-twice-oblique")
    class TwiceOblique(Geometry):
        def _project(self, features, modality):
            return torch.nn.functional.normalize(features, dim=-1)

        def value_range(self):
            return (-2.0 * self.n_tokens, 2.0 * self.n_tokens)

        def _pairwise(self, a, b):
            return 2 * a.flatten(1) @ b.flatten(1).T

        def _paired(self, a, b):
            return 2 * (a * b).sum((-2, -1))

    registered.append("test-twice-oblique")
    assert TwiceOblique.name == "test-twice-oblique" and "test-twice-oblique" in list_geometries()
    geo = get_geometry("test-twice-oblique", n_tokens=2, token_dim=3)
    oblique = get_geometry("oblique", n_tokens=2, token_dim=3)
    a = oblique.project(torch.randn(3, 2, 3, dtype=torch.float64))
    torch.testing.assert_close(geo.pairwise(a, a), 2 * oblique.pairwise(a, a))
    # the base class's mean: coordinate mean projected back, per token here
    torch.testing.assert_close(geo.mean(a[None].expand(2, -1, -1, -1), dim=0), a)
    with pytest.raises(ValueError, match="already registered"):
        register_geometry("test-twice-oblique")(type("Other", (TwiceOblique,), {}))
    with pytest.raises(ValueError, match=r"register_geometry\('test-x'\) decorates Geometry subclasses"):
        register_geometry("test-x")(lambda **kw: None)


# ---- other installed packages: entry points -------------------------------------------------------------------
def _install(tmp_path, monkeypatch, group, entries, module_source):
    """A distribution ``mygeoms`` on sys.path with ``entries`` under ``group`` (what pip install leaves)."""
    (tmp_path / "mygeoms_pkg.py").write_text(textwrap.dedent(module_source))
    info = tmp_path / "mygeoms-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mygeoms\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mygeoms_pkg", raising=False)


_PLUGIN = """
import torch
from manifold_align import Geometry

class HalfOblique(Geometry):
    def _project(self, features, modality):
        return torch.nn.functional.normalize(features, dim=-1)

    def value_range(self):
        return (-0.5 * self.n_tokens, 0.5 * self.n_tokens)

    def _pairwise(self, a, b):
        return 0.5 * a.flatten(1) @ b.flatten(1).T

    def _paired(self, a, b):
        return 0.5 * (a * b).sum((-2, -1))
"""


def test_an_entry_point_is_listed_then_loaded_on_first_use(tmp_path, monkeypatch):
    group = "test_manifold_align_registry.geometries"
    _install(tmp_path, monkeypatch, group, {"half": "mygeoms_pkg:HalfOblique"}, _PLUGIN)
    registry = Registry("geometry", entry_point_group=group)
    registry.register("oblique")(type(get_geometry("oblique", n_tokens=1, token_dim=2)))
    assert registry.names() == ["half", "oblique"]
    assert "mygeoms_pkg" not in sys.modules  # listed without importing the package
    cls = registry.factory("half")
    assert cls.__name__ == "HalfOblique" and cls.name == "half" and "mygeoms_pkg" in sys.modules
    geo = cls(n_tokens=2, token_dim=3)
    a = geo.project(torch.randn(4, 2, 3, dtype=torch.float64))
    torch.testing.assert_close(geo.paired(a, a), torch.full((4,), 1.0, dtype=torch.float64))


def test_an_unknown_name_lists_installed_names_apart(tmp_path, monkeypatch):
    group = "test_manifold_align_registry_unknown.geometries"
    _install(tmp_path, monkeypatch, group, {"half": "mygeoms_pkg:HalfOblique"}, _PLUGIN)
    registry = Registry("geometry", entry_point_group=group)
    registry.register("oblique")(lambda: None)
    with pytest.raises(ValueError, match="unknown geometry 'nope'; registered: oblique; installed by other packages: "
                                         "half"):
        registry.factory("nope")


def test_an_entry_point_may_name_a_module_that_registers_on_import(tmp_path, monkeypatch):
    group = "test_manifold_align_registry_module.geometries"
    source = _PLUGIN + "\nfrom tests_registry_target import REGISTRY\nREGISTRY.register('half')(HalfOblique)\n"
    registry = Registry("geometry", entry_point_group=group)
    target = type(sys)("tests_registry_target")
    target.REGISTRY = registry
    monkeypatch.setitem(sys.modules, "tests_registry_target", target)
    _install(tmp_path, monkeypatch, group, {"half": "mygeoms_pkg"}, source)
    assert registry.factory("half").__name__ == "HalfOblique"


# ---- the contract suite covers a geometry by its registration -------------------------------------------------
_TOY = """
import torch
from manifold_align import Geometry, register_geometry


@register_geometry("toy-half-oblique")
class HalfOblique(Geometry):
    def _project(self, features, modality):
        return torch.nn.functional.normalize(features, dim=-1)

    def value_range(self):
        return (-0.5 * self.n_tokens, 0.5 * self.n_tokens)

    def _pairwise(self, a, b):
        return 0.5 * a.flatten(1) @ b.flatten(1).T

    def _paired(self, a, b):
        return 0.5 * (a * b).sum((-2, -1)) {broken}
"""


@pytest.mark.slow
@pytest.mark.parametrize("broken", [False, True], ids=["correct", "paired-off-by-1e-3"])
def test_the_contract_suite_covers_a_geometry_registered_before_collection(tmp_path, broken):
    """A plugin module registers a geometry at pytest start-up (as a conftest or an entry point would): the
    contract suite collects it by name, passes for a correct one and fails for one whose paired is off."""
    import subprocess
    from pathlib import Path

    (tmp_path / "toy_geometry_plugin.py").write_text(_TOY.format(broken="+ 1e-3" if broken else ""))
    contract = Path(__file__).parent / "geometries" / "test_contract.py"
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", str(contract), "-q", "-p", "toy_geometry_plugin",
                           "-k", "toy-half-oblique", "-p", "no:cacheprovider"],
                          capture_output=True, text=True, env=env, timeout=300)
    summary = done.stdout.strip().splitlines()[-1]
    if broken:
        assert done.returncode == 1, done.stdout
        assert "FAILED " in done.stdout and "test_paired_is_the_diagonal_of_pairwise[toy-half-oblique" in done.stdout
    else:
        assert done.returncode == 0, done.stdout
        assert " passed" in summary and "failed" not in summary and "skipped" not in summary
        assert int(summary.split(" passed")[0].split()[-1]) >= 30  # every contract test ran on it
