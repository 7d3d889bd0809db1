"""The package layout as users meet it: import names, what an import pulls in, and what it prints.

Each check runs in a fresh interpreter, since this test session has imported everything already.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_importing_the_library_imports_neither_open_clip_nor_the_trainer(tmp_path):
    done = _python("import sys, manifold_align\n"
                   "print(sorted(m for m in ('open_clip', 'manifold_align_train', 'manifold_align.clip') "
                   "if m in sys.modules))", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_model_is_library_code_usable_without_the_trainer(tmp_path):
    done = _python("import sys\nimport manifold_align.clip as c\nc.create_model('digits-fast')\n"
                   "print([m for m in sys.modules if m.startswith(('manifold_align_train', 'training'))])", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_no_top_level_training_package_is_installed(tmp_path):
    done = _python("import training", tmp_path)
    assert done.returncode != 0 and "No module named 'training'" in done.stderr


def test_a_users_own_training_package_and_ours_coexist(tmp_path):
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "__init__.py").write_text("OWNER = 'user'\n")
    done = _python("import training, manifold_align_train\nprint(training.OWNER, manifold_align_train.RunConfig.__name__)",
                   tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["user", "RunConfig"]
    cli = subprocess.run([sys.executable, "-m", "manifold_align_train", "train", "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert "torchrun --nproc_per_node 8 -m manifold_align_train train" in " ".join(cli.stdout.split())


@pytest.mark.parametrize("code", ["import manifold_align",
                                  "import manifold_align.clip as c; c.create_model('digits-fast')",
                                  "import manifold_align_train.trainer"])
def test_imports_print_no_warning(tmp_path, code):
    done = _python(code, tmp_path, "-W", "default")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_the_library_leaves_the_warning_filters_as_it_found_them(tmp_path):
    """geoopt's import-time FutureWarning is silenced for that import only, not for the user's program."""
    done = _python("import warnings\nbefore = list(warnings.filters)\nimport manifold_align\n"
                   "assert warnings.filters == before, 'filters changed'\n"
                   "with warnings.catch_warnings(record=True) as seen:\n"
                   "    warnings.warn('`torch.jit.script` is deprecated. Please switch', FutureWarning)\n"
                   "print(len(seen))", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"


def _pyproject_requirements(key: str) -> list:
    """The requirements of one list in pyproject.toml (``dependencies`` or an extra such as ``test``), read
    without tomllib (Python 3.11+; the package supports 3.10)."""
    import re

    from packaging.requirements import Requirement

    text = (REPO / "pyproject.toml").read_text()
    start = text.index(f"\n{key} = [")
    listing = text[start : text.index("\n]", start)]
    return [Requirement(dep) for dep in re.findall(r'^\s+"([^"]+)",', listing, flags=re.M)]


def test_declared_floors_are_the_ones_check_floors_installs():
    """Every lower bound in pyproject.toml's dependencies is a version .ci/check-floors installs and tests
    (and the other way round), so no floor is declared without having been run. The script itself needs
    a fresh venv and minutes of downloads; run it (``.ci/check-floors``) when a floor changes."""
    from packaging.version import Version

    script = (REPO / ".ci" / "check-floors").read_text()
    block = script[script.index("FLOORS=(") : script.index(")", script.index("FLOORS=("))]
    checked = dict(line.strip().strip('"').split("==") for line in block.splitlines()[1:] if "==" in line)
    declared = {req.name: spec.version for req in _pyproject_requirements("dependencies")
                for spec in req.specifier if spec.operator == ">="}
    assert set(checked) == set(declared), (sorted(checked), sorted(declared))
    for name, version in checked.items():
        assert Version(declared[name]) == Version(version), (name, declared[name], version)


def test_the_environment_running_the_tests_is_one_pyproject_admits():
    """The installed versions of the dependencies and the test extras satisfy pyproject.toml's specifiers
    (the upper bound on torch included): the suite passing says something about the declared ranges."""
    import importlib.metadata

    wrong = []
    for req in _pyproject_requirements("dependencies") + _pyproject_requirements("test"):
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            wrong.append(f"{req}: not installed")
            continue
        if not req.specifier.contains(version, prereleases=True):
            wrong.append(f"{req}: {version} installed")
    assert not wrong, wrong
