"""Compile once per graph: a run's trials share one inductor cache, the first compile is cold."""

import dataclasses
import os

import pytest

from harness.analysis.results import load
from harness.config.spec import StudySpec
from harness.pipeline import run_study
from harness.run.queue import plan_run
from harness.run.sweep import fresh_compile_cache, run_compile_cache

SPEC = StudySpec(name="cc", description="t", dataset="digits", classes=(0, 1, 2), budgets=(20,),
                 strategies=("full_finetune",), executions=("compile",), epochs=1, batch_size=16,
                 trials=2, seeds=1, sampler="random", pruner="none")


def test_the_run_cache_is_one_folder_for_its_processes_and_goes_with_the_run(tmp_path):
    from harness.run.queue import open_storage

    plan = plan_run(open_storage(f"journal:{tmp_path / 'j.log'}"), SPEC, "r")
    with run_compile_cache(plan) as path:
        assert os.path.isdir(path)
        with fresh_compile_cache(True, path):
            assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == path  # what inductor writes into
        assert os.path.isdir(path)  # a process sharing it leaves it for the others
    assert not os.path.exists(path)
    eager = plan_run(open_storage(f"journal:{tmp_path / 'e.log'}"),
                     dataclasses.replace(SPEC, executions=("eager",)), "e")
    with run_compile_cache(eager) as none:
        assert none is None  # nothing compiles: no folder


@pytest.mark.slow
def test_the_first_trial_compiles_cold_and_the_later_ones_load_its_graphs(tmp_path):
    run = run_study(SPEC, out_root=tmp_path, progress=False)
    m = load(run.run_dir).measurements
    cold = m[m["metric"] == "compile_cold"].sort_values(["stage", "trial"], ascending=[False, True])
    assert cold["value"].tolist() == [1.0, 0.0, 0.0]  # search 0 cold; search 1 and the final warm
    hits = m[(m["metric"] == "compile_cache_hits") & (m["value"] > 0)]
    assert len(hits) == 2
