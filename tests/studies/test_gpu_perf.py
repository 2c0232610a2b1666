"""The gpu_perf study: it validates, measures fixed configs only, and a tiny version times every cell."""

import dataclasses
import json

import pytest

from harness.analysis.results import load
from harness.config.spec import load_study
from harness.models.core import blocks, build_model
from harness.pipeline import run_study
from harness.registry import STRATEGIES
from harness.run.preflight import check_runnable


def test_gpu_perf_validates_and_measures_one_fixed_config_per_strategy_over_seeds():
    spec = check_runnable(load_study("gpu_perf"))
    assert spec.dataset == "synthetic_cifar" and len(spec.model_axis) >= 2
    assert spec.executions == ("eager", "eager+bf16", "compile", "compile+bf16")
    assert spec.trials == 1 and spec.pruner == "none"  # no search
    assert set(spec.enqueue) == set(spec.strategies)  # the one trial is the enqueued config
    assert spec.seeds >= 3  # repeated measurements to compare against a baseline


@pytest.mark.parametrize("model", load_study("gpu_perf").model_axis)
def test_every_gpu_perf_step_runs_the_model_so_compiling_it_is_what_is_timed(model):
    spec = load_study("gpu_perf")
    net = build_model(model, 3, 10)
    for strategy in spec.strategies:
        plan = STRATEGIES.get(strategy)().plan(blocks(net), spec.enqueue[strategy], spec.epochs)
        # a cached-feature or L-BFGS phase steps the eager head alone, compiled or not
        assert all(not p.cache_features and p.solver == "sgd" for p in plan.phases), strategy


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    full = load_study("gpu_perf")
    spec = dataclasses.replace(full, models=full.model_axis[:1], model=full.model_axis[0],
                               executions=("eager", "eager+bf16"), seeds=1, epochs=1)
    run = run_study(spec, out_root=tmp_path_factory.mktemp("runs"), progress=False)
    return spec, load(run.run_dir)


@pytest.mark.slow  # ~15 s on 2 quiet cores, 70-95 s on a busy machine (8 runs, plots, report)
def test_tiny_gpu_perf_gives_samples_per_s_for_every_cell_and_run(tiny_run):
    spec, run = tiny_run
    assert (run.trials["status"] == "ok").all(), run.trials["error"].tolist()
    m = run.measurements
    speed = m[(m["metric"] == "samples_per_s") & (m["phase"] == "all") & (m["split"] == "train")]
    assert set(speed["cell"]) == {spec.cell_id(*cell) for cell in spec.cells()}
    assert (speed.groupby("cell").size() == 2).all()  # the search trial and the one seed
    assert (speed["value"] > 0).all()
    assert (speed["execution"].isin(["eager", "eager+bf16"])).all()


@pytest.mark.slow
def test_tiny_gpu_perf_runs_exactly_the_enqueued_hyperparameters(tiny_run):
    spec, run = tiny_run
    for _, row in run.trials.iterrows():
        assert json.loads(row["params"]) == spec.enqueue[row["strategy"]], row["cell"]
