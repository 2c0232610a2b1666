"""Stopping a run, with real processes and real signals: Ctrl-C and SIGTERM give the running
trial back and say how to resume; ``--resume`` refuses a run that still runs.

No test waits against a clock: a process is waited for as long as its run makes progress (a
trial starts or finishes at least every ``IDLE_S`` seconds), and every process a test started
is killed when the test ends.
"""

import signal
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from _procs import start as _start
from optuna.trial import TrialState

from harness.cli import main
from harness.run.queue import open_storage

EPOCHS, TRIALS, SEEDS = 10, 6, 1  # enough trials that a lone worker is still busy when caught
STUDY_TOML = f"""
dataset = "digits"
classes = [0, 1, 2]
budgets = [30]
strategies = ["full_finetune"]
epochs = {EPOCHS}
batch_size = 16
trials = {TRIALS}
seeds = {SEEDS}
pruner = "none"
"""
IDLE_S = 900.0  # no trial of the run started or finished for 15 minutes: a hang, not a slow machine
BEATING = {"HARNESS_HEARTBEAT_S": "1"}


def _err(tmp_path, p) -> str:
    return (tmp_path / f"{p.label}.err").read_text()


class _Run:
    """The trials of the one run of study ``stop`` under ``tmp_path/runs``, read from outside."""

    def __init__(self, tmp_path: Path, url: str | None = None) -> None:
        self.root, self.url, self._storage = tmp_path / "runs" / "stop", url, None

    @property
    def dir(self) -> Path | None:
        dirs = list(self.root.iterdir()) if self.root.exists() else []
        return dirs[0] if dirs else None

    def trials(self) -> list[tuple[str, optuna.trial.FrozenTrial]]:
        try:
            if self._storage is None:
                if self.url is not None:  # a journal
                    if not Path(self.url.removeprefix("journal:")).exists():
                        return []
                    self._storage = open_storage(self.url)
                elif self.dir is not None and (self.dir / "optuna.db").exists():
                    self._storage = optuna.storages.RDBStorage(
                        f"sqlite:///{self.dir / 'optuna.db'}", skip_table_creation=True,
                        skip_compatibility_check=True)
                else:
                    return []
            return [(s.study_name, t) for s in self._storage.get_all_studies()
                    for t in self._storage.get_all_trials(s._study_id, deepcopy=False)]
        except Exception:  # noqa: BLE001 - the run is still being planned
            return []

    def until(self, what: str, condition, alive=()):
        """Poll ``condition()`` until it gives something true; fails when a process of ``alive``
        ends first, or when no trial starts or finishes for ``IDLE_S``."""
        last, since = None, time.monotonic()
        while not (got := condition()):
            for p in alive:
                assert p.poll() is None, f"waiting for {what}: {p.label} ended (exit {p.returncode})"
            now = [(n, t.number, t.state) for n, t in self.trials()]
            if now != last:
                last, since = now, time.monotonic()
            assert time.monotonic() - since < IDLE_S, \
                f"waiting for {what}: no trial started or finished for {IDLE_S:.0f} s: a hang"
            time.sleep(0.1)
        return got

    def mid_trial(self, pid: int | None = None):
        """(study, trial) of a search trial running with at most half its epochs done (by the
        process ``pid`` when given), or None."""
        for name, t in self.trials():
            who = t.system_attrs.get("harness_worker", "")
            if (t.state == TrialState.RUNNING and not name.endswith("/final")
                    and 1 <= len(t.intermediate_values) <= EPOCHS // 2
                    and (pid is None or who.endswith(f":{pid}"))):
                return name, t
        return None


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130),
                                       pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow)])
def test_a_signal_gives_the_running_trial_back_and_one_line_says_how_to_resume(tmp_path, procs,
                                                                              sig, code):
    study_file = tmp_path / "stop.toml"
    study_file.write_text(STUDY_TOML)
    proc = _start(procs, tmp_path, "study", "study", str(study_file), "--out", str(tmp_path / "runs"),
                  "--quiet")
    run = _Run(tmp_path)
    name, held = run.until("a trial half-way", run.mid_trial, alive=[proc])
    proc.send_signal(sig)
    run.until("the study to stop", lambda: proc.poll() is not None)
    err = _err(tmp_path, proc)
    assert proc.returncode == code, err
    resume = f"python -m harness study {study_file} --resume {run.dir}"
    line = ("interrupted: the running trial (if any) was marked failed and re-queued; finish the "
            f"run with: {resume}")
    assert err.splitlines() == [line]
    assert not (run.dir / "run.lock").exists()
    trials = [t for n, t in run.trials() if n == name]
    assert TrialState.RUNNING not in {t.state for n, t in run.trials()}
    stopped = trials[held.number]
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["error"].startswith("interrupted")
    copy = [t for t in trials if t.user_attrs.get("retry_of") == held.number]
    assert len(copy) == 1 and copy[0].state == TrialState.WAITING and copy[0].params == stopped.params

    again = _start(procs, tmp_path, "resume", *resume.split()[3:], "--quiet")  # the line's command
    run.until("the resumed run to finish", lambda: again.poll() is not None)
    assert again.returncode == 0, _err(tmp_path, again)
    table = pd.read_csv(run.dir / "trials.csv")
    search = table[table["stage"] == "search"]
    assert (search["status"] == "ok").sum() == TRIALS and search["trial"].is_unique
    assert search.loc[search["trial"] == held.number, "error"].iloc[0].startswith("interrupted")
    assert search.loc[search["retry_of"] == held.number, "status"].tolist() == ["ok"]
    assert (table[table["stage"] == "final"]["status"] == "ok").sum() == SEEDS


def _resume(run_dir: Path, storage: str, capsys) -> tuple[int, str]:
    code = main(["study", "stop", "--resume", str(run_dir), "--storage", storage, "--quiet"])
    return code, capsys.readouterr().err


def test_resume_refuses_a_run_that_still_runs_until_its_processes_are_gone(tmp_path, procs, capsys):
    """Resuming a live run used to fail its running trials under it (the live process then
    crashed with UpdateFinishedTrialError). The study process's run.lock, then a worker's fresh
    heartbeats, say the run still runs; once they are gone (the worker stopped by SIGTERM,
    which gives its trial back), --resume finishes it."""
    import socket

    storage = f"journal:{tmp_path / 'journal.log'}"
    study_file = tmp_path / "stop.toml"
    study_file.write_text(STUDY_TOML)
    worker = _start(procs, tmp_path, "worker", "worker", "stop", "--storage", storage, "--wait",
                    "3600", "--quiet", env=BEATING)
    study = _start(procs, tmp_path, "study", "study", str(study_file), "--storage", storage,
                   "--out", str(tmp_path / "runs"), "--quiet", env=BEATING)
    run = _Run(tmp_path, storage)
    run.until("a trial half-way", run.mid_trial, alive=[study, worker])
    code, err = _resume(run.dir, storage, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    host = socket.gethostname()
    assert f"run {run.dir.name!r} is still running (the study process {host}:{study.pid} holds " \
           f"run.lock" in err
    assert "--resume finishes a run whose processes are gone" in err

    study.send_signal(signal.SIGKILL)  # the study process is gone; its worker still runs
    study.wait()
    name, held = run.until("the worker half-way through a trial",
                           lambda: run.mid_trial(worker.pid), alive=[worker])
    code, err = _resume(run.dir, storage, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"trial {held.number} of {name.split('/', 2)[2]} on {host}:{worker.pid}" in err
    states = {(n, t.number): t.state for n, t in run.trials()}
    assert states[(name, held.number)] in (TrialState.RUNNING, TrialState.COMPLETE)  # untouched

    # SIGTERM on the worker: it gives its trial back and says how to rejoin; then every process
    # of the run is gone, and --resume finishes it
    name, held = run.until("the worker half-way through a trial",
                           lambda: run.mid_trial(worker.pid), alive=[worker])
    worker.send_signal(signal.SIGTERM)
    run.until("the worker to stop", lambda: worker.poll() is not None)
    assert worker.returncode == 143, _err(tmp_path, worker)
    line = ("worker interrupted: its running trial (if any) was marked failed and re-queued; "
            f"join the run again with: python -m harness worker stop --storage {storage}")
    assert _err(tmp_path, worker).splitlines() == [line]
    trials = {t.number: t for n, t in run.trials() if n == name}
    assert trials[held.number].state == TrialState.FAIL
    assert trials[held.number].user_attrs["error"].startswith("interrupted")
    assert [t.state for t in trials.values() if t.user_attrs.get("retry_of") == held.number] == [
        TrialState.WAITING]
    code, err = _resume(run.dir, storage, capsys)
    assert code == 0, err
    table = pd.read_csv(run.dir / "trials.csv")
    assert (table["status"] == "ok").sum() == TRIALS + SEEDS
    failed = table[table["status"] != "ok"]  # the worker's trial, and the study process's if any
    assert held.number in set(failed["trial"]) and len(failed) <= 2
    assert all(str(e).startswith(("worker lost", "interrupted")) for e in failed["error"])
