"""The scripts users run by hand: they must keep working as the harness changes."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _run(*args, timeout=None):  # a slow machine is no failure
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env=os.environ.copy(), check=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA; the no-GPU path is moot")
def test_gpu_check_without_cuda_says_so_in_one_line_and_exits_2(tmp_path):
    res = _run("scripts/gpu_check.py", "--out", str(tmp_path / "out"))
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "CUDA is required" in res.stderr
    assert not (tmp_path / "out").exists()


def test_gpu_check_smoke_runs_on_the_cpu_and_writes_its_tables(tmp_path):
    # fp32 only: bf16 autocast on the CPU doubles the time and is tested in test_every_strategy
    res = _run("scripts/gpu_check.py", "--device", "cpu", "--quick", "--precisions", "fp32",
               "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert rows and all(r["status"] == "ok" for r in rows)
    assert all(float(r["samples_per_s"]) > 0 and float(r["train_gflops_per_sample"]) > 0 for r in rows)
    assert (tmp_path / "results.md").exists() and (tmp_path / "env.json").exists()
