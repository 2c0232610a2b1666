"""Workers share a run through Optuna's own storages: the journal file and a real PostgreSQL.

Each test starts real processes (``python -m harness study`` and three ``python -m harness
worker``) on one storage and checks that the planned trials ran exactly once each, and that the
tables hold every one of them. ``.ci/run`` starts the PostgreSQL server and exports its URL.
"""

import os
import signal
import subprocess
import sys
import time

import optuna
import pandas as pd
import pytest

from harness.run.queue import find_run

TRIALS, SEEDS = 9, 2
STUDY_TOML = f"""
dataset = "digits"
classes = [0, 1, 2]
budgets = [20]
strategies = ["full_finetune", "linear_probe"]
epochs = 2
batch_size = 16
trials = {TRIALS}
seeds = {SEEDS}
pruner = "none"
"""


def _start(*args, cwd):
    return subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=cwd, env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run_with_workers(tmp_path, storage: str):
    """Three workers waiting for the run, then the study command; returns (trials table, outputs)."""
    study_file = tmp_path / "shared.toml"
    study_file.write_text(STUDY_TOML)
    workers = [_start("worker", "shared", "--storage", storage, "--wait", "120", "--quiet", cwd=tmp_path)
               for _ in range(3)]
    time.sleep(1.0)
    main = _start("study", str(study_file), "--storage", storage, "--out", str(tmp_path / "runs"),
                  "--quiet", cwd=tmp_path)
    outputs = [p.communicate(timeout=300) for p in [main, *workers]]
    for p, (out, err) in zip([main, *workers], outputs):
        assert p.returncode == 0, err
    run_dir = next((tmp_path / "runs" / "shared").iterdir())
    trials = pd.read_csv(run_dir / "trials.csv")
    return trials, outputs, run_dir


def _check_exactly_once(trials, outputs, storage):
    search = trials[trials["stage"] == "search"]
    final = trials[trials["stage"] == "final"]
    for _cell, g in search.groupby("cell"):
        assert sorted(g["trial"]) == list(range(TRIALS))  # none lost, none duplicated
    assert len(final) == 2 * SEEDS and set(trials["status"]) == {"ok"}
    ran = sum(int(out.split("ran ")[1].split()[0]) for out, _ in outputs[1:])
    assert ran <= len(trials) and trials["worker"].nunique() >= 2  # the work really was shared
    # the storage holds exactly the planned trials, each finished once
    plan = find_run(storage, "shared")
    for cell in plan.cells:
        for name, n in ((plan.search_name(cell), TRIALS), (plan.final_name(cell), SEEDS)):
            states = [t.state for t in optuna.load_study(study_name=name, storage=storage).trials]
            assert states == [optuna.trial.TrialState.COMPLETE] * n


def test_three_workers_share_a_run_on_the_journal_storage(tmp_path):
    storage = f"journal:{tmp_path / 'journal.log'}"
    trials, outputs, _ = _run_with_workers(tmp_path, storage)
    from harness.run.queue import open_storage

    _check_exactly_once(trials, outputs, open_storage(storage))


@pytest.fixture
def postgres_url():
    url = os.environ.get("HARNESS_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("HARNESS_REQUIRE_POSTGRES"):
            pytest.fail("HARNESS_TEST_POSTGRES_URL is not set; .ci/run starts the server")
        pytest.skip("no PostgreSQL server: start one with `eval \"$(.ci/postgres start)\"`")
    return url


def test_three_workers_share_a_run_on_postgresql_and_the_password_never_shows(tmp_path, postgres_url):
    trials, outputs, run_dir = _run_with_workers(tmp_path, postgres_url)
    _check_exactly_once(trials, outputs, optuna.storages.get_storage(postgres_url))
    password = postgres_url.split("://")[1].split("@")[0].split(":")[1]
    for out, err in outputs:
        assert password not in out and password not in err
    for f in run_dir.rglob("*"):
        if f.is_file() and f.suffix in (".csv", ".json", ".md", ".html", ".svg"):
            assert password not in f.read_text(errors="replace"), f
    assert "harness:***@" in (run_dir / "env.json").read_text()


def test_a_killed_study_resumes_without_repeating_or_losing_a_trial(tmp_path, run_cli):
    study_file = tmp_path / "long.toml"
    study_file.write_text(STUDY_TOML.replace('strategies = ["full_finetune", "linear_probe"]',
                                             'strategies = ["full_finetune"]')
                          .replace("classes = [0, 1, 2]", "classes = [0, 1, 2, 3, 4]")
                          .replace("budgets = [20]", 'budgets = ["all"]').replace("epochs = 2", "epochs = 4"))
    proc = _start("study", str(study_file), "--out", str(tmp_path / "runs"), "--quiet", cwd=tmp_path)
    run_root = tmp_path / "runs" / "long"
    done_before = _wait_for_completed(proc, run_root, at_least=3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = next(run_root.iterdir())
    assert not (run_dir / "trials.csv").exists()  # killed before its tables

    res = run_cli("study", "long", "--resume", str(run_dir), "--quiet")
    assert res.returncode == 0, res.stderr
    url = f"sqlite:///{run_dir / 'optuna.db'}"
    plan = find_run(url, "long")
    search = optuna.load_study(study_name=plan.search_name(plan.cells[0]), storage=url).trials
    after = {t.number: t for t in search}
    for t in done_before:  # completed trials were kept as they were, not run again
        assert after[t.number].values == t.values and after[t.number].params == t.params
        assert after[t.number].datetime_complete == t.datetime_complete
    interrupted = [t for t in search if "interrupted" in t.user_attrs.get("error", "")]
    assert len(search) == TRIALS + len(interrupted)
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in search) == TRIALS
    trials = pd.read_csv(run_dir / "trials.csv")
    s = trials[trials["stage"] == "search"]
    assert (s["status"] == "ok").sum() == TRIALS and s["trial"].is_unique
    assert (trials["stage"] == "final").sum() == SEEDS


def _wait_for_completed(proc, run_root, at_least: int, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the study finished before it could be killed"
        dirs = list(run_root.iterdir()) if run_root.exists() else []
        if dirs and (dirs[0] / "optuna.db").exists():
            url = f"sqlite:///{dirs[0] / 'optuna.db'}"
            try:
                plan = find_run(url, "long")
                if plan is not None:
                    study = optuna.load_study(study_name=plan.search_name(plan.cells[0]), storage=url)
                    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
                    if len(done) >= at_least:
                        return done
            except Exception:  # noqa: BLE001, S110 - the run is still being planned
                pass
        time.sleep(0.05)
    raise AssertionError("the study never completed enough trials")
