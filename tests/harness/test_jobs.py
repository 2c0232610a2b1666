"""`study --jobs N`: local worker processes on the run's storage, started and stopped by the study."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from optuna.trial import TrialState

from harness.analysis.results import load
from harness.config.spec import StudySpec
from harness.pipeline import run_study
from harness.run.queue import _claim, gone, open_storage, plan_run
from harness.run.sweep import choose_jobs, usable_cores

SPEC = StudySpec(name="jobs", description="t", dataset="digits", classes=(0, 1, 2), budgets=(20,),
                 strategies=("full_finetune", "linear_probe"), epochs=3, batch_size=16, trials=4,
                 seeds=1, pruner="median")
ONE_CELL = dataclasses.replace(SPEC, strategies=("full_finetune",))
ACCURACY = ["cell", "stage", "trial", "seed", "status", "val_accuracy", "test_accuracy"]


def test_an_ordered_search_hands_out_its_trials_one_at_a_time_in_number_order(tmp_path):
    store = open_storage(f"journal:{tmp_path / 'j.log'}")
    plan = plan_run(store, ONE_CELL, "r", ordered=True)
    name = plan.search_name(plan.cells[0])
    first = _claim(store, name, ordered=True)
    assert first.number == 0
    assert _claim(store, name, ordered=True) is None  # trial 0 runs: 1 waits for it
    assert _claim(store, name, ordered=False).number == 1  # unordered runs take the next one
    store.set_trial_state_values(first._trial_id, TrialState.COMPLETE, [0.5])
    assert _claim(store, name, ordered=True) is None  # trial 1 still runs



def test_the_manifest_says_whether_searches_are_ordered(tmp_path):
    from harness.run.queue import find_run

    store = open_storage(f"journal:{tmp_path / 'j.log'}")
    plan_run(store, SPEC, "a", ordered=True)
    plan_run(store, SPEC, "b")
    assert find_run(store, "jobs", "a").ordered and not find_run(store, "jobs", "b").ordered


def test_jobs_share_the_cores_and_small_or_accelerated_studies_run_in_one_process(monkeypatch):
    cores = usable_cores()
    assert choose_jobs(SPEC, 3).threads == max(1, cores // 3)
    assert choose_jobs(SPEC, 2, threads=5).threads == 5
    monkeypatch.setattr("harness.run.sweep.usable_cores", lambda: 8)
    tiny = choose_jobs(dataclasses.replace(SPEC, trials=2, seeds=1), None)
    assert tiny.jobs == 1 and "trials" in tiny.reason  # 6 trials: a worker would cost more
    many = choose_jobs(dataclasses.replace(SPEC, trials=30), None)
    assert many.jobs == 2  # at most one per cell
    six = dataclasses.replace(SPEC, trials=30, strategies=("full_finetune", "linear_probe",
                                                          "bias_only", "lp_ft", "ulmfit", "lora"))
    # the small CNN's step scales with threads: two cores a process
    cnn = choose_jobs(six, None)
    assert (cnn.jobs, cnn.threads) == (4, 2) and "convolutional" in cnn.reason
    # the tiny ViT's does not: one core a process, at most one per cell; so for compiled cells
    vit = choose_jobs(dataclasses.replace(six, model="vit_tiny"), None)
    assert (vit.jobs, vit.threads) == (6, 1) and "attention" in vit.reason
    compiled = choose_jobs(dataclasses.replace(six, executions=("eager", "compile")), None)
    assert (compiled.jobs, compiled.threads) == (8, 1) and "compiled" in compiled.reason  # 12 cells
    # one attention backbone among the models decides
    both = choose_jobs(dataclasses.replace(six, models=("small_cnn", "vit_tiny")), None)
    assert both.jobs == 8 and "attention" in both.reason  # 12 cells
    assert json.dumps(many.to_dict())  # what env.json records
    monkeypatch.setattr("harness.run.sweep.usable_cores", lambda: 2)
    assert choose_jobs(six, None).jobs == 1  # the default study on 2 cores: one process
    assert (choose_jobs(dataclasses.replace(six, model="vit_tiny"), None).jobs,
            choose_jobs(dataclasses.replace(six, model="vit_tiny"), None).threads) == (2, 1)


@pytest.mark.slow
def test_two_jobs_run_every_trial_once_and_give_the_results_of_one(tmp_path):
    one = run_study(SPEC, out_root=tmp_path / "one", progress=False, jobs=1, threads=1)
    two = run_study(SPEC, out_root=tmp_path / "two", progress=False, jobs=2, threads=1)
    t1, t2 = load(one.run_dir).trials, load(two.run_dir).trials
    search = t2[t2["stage"] == "search"]
    for _cell, g in search.groupby("cell"):
        assert sorted(g["trial"]) == list(range(SPEC.trials))  # none lost, none run twice
    key = ["cell", "stage", "trial", "seed"]
    pd.testing.assert_frame_equal(t1[ACCURACY].sort_values(key).reset_index(drop=True),
                                  t2[ACCURACY].sort_values(key).reset_index(drop=True))
    env = json.loads((two.run_dir / "env.json").read_text())
    assert env["jobs"] == 2 and env["threads_per_job"] == 1
    assert env["storage"].startswith("journal:")  # SQLite's claim is not atomic across processes
    assert (two.run_dir / "workers" / "worker-1.log").is_file()


def _running(journal: Path):
    """The running search trials of the run, from outside (None while it is being planned)."""
    try:
        store = open_storage(f"journal:{journal}")
        return [t for s in store.get_all_studies() for t in store.get_all_trials(s._study_id)
                if t.state == TrialState.RUNNING and not s.study_name.endswith("/final")]
    except Exception:  # noqa: BLE001 - the file is being written
        return None


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_and_gives_every_running_trial_back(tmp_path):
    study = tmp_path / "stop.toml"
    study.write_text('dataset = "digits"\nclasses = [0, 1, 2]\nbudgets = [60]\nepochs = 30\n'
                     'strategies = ["full_finetune", "linear_probe"]\ntrials = 20\nseeds = 1\n'
                     'batch_size = 8\npruner = "none"\n')
    with open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "harness", "study", str(study), "--jobs", "2",
                                 "--threads", "1", "--out", str(tmp_path / "runs"), "--quiet"],
                                cwd=tmp_path, stderr=err, stdout=subprocess.DEVNULL,
                                env=os.environ | {"HARNESS_HEARTBEAT_S": "1"})
    try:
        workers: set[str] = set()
        while len(workers) < 2:  # both processes hold a trial: the study's and its worker's
            assert proc.poll() is None, (tmp_path / "err").read_text()
            journals = list((tmp_path / "runs").glob("stop/*/optuna.journal"))
            running = _running(journals[0]) if journals else None
            workers = {t.system_attrs.get("harness_worker", "") for t in running or []} - {""}
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)  # to the study process only, not its process group
        assert proc.wait() == 130, (tmp_path / "err").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for who in workers:  # nothing orphaned: every process that held a trial has exited
        for _ in range(100):
            if gone(who):
                break
            time.sleep(0.1)
        assert gone(who), who
    store = open_storage(f"journal:{journals[0]}")
    trials = [t for s in store.get_all_studies() for t in store.get_all_trials(s._study_id)]
    assert TrialState.RUNNING not in {t.state for t in trials}
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert 1 <= len(failed) <= 2  # each process's trial, unless one stopped between two
    assert all(t.user_attrs["error"].startswith("interrupted") for t in failed)
    copies = [t for t in trials if t.state == TrialState.WAITING and "retry_of" in t.user_attrs]
    assert len(copies) == len(failed)  # each queued again, for --resume
    assert "--resume" in (tmp_path / "err").read_text()
