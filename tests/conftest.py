"""Shared test fixtures."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# A geometry from another package, declared the way an installed one is (a .dist-info with an entry point in the
# `manifold_align.geometries` group): on the path for this process and the subprocesses tests start, before any
# test module is collected, so every suite parametrized over list_geometries() covers it by registration alone.
PLUGIN_SITE = Path(__file__).parent / "plugins" / "packages"
sys.path.insert(0, str(PLUGIN_SITE))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PLUGIN_SITE), os.environ.get("PYTHONPATH")]))

# The suite is a gate: the same hypothesis examples on every run (derandomized, seeded from each test),
# so a red run can be reproduced and a green one is not luck. `HYPOTHESIS_PROFILE=explore` draws fresh
# random examples on each run, to hunt for new failures (pin what it finds with @example).
settings.register_profile("deterministic", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


@pytest.fixture(autouse=True)
def no_flush_denormal():
    """Leave subnormal floats on after every test: an in-process training run flushes them (a process-wide
    CPU setting), and hypothesis refuses to draw floats when subnormals are flushed."""
    yield
    torch.set_flush_denormal(False)


@pytest.fixture
def restore_default_dtype():
    """Save torch's default dtype and restore it afterwards (geomstats' torch backend changes it)."""
    saved = torch.get_default_dtype()
    try:
        yield saved
    finally:
        torch.set_default_dtype(saved)


@pytest.fixture
def geomstats_numpy(restore_default_dtype):
    """Import geomstats with its numpy backend; torch's default dtype is restored afterwards."""
    os.environ.setdefault("GEOMSTATS_BACKEND", "numpy")
    import geomstats.backend as gs  # noqa: F401  (import only after the backend is chosen)
    import geomstats.geometry.hypersphere as hypersphere
    import geomstats.geometry.nfold_manifold as nfold_manifold

    return types.SimpleNamespace(gs=gs, Hypersphere=hypersphere.Hypersphere, NFoldManifold=nfold_manifold.NFoldManifold)


@pytest.fixture(scope="session")
def straight_runs(tmp_path_factory):
    """``straight_runs(nproc)``: the folder of the uninterrupted run of the fault tests (``fault_runs.SETTINGS``)
    on ``nproc`` processes, run once per session."""
    from fault_runs import run, sets, torchrun_cmd, train_cmd

    done = {}

    def get(nproc: int):
        if nproc not in done:
            folder = tmp_path_factory.mktemp(f"straight{nproc}")
            cmd = (train_cmd(folder / "run", *sets()) if nproc == 1 else
                   torchrun_cmd("-m", "manifold_align_train", "train", "--output", str(folder / "run"), *sets(),
                                nproc=nproc))
            proc = run(cmd, cwd=folder)
            assert proc.returncode == 0, proc.stderr[-3000:]
            done[nproc] = folder / "run"
        return done[nproc]

    return get


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory):
    """A checkpoint of a short default-config run on the embedded digits (about 30% zero-shot top-1)."""
    from labelled_digits import train_checkpoint

    return train_checkpoint(tmp_path_factory.mktemp("digits-run"))


@pytest.fixture(scope="session")
def digit_files(tmp_path_factory):
    """The 360 held-out digits as PNG files: a class-per-folder tree, a CSV listing them, class names and
    templates files (``labelled_digits.DigitFiles``)."""
    from labelled_digits import write_digit_files

    return write_digit_files(tmp_path_factory.mktemp("digit-files"))
