import os
import sys
from pathlib import Path

import optuna
import pytest

optuna.logging.set_verbosity(optuna.logging.WARNING)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Pretrained checkpoints of the test session go to a fresh folder, never the user's cache."""
    path = tmp_path_factory.mktemp("harness-cache")
    old = os.environ.get("HARNESS_CACHE_DIR")
    os.environ["HARNESS_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("HARNESS_CACHE_DIR", None)
    else:
        os.environ["HARNESS_CACHE_DIR"] = old


def _run_cli(*args, cwd=None, timeout=600):
    """Run ``python -m harness ARGS`` in a subprocess; returns the CompletedProcess."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, cwd=cwd or ROOT, timeout=timeout, env=os.environ.copy())


@pytest.fixture
def run_cli():
    return _run_cli


@pytest.fixture(scope="module")
def run_cli_module():
    return _run_cli
