"""Workers share a run through Optuna's own storages: the journal file and a real PostgreSQL.

Each test starts real processes (``python -m harness study`` and three ``python -m harness
worker``) on one storage and checks that the planned trials ran exactly once each, and that the
tables hold every one of them, also when a worker is killed (SIGKILL) mid-trial: its trial is
failed as "worker lost" once its heartbeat stops, and runs again. ``.ci/run`` starts the
PostgreSQL server and exports its URL.

Every test here but the journal's worker killed mid-trial is marked ``slow`` (20-45 s each, four
processes): the quick loop ``-m "not slow"`` keeps one kill-and-requeue run; CI runs them all.

No test waits against a clock: a process is waited for as long as its run makes progress (a
trial starts or finishes at least every ``IDLE_S`` seconds), so a slow machine never fails a
test and a hang still does; every process a test started is killed when the test ends.
"""

import os
import secrets
import signal
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from _procs import start as _start
from optuna.trial import TrialState

from harness.run.queue import find_run, open_storage

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
IDLE_S = 900.0  # no trial of the run started or finished for 15 minutes: a hang, not a slow machine
WAIT = "3600"  # a worker's --wait for the study to plan its run: any loaded machine does it sooner
BEATING = {"HARNESS_HEARTBEAT_S": "1"}  # kill tests: a lost trial is re-queued after 4 s, not 20


def _output(tmp_path, p) -> tuple[str, str]:
    return (tmp_path / f"{p.label}.out").read_text(), (tmp_path / f"{p.label}.err").read_text()


class _Watch:
    """Reads the trials of study ``name``'s runs in ``url`` from outside, writing nothing."""

    def __init__(self, url: str | None, name: str) -> None:
        self.url, self.name, self._storage = url, name, None

    def trials(self) -> list[tuple[str, optuna.trial.FrozenTrial]]:
        try:
            if self._storage is None:
                if self.url is None:  # not known yet
                    return []
                if self.url.startswith("journal:"):
                    if not Path(self.url.removeprefix("journal:")).exists():
                        return []
                    self._storage = open_storage(self.url)
                else:
                    self._storage = optuna.storages.RDBStorage(
                        self.url, skip_table_creation=True, skip_compatibility_check=True)
            return [(s.study_name, t) for s in self._storage.get_all_studies()
                    if s.study_name.startswith(f"{self.name}/")
                    for t in self._storage.get_all_trials(s._study_id, deepcopy=False)]
        except Exception:  # noqa: BLE001 - the run's tables are still being made
            return []

    def until(self, what: str, condition, alive=()):
        """Poll ``condition()`` until it gives something true, and return that. Fails when a
        process of ``alive`` ends first, or when no trial starts or finishes for ``IDLE_S``."""
        last, since = None, time.monotonic()
        while not (got := condition()):
            for p in alive:
                assert p.poll() is None, f"waiting for {what}: {p.label} ended (exit {p.returncode})"
            now = [(n, t.number, t.state) for n, t in self.trials()]
            if now != last:
                last, since = now, time.monotonic()
            assert time.monotonic() - since < IDLE_S, \
                f"waiting for {what}: no trial started or finished for {IDLE_S:.0f} s: a hang"
            time.sleep(0.2)
        return got

    def finish(self, tmp_path, main, others):
        """Wait for the study process ``main`` and the workers ``others``; each one's output."""
        def done():
            if main.poll() not in (None, 0):  # the study failed: its workers would wait for nothing
                raise AssertionError(f"the study process failed: {_output(tmp_path, main)[1]}")
            return all(p.poll() is not None for p in [main, *others])

        self.until("the study and its workers to finish", done)
        return [_output(tmp_path, p) for p in [main, *others]]


def _run_with_workers(tmp_path, storage: str, procs):
    """Three workers waiting for the run, then the study command; returns (trials table, outputs)."""
    study_file = tmp_path / "shared.toml"
    study_file.write_text(STUDY_TOML)
    workers = [_start(procs, tmp_path, f"worker{i}", "worker", "shared", "--storage", storage,
                      "--wait", WAIT, "--quiet") for i in range(3)]
    time.sleep(1.0)
    main = _start(procs, tmp_path, "study", "study", str(study_file), "--storage", storage,
                  "--out", str(tmp_path / "runs"), "--quiet")
    outputs = _Watch(storage, "shared").finish(tmp_path, main, workers)
    for p, (_out, err) in zip([main, *workers], outputs):
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


@pytest.mark.slow
def test_three_workers_share_a_run_on_the_journal_storage(tmp_path, procs):
    storage = f"journal:{tmp_path / 'journal.log'}"
    trials, outputs, _ = _run_with_workers(tmp_path, storage, procs)
    _check_exactly_once(trials, outputs, open_storage(storage))


@pytest.fixture
def postgres_url():
    url = os.environ.get("HARNESS_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("HARNESS_REQUIRE_POSTGRES"):
            pytest.fail("HARNESS_TEST_POSTGRES_URL is not set; .ci/run starts the server")
        pytest.skip("no PostgreSQL server: start one with `eval \"$(.ci/postgres start)\"`")
    return url


@pytest.mark.slow
def test_three_workers_share_a_run_on_postgresql_and_the_password_never_shows(tmp_path, procs,
                                                                              postgres_url,
                                                                              figures_on):
    trials, outputs, run_dir = _run_with_workers(tmp_path, postgres_url, procs)
    _check_exactly_once(trials, outputs, optuna.storages.get_storage(postgres_url))
    password = postgres_url.split("://")[1].split("@")[0].split(":")[1]
    for out, err in outputs:
        assert password not in out and password not in err
    for f in run_dir.rglob("*"):
        if f.is_file() and f.suffix in (".csv", ".json", ".md", ".html", ".svg"):
            assert password not in f.read_text(errors="replace"), f
    assert "harness:***@" in (run_dir / "env.json").read_text()


# --- a worker killed mid-trial ----------------------------------------------------------------

KILL_TOML = """
name = "{name}"
dataset = "digits"
classes = [0, 1, 2]
budgets = [30]
strategies = ["full_finetune", "linear_probe"]
epochs = {epochs}
batch_size = 16
trials = {trials}
seeds = {seeds}
pruner = "none"
"""


@pytest.fixture(params=["journal", pytest.param("postgresql", marks=pytest.mark.slow)])
def shared_storage(request, tmp_path):
    if request.param == "journal":
        return f"journal:{tmp_path / 'journal.log'}"
    return request.getfixturevalue("postgres_url")


def _held_mid_trial(watch: _Watch, candidates, epochs: int):
    """A worker of ``candidates`` and the search or final trial it runs, with at most half of
    its epochs reported (a search trial reports each), so that it runs on for a while."""
    pids = {p.pid: p for p in candidates if p.poll() is None}
    for name, t in watch.trials():
        if t.state != TrialState.RUNNING:
            continue
        pid = int(t.system_attrs.get("harness_worker", ":0").rpartition(":")[2])
        if pid in pids and len(t.intermediate_values) <= epochs // 2:
            return pids[pid], name, t.number
    return None


def _kill_mid_trial(watch: _Watch, candidates, epochs: int, alive):
    """SIGKILL a worker of ``candidates`` while it runs a trial; returns (worker, study, trial
    number), or None when the trial had ended just before the kill (then try again)."""
    victim, name, number = watch.until("a worker to run a trial",
                                       lambda: _held_mid_trial(watch, candidates, epochs), alive)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    states = {(n, t.number): t.state for n, t in watch.trials()}
    return (victim, name, number) if states[(name, number)] == TrialState.RUNNING else None


def _origin(t, trials) -> int:
    """The planned trial that ``t`` re-runs (following ``retry_of``), or ``t`` itself."""
    numbers = {x.number: x for x in trials}
    while t.user_attrs.get("retry_of") is not None:
        t = numbers[t.user_attrs["retry_of"]]
    return t.number


def _lost(t) -> bool:
    return t.state == TrialState.FAIL and t.user_attrs.get("error", "").startswith("worker lost: ")


def _check_each_planned_trial_completed_once(watch: _Watch, run_dir: Path, cells: int,
                                             trials: int, seeds: int, lost: list):
    """In the storage, every planned trial ran to its end exactly once (itself or one retry;
    COMPLETE unless its config legitimately failed, a diverged lr), every other attempt is a
    FAIL "worker lost" with a retry, none is left WAITING or RUNNING; the kills ``lost``
    ((worker, study, number)) are among them; the trials table holds each trial once."""
    by_study: dict[str, list] = {}
    for name, t in watch.trials():
        by_study.setdefault(name, []).append(t)
    queues = {n: ts for n, ts in by_study.items() if ts}  # the manifest has no trials
    assert len(queues) == 2 * cells
    for name, ts in queues.items():
        planned = seeds if name.endswith("/final") else trials
        assert {t.state for t in ts} <= {TrialState.COMPLETE, TrialState.FAIL}, name
        ended = sorted(_origin(t, ts) for t in ts if not _lost(t))
        assert ended == list(range(planned)), name  # each planned trial ran once, to its end
        retried = {t.user_attrs.get("retry_of") for t in ts}
        assert all(t.number in retried for t in ts if _lost(t)), name
    for worker, name, number in lost:
        t = {x.number: x for x in by_study[name]}[number]
        assert _lost(t) and t.system_attrs["harness_worker"].endswith(f":{worker.pid}")
        assert t.user_attrs["error"].startswith(f"worker lost: {t.system_attrs['harness_worker']}")
    table = pd.read_csv(run_dir / "trials.csv")
    assert not table.duplicated(["cell", "stage", "trial"]).any()
    assert len(table) == sum(len(ts) for ts in queues.values())
    lost_rows = table["error"].fillna("").str.startswith("worker lost: ")
    ended = table[~lost_rows].groupby("stage").size().to_dict()
    assert ended == {"search": cells * trials, "final": cells * seeds}
    assert lost_rows.sum() >= len(lost)
    retried = {(r.cell, r.stage, int(r.retry_of)) for r in table.itertuples() if r.retry_of == r.retry_of}
    assert {(r.cell, r.stage, r.trial) for r in table[lost_rows].itertuples()} <= retried


def _unique(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(3)}"  # a shared PostgreSQL keeps every test's runs


def test_a_worker_killed_mid_trial_is_replaced_and_the_run_finishes(tmp_path, procs, shared_storage):
    """kill -9 of one of three workers: its trial is failed ("worker lost") once its heartbeat
    stops, re-queued with its parameters, and the run finishes without a human."""
    name, epochs, trials, seeds = _unique("killed"), 8, 3, 2
    study_file = tmp_path / "killed.toml"
    study_file.write_text(KILL_TOML.format(name=name, epochs=epochs, trials=trials, seeds=seeds))
    watch = _Watch(shared_storage, name)
    workers = [_start(procs, tmp_path, f"worker{i}", "worker", name, "--storage", shared_storage,
                      "--wait", WAIT, "--quiet", env=BEATING) for i in range(3)]
    main = _start(procs, tmp_path, "study", "study", str(study_file), "--storage", shared_storage,
                  "--out", str(tmp_path / "runs"), "--quiet", env=BEATING)
    lost, candidates = [], list(workers)
    while not lost:  # a kill that lands between two trials loses none: kill another one
        assert candidates, "every worker was killed between two trials"
        got = _kill_mid_trial(watch, candidates, epochs, alive=[main])
        if got is not None:
            lost.append(got)
        candidates = [p for p in candidates if p.poll() is None]
    outputs = watch.finish(tmp_path, main, candidates)
    for p, (_out, err) in zip([main, *candidates], outputs):
        assert p.returncode == 0, err
        assert "Traceback" not in err, err
    run_dir = next((tmp_path / "runs" / name).iterdir())
    _check_each_planned_trial_completed_once(watch, run_dir, 2, trials, seeds, lost)


@pytest.mark.slow
def test_soak_a_worker_killed_and_restarted_twice_on_postgresql(tmp_path, procs, postgres_url):
    """Three workers on PostgreSQL; one is killed (SIGKILL) mid-trial and restarted, twice.
    Every planned trial completes exactly once, nothing is left RUNNING, the tables hold each
    trial once."""
    name, epochs, trials, seeds = _unique("soak"), 6, 12, 2
    study_file = tmp_path / "soak.toml"
    study_file.write_text(KILL_TOML.format(name=name, epochs=epochs, trials=trials, seeds=seeds))
    watch = _Watch(postgres_url, name)
    workers = [_start(procs, tmp_path, f"worker{i}", "worker", name, "--storage", postgres_url,
                      "--wait", WAIT, "--quiet", env=BEATING) for i in range(3)]
    main = _start(procs, tmp_path, "study", "study", str(study_file), "--storage", postgres_url,
                  "--out", str(tmp_path / "runs"), "--quiet", env=BEATING)
    victim, lost, restarts = workers[0], [], 0
    while len(lost) < 2:
        assert restarts < 6, "the worker kept being killed between two trials"
        got = _kill_mid_trial(watch, [victim], epochs, alive=[main, victim])
        if got is not None:
            lost.append(got)
        restarts += 1
        # the run exists by now: the new worker joins it at once
        victim = _start(procs, tmp_path, f"worker0-{restarts}", "worker", name, "--storage",
                        postgres_url, "--quiet", env=BEATING)
    outputs = watch.finish(tmp_path, main, [victim, *workers[1:]])
    for p, (_out, err) in zip([main, victim, *workers[1:]], outputs):
        assert p.returncode == 0 or p is victim and "no unfinished run" in err, err
        assert "Traceback" not in err, err
    run_dir = next((tmp_path / "runs" / name).iterdir())
    _check_each_planned_trial_completed_once(watch, run_dir, 2, trials, seeds, lost)
    assert len({w.pid for w, _, _ in lost}) == 2  # two incarnations of the worker each lost one


@pytest.mark.slow
def test_a_killed_study_resumes_without_repeating_or_losing_a_trial(tmp_path, procs):
    study_file = tmp_path / "long.toml"
    study_file.write_text(STUDY_TOML.replace('strategies = ["full_finetune", "linear_probe"]',
                                             'strategies = ["full_finetune"]')
                          .replace("classes = [0, 1, 2]", "classes = [0, 1, 2, 3, 4]")
                          .replace("budgets = [20]", 'budgets = ["all"]').replace("epochs = 2", "epochs = 4"))
    proc = _start(procs, tmp_path, "study", "study", str(study_file), "--out", str(tmp_path / "runs"),
                  "--quiet")
    run_root = tmp_path / "runs" / "long"
    done_before = _wait_for_completed(proc, run_root, at_least=3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = next(run_root.iterdir())
    assert not (run_dir / "trials.csv").exists()  # killed before its tables

    url = f"sqlite:///{run_dir / 'optuna.db'}"
    again = _start(procs, tmp_path, "resume", "study", "long", "--resume", str(run_dir), "--quiet")
    _Watch(url, "long").until("the resumed run to finish", lambda: again.poll() is not None)
    assert again.returncode == 0, _output(tmp_path, again)[1]
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


def _wait_for_completed(proc, run_root, at_least: int):
    """The completed search trials once there are ``at_least``; no deadline while the run goes on."""
    watch = _Watch(None, "long")

    def completed():
        dirs = list(run_root.iterdir()) if run_root.exists() else []
        if watch.url is None and dirs and (dirs[0] / "optuna.db").exists():
            watch.url = f"sqlite:///{dirs[0] / 'optuna.db'}"
        done = [t for n, t in watch.trials()
                if not n.endswith("/final") and t.state == TrialState.COMPLETE]
        return done if len(done) >= at_least else None

    return watch.until(f"{at_least} completed trials", completed, alive=[proc])
