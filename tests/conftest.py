import os
import sys
from pathlib import Path

import optuna
import pytest

optuna.logging.set_verbosity(optuna.logging.WARNING)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Pretrained checkpoints of the test session go to a fresh folder, never the user's cache.

    Runs draw no figures (``HARNESS_FIGURES=0``, about 10 s a small run) unless a test asks for
    them: ``run_study(..., figures=True)``, ``run_cli(..., env={"HARNESS_FIGURES": "1"})`` or
    the ``figures_on`` fixture; the tests of the figures and of the main job's files do.
    """
    path = tmp_path_factory.mktemp("harness-cache")
    # inductor's cache too: every session compiles cold, as CI on a new machine does
    inductor = tmp_path_factory.mktemp("inductor-cache")
    names = {"HARNESS_CACHE_DIR": str(path), "TORCHINDUCTOR_CACHE_DIR": str(inductor),
             "HARNESS_FIGURES": "0"}
    old = {k: os.environ.get(k) for k in names}
    os.environ.update(names)
    yield path
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def figures_on(monkeypatch):
    """This test's runs and reports draw their figures (the session's default is none)."""
    monkeypatch.setenv("HARNESS_FIGURES", "1")


def _run_cli(*args, cwd=None, timeout=None, env=None):  # no deadline: a slow machine is no failure
    """Run ``python -m harness ARGS`` in a subprocess (``env`` added to this process's);
    returns the CompletedProcess."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, cwd=cwd or ROOT, timeout=timeout,
                          env=os.environ | (env or {}), check=False)


@pytest.fixture
def run_cli():
    return _run_cli


@pytest.fixture(scope="module")
def run_cli_module():
    return _run_cli
