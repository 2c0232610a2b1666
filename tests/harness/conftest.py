"""Fixtures of the harness tests that start real processes."""

import subprocess

import pytest


@pytest.fixture
def procs():
    """The processes a test starts; whatever the test's end, none outlives it."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()
