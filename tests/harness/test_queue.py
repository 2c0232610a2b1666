"""The run's queue in its Optuna storage, driven by a stub runner (no training), and its trial rows."""

import json
import math

import optuna
import pytest
from optuna.trial import TrialState

from harness.config.spec import StudySpec
from harness.run.queue import Outcome, collect, plan_run, requeue_interrupted, run_trials
from harness.run.records import TrialRow

SPEC = StudySpec(name="t", description="t", dataset="digits", classes=(0, 1, 2), budgets=(20,),
                 strategies=("full_finetune",), trials=3, seeds=2)


def _row(cell, stage, number, status="ok", **kw):
    return TrialRow(run_id="r", study="t", cell=cell.id, stage=stage, trial=number,
                    strategy=cell.strategy, budget="20", dataset=cell.dataset, model=cell.model,
                    device=cell.device, execution=cell.execution, status=status, seed=0, **kw)


class _Stub:
    """A TrialRunner that trains nothing: search trial n scores ``scores[n]``, finals 0.8."""

    def __init__(self, scores):
        self.scores, self.calls = scores, []

    def sampler(self, cell, number):
        return optuna.samplers.RandomSampler(seed=number)

    def pruner(self):
        return optuna.pruners.NopPruner()

    def search(self, cell, trial):
        self.calls.append(("search", trial.number))
        hp = {"lr": trial.suggest_float("lr", 1e-3, 1.0, log=True)}
        trial.set_user_attr("hp", hp)
        score = self.scores[trial.number]
        status = "failed" if score is None else "ok"
        return Outcome(_row(cell, "search", trial.number, status, hp=hp), (), [score])

    def final(self, cell, number, index, hp, why):
        self.calls.append(("final", number, index, hp))
        status = "ok" if hp is not None else "failed"
        return Outcome(_row(cell, "final", number, status, error="" if hp else why, hp=hp or {}),
                       (), [0.8])


def _states(storage, name):
    return [t.state for t in optuna.load_study(study_name=name, storage=storage).trials]


def test_searches_run_before_finals_and_the_finals_rerun_the_best_config():
    storage = optuna.storages.InMemoryStorage()
    plan = plan_run(storage, SPEC, "r")
    stub = _Stub({0: 0.5, 1: 0.9, 2: math.nan})
    assert run_trials(storage, plan, stub) == 5
    best = optuna.load_study(study_name=plan.search_name(plan.cells[0]), storage=storage).trials[1]
    assert stub.calls[:3] == [("search", 0), ("search", 1), ("search", 2)]
    assert stub.calls[3:] == [("final", 0, 0, best.user_attrs["hp"]), ("final", 1, 1, best.user_attrs["hp"])]
    cell = plan.cells[0]
    # a NaN objective is a failed trial in Optuna, so selection never sees it
    assert _states(storage, plan.search_name(cell)) == [TrialState.COMPLETE, TrialState.COMPLETE,
                                                        TrialState.FAIL]
    assert _states(storage, plan.final_name(cell)) == [TrialState.COMPLETE] * 2
    assert run_trials(storage, plan, stub) == 0  # every planned trial ran once


def test_the_queue_stores_each_row_with_its_worker_and_collect_reads_them_back():
    storage = optuna.storages.InMemoryStorage()
    plan = plan_run(storage, SPEC, "r")
    run_trials(storage, plan, _Stub({0: 0.5, 1: 0.9, 2: 0.7}))
    records, rows = collect(storage, plan)
    assert records == [] and [(r.stage, r.trial) for r in rows] == [
        ("search", 0), ("search", 1), ("search", 2), ("final", 0), ("final", 1)]
    assert all(r.worker.count(":") == 1 and r.retry_of is None for r in rows)
    assert [r.hp for r in rows[3:]] == [rows[1].hp] * 2


def test_finals_of_a_search_that_never_completed_fail_with_the_reason():
    storage = optuna.storages.InMemoryStorage()
    plan = plan_run(storage, SPEC, "r")
    run_trials(storage, plan, _Stub({0: None, 1: None, 2: None}))
    _, rows = collect(storage, plan)
    assert [r.error for r in rows if r.stage == "final"] == ["no search trial of the cell completed"] * 2


def test_an_interrupted_trial_is_a_bare_failed_row_and_its_copy_says_whose_retry_it_is():
    storage = optuna.storages.InMemoryStorage()
    plan = plan_run(storage, SPEC, "r")
    name = plan.search_name(plan.cells[0])
    first = storage.get_all_trials(storage.get_study_id_from_name(name))[0]
    storage.set_trial_state_values(first._trial_id, state=TrialState.RUNNING)  # its process died
    assert requeue_interrupted(storage, plan) == 1
    run_trials(storage, plan, _Stub({1: 0.5, 2: 0.6, 3: 0.7}))
    _, rows = collect(storage, plan)
    interrupted = rows[0].to_dict()
    assert interrupted["status"] == "failed" and interrupted["error"].startswith("interrupted")
    assert "seed" not in interrupted and "worker" not in interrupted and interrupted["params"] == "{}"
    assert [(r.trial, r.retry_of) for r in rows if r.stage == "search"] == [(0, None), (1, None), (2, None),
                                                                            (3, 0)]


RAN = TrialRow(run_id="r", study="s", cell="c", stage="final", trial=4, seed=1001, strategy="lp",
               budget="20", dataset="digits", model="small_cnn", device="cpu", execution="eager",
               status="ok", bn_mode="eval", val_accuracy=0.5, test_accuracy=0.75, seconds=1.5,
               hp={"wd": 0.0, "lr": 0.1}, ood_accuracy={"rotate:30": 0.25}, worker="h:1",
               search_trial=2)


def test_a_row_that_ran_has_the_trials_table_columns_in_order():
    assert list(RAN.to_dict()) == [
        "run_id", "study", "cell", "stage", "trial", "seed", "strategy", "budget", "dataset", "model",
        "device", "execution", "status", "error", "bn_mode", "val_accuracy", "test_accuracy",
        "seconds", "params", "ood_accuracy:rotate:30", "param_wd", "param_lr", "worker",
        "search_trial", "retry_of"]
    assert RAN.to_dict()["params"] == '{"lr": 0.1, "wd": 0.0}'  # sorted: the same config, one text


def test_a_skipped_cell_has_no_measured_columns_and_no_retry_of():
    skipped = TrialRow(run_id="r", study="s", cell="c", stage="search", trial=None, strategy="lp",
                       budget="all", dataset="d", model="m", device="cuda:7", execution="eager",
                       status="skipped", error="cuda:7 is not available", ran=False)
    assert list(skipped.to_dict()) == ["run_id", "study", "cell", "stage", "trial", "strategy",
                                       "budget", "dataset", "model", "device", "execution", "status",
                                       "error", "params"]


@pytest.mark.parametrize("row", [
    RAN,
    TrialRow(run_id="r", study="s", cell="c", stage="search", trial=0, seed=0, strategy="lp",
             budget="20", dataset="d", model="m", device="cpu", execution="eager", status="failed",
             error="boom", hp={"lr": 1e38}, worker="h:2", pareto=False, retry_of=7),
    TrialRow(run_id="r", study="s", cell="c", stage="search", trial=3, strategy="lp", budget="20",
             dataset="d", model="m", device="cpu", execution="eager", status="running", ran=False),
])
def test_a_stored_row_reads_back_as_the_same_row(row):
    stored = json.loads(json.dumps(row.to_dict()))  # the storage keeps user attributes as JSON
    # as JSON text: the same columns in the same order, NaN included
    assert json.dumps(TrialRow.from_dict(stored).to_dict()) == json.dumps(row.to_dict())


def test_a_stored_row_with_an_unknown_column_fails_naming_it():
    with pytest.raises(ValueError, match=r"no column \['colour'\]"):
        TrialRow.from_dict(RAN.to_dict() | {"colour": "red"})
