"""The ulmfit_unfreezing study (Howard & Ruder 2018): its spec, a tiny run of every lr, its claims."""

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
from studies.ulmfit_unfreezing import LRS, STRATEGIES, claims


def _check(name):
    return next(c for c in claims() if c.name == name).check


def _tables(test: dict[str, dict[float, list[float]]], val=None):
    """A run's tables as the study writes them: a search trial per lr and one final re-run per
    accuracy. An lr whose accuracies are all None diverged in its search trial (failed with a
    non-finite loss), so its re-runs failed without parameters of their own, as in a real run;
    an accuracy DIVERGED is a re-run that ran and diverged."""
    val = val or test
    rows, records = [], []
    for strategy, by_lr in test.items():
        cell = f"cpu/mnist5k/small_cnn/shots=50/{strategy}/eager"
        for j, (lr, accs) in enumerate(by_lr.items()):
            diverged = all(a is None for a in accs)
            ok = [a for a in val[strategy][lr] if a is not None and a != DIVERGED]
            rows.append({"cell": cell, "stage": "search", "trial": j, "seed": 0,
                         "strategy": strategy, "status": "failed" if diverged else "ok",
                         "error": "NonFiniteLossError: loss is nan at epoch 0" if diverged else "",
                         "val_accuracy": np.mean(ok) if ok else np.nan,
                         "test_accuracy": np.nan, "param_lr": lr, "search_trial": np.nan})
            for i, (acc, v) in enumerate(zip(accs, val[strategy][lr], strict=True)):
                ran_and_diverged = acc == DIVERGED
                error = (f"search trial {j} did not complete" if diverged else
                         "NonFiniteLossError: loss is nan at epoch 2" if ran_and_diverged else "")
                rows.append({"cell": cell, "stage": "final", "trial": j * len(accs) + i,
                             "seed": 1000 + i, "strategy": strategy,
                             "status": "failed" if diverged or ran_and_diverged else "ok",
                             "error": error,
                             "val_accuracy": np.nan if diverged or ran_and_diverged else v,
                             "test_accuracy": np.nan if diverged or ran_and_diverged else acc,
                             "param_lr": np.nan if diverged else lr, "search_trial": j})
                if not diverged and not ran_and_diverged:
                    records.append(Measurement(
                        "r", "ulmfit_unfreezing", cell, "final", j * len(accs) + i, "all",
                        strategy, "mnist5k", "small_cnn", "50", "cpu", "eager", 1000 + i, "test",
                        "accuracy", acc, "fraction", None, "ok"))
    return RunTables(measurements_frame(records), pd.DataFrame(rows), pd.DataFrame(), {},
                     {"classes": [5, 6, 7, 8, 9]})


DIVERGED = "diverged"


def _curve(means: list[float], jitter=(-0.002, 0.0, 0.002)):
    return {lr: [m if m is None or m == DIVERGED else m + j for j in jitter]
            for lr, m in zip(LRS, means, strict=True)}


# plain fine-tuning: best at 0.1, forgets at 1.0 and diverges at 3.0; ULMFiT: flat from 0.03 up
FULL_FORGETS = _curve([0.80, 0.90, 0.94, 0.95, 0.94, 0.70, None])
ULMFIT_FLAT = _curve([0.85, 0.90, 0.93, 0.94, 0.95, 0.94, 0.92])
# the other way round: ULMFiT starves at low learning rates, plain fine-tuning is flat
FULL_FLAT = _curve([0.90, 0.93, 0.94, 0.95, 0.94, 0.93, 0.92])
ULMFIT_STARVES = _curve([0.40, 0.60, 0.80, 0.90, 0.94, 0.93, 0.90])


def test_study_validates_and_sweeps_the_same_lrs_for_every_strategy():
    spec = check_runnable(load_study("ulmfit_unfreezing"))
    assert spec.strategies == STRATEGIES and spec.rerun == "all" and spec.pruner == "none"
    assert all(list(spec.grid[s]["lr"]) == LRS for s in STRATEGIES)
    # one value for every other hyperparameter: only the lr varies within a strategy
    assert all(len(v) == 1 for s in STRATEGIES for k, v in spec.grid[s].items() if k != "lr")
    assert spec.trials == len(LRS)


def test_worst_case_passes_when_only_plain_finetuning_collapses_and_counts_divergence_as_chance():
    full = {**FULL_FORGETS, 3.0: [DIVERGED] * 3}  # every re-run at lr 3 ran and diverged
    v = _check("ulmfit_worst_case_above_full")(_tables({"full_finetune": full,
                                                         "ulmfit": ULMFIT_FLAT}))
    # full's worst is lr 3.0 at chance (1 of 5 classes), ulmfit's 85% at 0.003
    assert v.passed is True and v.effect == pytest.approx(65.0)
    assert "3 of 42" in v.detail


def test_a_search_trial_that_diverged_counts_once_not_as_three_re_runs_that_never_ran():
    # lr 3.0 of plain fine-tuning diverged in its search trial; its three re-runs never ran
    v = _check("ulmfit_worst_case_above_full")(_tables({"full_finetune": FULL_FORGETS,
                                                         "ulmfit": ULMFIT_FLAT}))
    assert v.effect == pytest.approx(65.0) and "1 of 40" in v.detail
    # one run has no seed variance: no interval, so the run cannot decide
    assert v.passed is None and np.isnan(v.low) and "lr 3 (its search trial diverged" in v.detail


def test_worst_case_fails_when_ulmfit_starves_at_low_lr():
    v = _check("ulmfit_worst_case_above_full")(_tables({"full_finetune": FULL_FLAT,
                                                         "ulmfit": ULMFIT_STARVES}))
    assert v.passed is False and v.effect == pytest.approx(-50.0)


def test_worst_case_is_undetermined_when_the_grids_differ():
    partial = {lr: accs for lr, accs in ULMFIT_FLAT.items() if lr < 1}
    v = _check("ulmfit_worst_case_above_full")(_tables({"full_finetune": FULL_FLAT,
                                                         "ulmfit": partial}))
    assert v.passed is None


def test_sensitivity_near_best_passes_when_plain_finetuning_loses_more_within_10x():
    v = _check("ulmfit_less_lr_sensitive_near_its_best")(_tables({"full_finetune": FULL_FORGETS,
                                                                   "ulmfit": ULMFIT_FLAT}))
    # full: best 0.1, window 0.01..1, worst 70% -> 25 points; ulmfit: best 0.3, window
    # 0.03..3, worst 92% -> 3 points
    assert v.passed is True and v.effect == pytest.approx(22.0)
    assert "best lr 0.1" in v.detail and "best lr 0.3" in v.detail


def test_sensitivity_near_best_fails_when_ulmfit_loses_more():
    v = _check("ulmfit_less_lr_sensitive_near_its_best")(_tables({"full_finetune": FULL_FLAT,
                                                                   "ulmfit": ULMFIT_STARVES}))
    assert v.passed is False and v.effect < 0


def test_best_lr_accuracy_passes_when_ulmfit_is_better_and_fails_when_it_only_matches():
    check = _check("ulmfit_beats_full_at_best_lr")
    better = _curve([0.80, 0.85, 0.88, 0.90, 0.99, 0.90, 0.88])
    assert check(_tables({"full_finetune": FULL_FORGETS, "ulmfit": better})).passed is True
    # equal at their best lrs: the old 1-point non-inferiority passed this, Table 7 says better
    v = check(_tables({"full_finetune": FULL_FORGETS, "ulmfit": ULMFIT_FLAT}))
    assert v.passed is False and v.effect == pytest.approx(0.0, abs=1e-9)
    worse = _curve([0.80, 0.85, 0.88, 0.90, 0.91, 0.90, 0.88])
    v = check(_tables({"full_finetune": FULL_FLAT, "ulmfit": worse}))
    assert v.passed is False and v.effect == pytest.approx(-4.0)


def test_best_lr_is_chosen_on_validation_not_test():
    # ulmfit's best test accuracy is at lr 3.0, its best validation accuracy at 0.1
    test = {"full_finetune": FULL_FLAT, "ulmfit": _curve([0.9] * 6 + [0.99])}
    val = {"full_finetune": FULL_FLAT, "ulmfit": _curve([0.9, 0.9, 0.9, 0.95, 0.9, 0.9, 0.8])}
    v = _check("ulmfit_beats_full_at_best_lr")(_tables(test, val))
    assert "ulmfit 90.0% (lr 0.1)" in v.detail


TINY_LRS = [LRS[0], 0.1, LRS[-1]]  # both edges of the grid and its middle


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from harness.pipeline import run_study

    spec = load_study("ulmfit_unfreezing")
    grid = {s: {**g, "lr": TINY_LRS} for s, g in spec.grid.items()}
    # two epochs: the unfreezing strategies still change phase once
    spec = dataclasses.replace(spec, seeds=2, epochs=2, budgets=(4,), grid=grid,
                               trials=len(TINY_LRS),
                               pretrain=dataclasses.replace(spec.pretrain, epochs=1))
    run = run_study(spec, out_root=tmp_path_factory.mktemp("runs"), progress=False)
    return spec, load(run.run_dir)


@pytest.mark.slow
def test_tiny_run_re_runs_every_lr_of_every_strategy_and_evaluates_its_claims(tiny_run):
    spec, tables = tiny_run
    final = tables.trials[tables.trials["stage"] == "final"]
    assert final["status"].isin(["ok", "failed"]).all()  # a diverged lr is a row, not a crash
    search = tables.trials[tables.trials["stage"] == "search"]
    for strategy in spec.strategies:
        mine = final[final["strategy"] == strategy]
        assert len(mine) == len(TINY_LRS) * spec.seeds, strategy
        tried = search[search["strategy"] == strategy]
        assert sorted(tried["param_lr"]) == TINY_LRS, strategy
        assert mine.groupby("search_trial").size().tolist() == [spec.seeds] * len(TINY_LRS)
    result = evaluate_claims("ulmfit_unfreezing", tables)
    assert list(result["claim"]) == [c.name for c in claims()]
    assert result["effect"].notna().all()
    # a tiny run can leave a claim undetermined (a side with too few runs for an interval),
    # but then it says why; a decided claim has its interval
    decided = result[result["verdict"].isin(["pass", "fail"])]
    assert decided["ci_low"].notna().all()
    assert (result.loc[result["verdict"] == "undetermined", "detail"].str.len() > 0).all()
    assert set(result["verdict"]) <= {"pass", "fail", "undetermined"}
