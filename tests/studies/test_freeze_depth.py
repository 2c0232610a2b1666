"""The freeze_depth study (Yosinski et al. 2014): its spec, a tiny run of every depth, its claims."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from harness.analysis.claims import evaluate_claims
from harness.analysis.results import RunTables, load
from harness.analysis.tables import measurements_frame
from harness.config.spec import load_study
from harness.run.preflight import check_runnable
from harness.run.records import Measurement
from studies.freeze_depth import claims

N_BLOCKS = 5  # small_cnn: stem, block1-3, head


def _check(name):
    return next(c for c in claims() if c.name == name).check


def _tables(test_by_n: dict[int, list[float]], val_by_n: dict[int, list[float]] | None = None):
    """A run's tables as the study writes them: one final re-run per accuracy, n blocks frozen
    (n = 0 is full_finetune, n >= 1 partial_freeze with train_top_k = 5 - n)."""
    val_by_n = val_by_n or test_by_n
    rows, records = [], []
    for n, accs in test_by_n.items():
        strategy = "full_finetune" if n == 0 else "partial_freeze"
        cell = f"cpu/mnist5k/small_cnn/shots=100/{strategy}/eager"
        for i, (acc, val) in enumerate(zip(accs, val_by_n[n], strict=True)):
            rows.append({"cell": cell, "stage": "final", "trial": len(rows), "seed": 1000 + i,
                         "strategy": strategy, "status": "ok", "error": "",
                         "val_accuracy": val, "test_accuracy": acc,
                         "param_lr": 0.3, "param_train_top_k": np.nan if n == 0 else N_BLOCKS - n,
                         "search_trial": 0 if n == 0 else n - 1})
            records.append(Measurement("r", "freeze_depth", cell, "final", len(records), "all",
                                       strategy, "mnist5k", "small_cnn", "100", "cpu", "eager",
                                       1000 + i, "test", "accuracy", acc, "fraction", None, "ok"))
    return RunTables(measurements_frame(records), pd.DataFrame(rows), pd.DataFrame(), {},
                     {"model": "small_cnn"})


def test_study_validates_and_covers_every_depth():
    spec = check_runnable(load_study("freeze_depth"))
    assert spec.rerun == "all" and spec.pruner == "none" and spec.sampler == "grid"
    assert spec.pretrain.dataset == "synthetic_mnist" and spec.dataset == "mnist5k"
    ks = spec.grid["partial_freeze"]["train_top_k"]
    assert sorted(N_BLOCKS - k for k in ks) == [1, 2, 3, 4]  # with full_finetune: n = 0..4
    assert spec.trials >= len(ks)


def test_degradation_passes_when_accuracy_falls_with_depth():
    tables = _tables({0: [0.92, 0.93, 0.925], 1: [0.92, 0.925, 0.915], 2: [0.90, 0.91, 0.905],
                      3: [0.87, 0.88, 0.875], 4: [0.70, 0.72, 0.71]})
    v = _check("accuracy_falls_as_more_blocks_are_frozen")(tables)
    assert v.passed is True and v.high < 0 and v.unit == "points/block"
    assert v.effect == pytest.approx(-4.75, abs=0.01)  # least-squares slope of the means
    assert "n=4: 71.0%" in v.detail


def test_degradation_fails_when_accuracy_does_not_fall():
    tables = _tables({0: [0.90, 0.91, 0.905], 1: [0.91, 0.90, 0.92], 2: [0.92, 0.91, 0.915],
                      3: [0.91, 0.92, 0.93], 4: [0.92, 0.93, 0.925]})
    v = _check("accuracy_falls_as_more_blocks_are_frozen")(tables)
    assert v.passed is False and v.effect > 0


def test_degradation_is_undetermined_with_too_few_depths():
    v = _check("accuracy_falls_as_more_blocks_are_frozen")(_tables({0: [0.9, 0.91], 4: [0.7, 0.71]}))
    assert v.passed is None and "three" in v.detail


def test_recovery_passes_when_full_finetuning_beats_the_deepest_frozen_transfer():
    tables = _tables({0: [0.925, 0.926, 0.924, 0.927], 1: [0.924, 0.925, 0.926, 0.923],
                      4: [0.70, 0.72, 0.71, 0.71]})
    v = _check("fine_tuning_every_block_recovers")(tables)
    assert v.passed is True and v.low > 0 and v.effect == pytest.approx(21.55)
    assert "n=4" in v.detail and "n=1" in v.detail


def test_recovery_fails_when_freezing_lost_nothing_to_recover():
    # the head alone does as well as fine-tuning every block: no loss, so no recovery
    tables = _tables({0: [0.86, 0.87, 0.865], 1: [0.92, 0.93, 0.925], 4: [0.86, 0.87, 0.865]})
    v = _check("fine_tuning_every_block_recovers")(tables)
    assert v.passed is False and v.effect == pytest.approx(0.0, abs=1e-9)


def test_recovery_compares_with_the_deepest_frozen_depth_not_a_near_identical_one():
    # n=1 is best on validation and as good as full fine-tuning; the claim is about what
    # freezing the most blocks loses (Yosinski's AnB+ against AnB), so n=2 is the comparison
    test = {0: [0.90, 0.91], 1: [0.90, 0.91], 2: [0.80, 0.81]}
    val = {0: [0.90, 0.91], 1: [0.93, 0.94], 2: [0.85, 0.86]}
    v = _check("fine_tuning_every_block_recovers")(_tables(test, val))
    assert "n=2: 80.5%" in v.detail and v.effect == pytest.approx(10.0)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from harness.pipeline import run_study

    spec = load_study("freeze_depth")
    spec = dataclasses.replace(spec, seeds=2, epochs=1, budgets=(10,),
                               pretrain=dataclasses.replace(spec.pretrain, epochs=1))
    run = run_study(spec, out_root=tmp_path_factory.mktemp("runs"), progress=False)
    return spec, load(run.run_dir)


def test_tiny_run_re_runs_every_depth_with_every_seed_and_evaluates_its_claims(tiny_run):
    spec, tables = tiny_run
    final = tables.trials[tables.trials["stage"] == "final"]
    assert (final["status"] == "ok").all()
    assert len(final[final["strategy"] == "full_finetune"]) == spec.seeds
    pf = final[final["strategy"] == "partial_freeze"]
    assert pf.groupby("param_train_top_k").size().to_dict() == {1.0: 2, 2.0: 2, 3.0: 2, 4.0: 2}
    result = evaluate_claims("freeze_depth", tables)
    assert list(result["claim"]) == [c.name for c in claims()]
    assert result["effect"].notna().all() and result["ci_low"].notna().all()
    assert set(result["verdict"]) <= {"pass", "fail"}
