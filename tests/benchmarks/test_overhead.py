"""Harness overhead: one epoch through ``harness.train.loop.train`` against the hand-written minimal loop.

The two loops are the ones ``scripts/bench_overhead.py`` compares, so the equal-work test below
also vouches for the script. Benchmarks are disabled in normal runs (``--benchmark-disable``: each
runs once, as a test); compare them with

    pytest tests/benchmarks --benchmark-enable --benchmark-group-by=group
"""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from harness.data.core import Split
from harness.train.loop import LoopConfig

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_overhead.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_overhead", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


@pytest.fixture(scope="module")
def data():
    """Synthetic MNIST-shaped data: 640 training images (10 steps of 64), 128 for validation."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(768, 1, 28, 28, generator=g)
    y = torch.randint(0, len(bench.CLASSES), (768,), generator=g)
    return Split(x[:640], y[:640]), Split(x[640:], y[640:])


CFG = LoopConfig(epochs=1, batch_size=64, lr=0.01, seed=0)


def test_harness_and_minimal_loop_do_identical_work_step_for_step(data):
    train_split, val_split = data
    cfg = LoopConfig(epochs=2, batch_size=64, lr=0.05, seed=3)
    harness = bench.harness_run(bench.fresh_model(0), train_split, val_split, cfg)
    minimal = bench.minimal_run(bench.fresh_model(0), train_split, val_split, cfg)
    assert len(harness.step_losses) == len(minimal.step_losses) == 2 * 10
    # same init, batches, lr and optimizer arithmetic: bitwise equal, not merely close
    assert harness.step_losses == minimal.step_losses
    assert harness.step_losses[0] != harness.step_losses[-1]  # it really trained
    assert harness.samples == minimal.samples == 2 * 640
    assert harness.steady.timed_steps == minimal.steady.timed_steps == 20 - cfg.warmup_steps


def _bench_epoch(benchmark, run, data):
    train_split, val_split = data
    result = benchmark.pedantic(
        run, setup=lambda: ((bench.fresh_model(0), train_split, val_split, CFG), {}),
        rounds=5, iterations=1, warmup_rounds=1,
    )
    assert len(result.step_losses) == 10


@pytest.mark.benchmark(group="overhead")
def test_one_epoch_through_harness_loop_train(benchmark, data):
    _bench_epoch(benchmark, bench.harness_run, data)


@pytest.mark.benchmark(group="overhead")
def test_one_epoch_through_minimal_loop(benchmark, data):
    _bench_epoch(benchmark, bench.minimal_run, data)
