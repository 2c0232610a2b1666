"""Real ``python -m harness`` processes for the kill, signal and scale-out tests, started in the
background with their output in files; the ``procs`` fixture (conftest.py) kills any left."""

import os
import subprocess
import sys


def start(procs, tmp_path, label, *args, env=None):
    """``python -m harness ARGS`` in the background, its output in ``tmp_path/label.{out,err}``
    (files, never pipes: a full pipe would block it)."""
    with open(tmp_path / f"{label}.out", "w") as out, open(tmp_path / f"{label}.err", "w") as err:
        p = subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=tmp_path,
                             env=os.environ | (env or {}), stdout=out, stderr=err, text=True)
    p.label = label
    procs.append(p)
    return p
