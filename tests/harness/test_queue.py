"""The run's queue in its Optuna storage, driven by a stub runner (no training), and its trial rows."""

import dataclasses
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


def test_final_studies_and_the_manifest_maximise_so_best_trial_is_the_most_accurate_seed():
    storage = optuna.storages.InMemoryStorage()
    plan = plan_run(storage, SPEC, "r")

    class Seeds(_Stub):
        def final(self, cell, number, index, hp, why):
            out = super().final(cell, number, index, hp, why)
            return Outcome(out.row, (), [0.6 + 0.2 * index])  # seed 1 is the most accurate

    run_trials(storage, plan, Seeds({0: 0.5, 1: 0.9, 2: 0.7}))
    final = optuna.load_study(study_name=plan.final_name(plan.cells[0]), storage=storage)
    manifest = optuna.load_study(study_name=plan.prefix, storage=storage)
    assert final.directions == manifest.directions == [optuna.study.StudyDirection.MAXIMIZE]
    assert final.best_trial.number == 1 and final.best_value == pytest.approx(0.8)


def _journal(tmp_path, monkeypatch):
    from harness.run import queue

    monkeypatch.setattr(queue, "HEARTBEAT_S", 1)  # grace: 4 s
    return queue.open_storage(f"journal:{tmp_path / 'j.log'}")


def _hold(storage, plan, number, worker, beat_age_s, params=None):
    """Search trial ``number`` RUNNING in ``worker``'s hands, its last heartbeat ``beat_age_s`` ago."""
    import time

    name = plan.search_name(plan.cells[0])
    t = storage.get_all_trials(storage.get_study_id_from_name(name))[number]
    storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING)
    for key, value in (params or {}).items():
        storage.set_trial_param(t._trial_id, key, value,
                                optuna.distributions.FloatDistribution(1e-3, 1.0, log=True))
    if worker is not None:
        storage.set_trial_system_attr(t._trial_id, "harness_worker", worker)
    storage.set_trial_system_attr(t._trial_id, "harness_heartbeat", time.time() - beat_age_s)
    return t


def test_a_trial_whose_heartbeat_stopped_is_failed_as_worker_lost_and_rerun_with_its_parameters(
        tmp_path, monkeypatch):
    import threading

    storage = _journal(tmp_path, monkeypatch)
    plan = plan_run(storage, SPEC, "r")
    _hold(storage, plan, 0, "elsewhere:123", beat_age_s=60, params={"lr": 0.25})  # its worker died
    stub = _Stub({1: 0.5, 2: 0.6, 3: 0.7})
    runner = threading.Thread(target=run_trials, args=(storage, plan, stub), daemon=True)
    runner.start()
    runner.join(timeout=600)  # before heartbeats it waited for the dead worker forever
    assert not runner.is_alive(), "the run waited for a trial whose worker is gone"
    trials = optuna.load_study(study_name=plan.search_name(plan.cells[0]), storage=storage).trials
    lost = trials[0]
    assert lost.state == TrialState.FAIL and lost.user_attrs["error"].startswith(
        "worker lost: elsewhere:123 sent no heartbeat for 4 s")
    retry = trials[3]
    assert retry.user_attrs["retry_of"] == 0 and retry.params == {"lr": 0.25}
    assert retry.state == TrialState.COMPLETE and "harness_heartbeat" in retry.system_attrs
    _, rows = collect(storage, plan)
    assert [(r.trial, r.status, r.retry_of) for r in rows if r.stage == "search"] == [
        (0, "failed", None), (1, "ok", None), (2, "ok", None), (3, "ok", 0)]
    assert sum(r.stage == "final" and r.status == "ok" for r in rows) == 2


def test_live_trials_are_those_with_fresh_heartbeats_whose_process_is_not_gone(tmp_path, monkeypatch):
    import socket
    import subprocess
    import sys

    from harness.run.queue import live_trials

    storage = _journal(tmp_path, monkeypatch)
    spec = dataclasses.replace(SPEC, trials=5)
    plan = plan_run(storage, spec, "r")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    here = socket.gethostname()
    _hold(storage, plan, 0, "elsewhere:7", beat_age_s=0)  # another machine, beating
    _hold(storage, plan, 1, "elsewhere:8", beat_age_s=60)  # another machine, silent: gone
    _hold(storage, plan, 2, f"{here}:{dead}", beat_age_s=0)  # this machine, its process exited
    _hold(storage, plan, 3, None, beat_age_s=0)  # an older harness: no worker named
    assert live_trials(storage, plan) == [f"trial 0 of {plan.cells[0].id} on elsewhere:7"]


def test_an_interrupt_fails_the_running_trial_and_queues_it_again(tmp_path, monkeypatch):
    storage = _journal(tmp_path, monkeypatch)
    plan = plan_run(storage, SPEC, "r")

    class CtrlC(_Stub):
        def search(self, cell, trial):
            if trial.number == 1:
                trial.suggest_float("lr", 1e-3, 1.0, log=True)
                raise KeyboardInterrupt
            return super().search(cell, trial)

    with pytest.raises(KeyboardInterrupt):
        run_trials(storage, plan, CtrlC({0: 0.5}))
    trials = optuna.load_study(study_name=plan.search_name(plan.cells[0]), storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING,
                                         TrialState.WAITING]
    assert trials[1].user_attrs["error"].startswith("interrupted")
    assert trials[3].user_attrs["retry_of"] == 1 and trials[3].params == trials[1].params
    run_trials(storage, plan, _Stub({2: 0.6, 3: 0.7}))  # what --resume then runs
    _, rows = collect(storage, plan)
    assert [(r.trial, r.status) for r in rows] == [(0, "ok"), (1, "failed"), (2, "ok"), (3, "ok"),
                                                   (0, "ok"), (1, "ok")]


def test_a_trial_declared_lost_while_it_still_ran_is_dropped_and_its_copy_runs(tmp_path, monkeypatch):
    """Heartbeats that came too late (a stalled machine): another process failed the trial and
    queued a copy; the slow process must not crash on telling it, and the copy runs."""
    from harness.run.queue import _retry

    storage = _journal(tmp_path, monkeypatch)
    plan = plan_run(storage, SPEC, "r")
    name = plan.search_name(plan.cells[0])

    class Stalled(_Stub):
        def search(self, cell, trial):
            out = super().search(cell, trial)
            if trial.number == 0:
                assert _retry(storage, name, trial._trial_id, "worker lost: test")
            return out

    stub = Stalled({0: 0.5, 1: 0.9, 2: 0.7, 3: 0.6})
    assert run_trials(storage, plan, stub) == 5  # the dropped trial is not counted
    _, rows = collect(storage, plan)
    assert [(r.trial, r.status, r.error, r.retry_of) for r in rows if r.stage == "search"] == [
        (0, "failed", "worker lost: test", None), (1, "ok", "", None), (2, "ok", "", None),
        (3, "ok", "", 0)]
