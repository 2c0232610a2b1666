"""A run lives in its Optuna storage: the plan, the queue of trials, and every trial's records.

This module owns a run's storage: planning, finding and resuming runs, popping trials, storing
what each gave, telling Optuna, and reading the tables back (:func:`collect`). A process brings
a :class:`TrialRunner` (how to sample, prune and run one trial; :mod:`harness.run.sweep` has the
one the commands use) to :func:`run_trials`; the runner sees only the Optuna trial it runs (to
sample its config and report its epochs), never the storage.

For run ``R`` of study ``S`` the storage holds Optuna studies named

- ``S/R``: the manifest, with no trials: the spec, the cells, the skipped cells and why;
- ``S/R/<cell>``: the cell's search, its ``spec.trials`` trials created up front as WAITING;
- ``S/R/<cell>/final``: ``spec.seeds`` WAITING trials, each re-running the search's best
  config with a fresh seed once the search has finished.

Every process that works on the run (the ``study`` command, any number of ``worker`` commands,
a resumed run) takes a trial by moving it from WAITING to RUNNING in the storage. Optuna's
storages make that transition succeed for exactly one process (it is how ``Study.ask`` hands
out enqueued trials), so the planned trials each run once, however many processes share the
storage: nothing here schedules, the storage does. A finished trial keeps its measurement
records and its trial-table row (a :class:`~harness.run.records.TrialRow`) as user attributes,
so the tables are built from the storage alone, whichever machine ran what.

A process that dies mid-trial leaves it RUNNING. While a trial runs, a thread records its
heartbeat every :data:`HEARTBEAT_S` seconds (Optuna's RDB heartbeat; the journal keeps it as a
trial attribute, :class:`_BeatingJournal`), and every process of the run, between trials and
while it waits, fails the RUNNING trials whose heartbeat stopped ("worker lost") and queues a
copy of each with the same parameters (``retry_of``), as ``--resume`` does for a killed run.
A Ctrl-C or SIGTERM does the same for the process's own trial ("interrupted").

Storage URLs: any SQLAlchemy URL Optuna accepts (``sqlite:///x.db``, ``postgresql://...``) or
``journal:PATH``, Optuna's journal file for several processes on one machine.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import astuple, dataclass, replace
from typing import Any, Protocol

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages.journal import JournalStorage
from optuna.trial import TrialState, create_trial

# Optuna's heartbeat interface (its RDB storage implements it; the journal gets it below)
from optuna.storages._heartbeat import BaseHeartbeat  # isort: skip

from harness.config.spec import StudySpec, budget_label, spec_from_dict
from harness.errors import UserError
from harness.run.records import Measurement, TrialRow

__all__ = [
    "FINISHED",
    "HEARTBEAT_S",
    "Cell",
    "Outcome",
    "RunPlan",
    "TrialRunner",
    "best_config",
    "close_storage",
    "collect",
    "find_run",
    "gone",
    "live_trials",
    "missing_storage",
    "open_storage",
    "plan_run",
    "pop_trial",
    "redact_url",
    "requeue_interrupted",
    "requeue_lost",
    "run_trials",
    "search_trials",
]

MANIFEST = "harness_run"  # the manifest study's user attribute
RECORDS, ROW = "harness_records", "harness_row"  # a finished trial's user attributes
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
_OPEN = (TrialState.WAITING, TrialState.RUNNING)

# A running trial's heartbeat: one small write every HEARTBEAT_S seconds; a trial whose last beat
# is GRACE_BEATS intervals old belongs to a process that is gone. HARNESS_HEARTBEAT_S lowers it
# for the tests that kill workers (they would otherwise wait 20 s for each lost trial).
HEARTBEAT_S = int(os.environ.get("HARNESS_HEARTBEAT_S", "5"))
GRACE_BEATS = 4
WORKER, BEAT = "harness_worker", "harness_heartbeat"  # a trial's system attributes: who, when
INTERRUPTED = ("interrupted: the process running it stopped (Ctrl-C, SIGTERM or killed); "
               "re-queued with its parameters")


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs, tables and reports."""
    import re

    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def missing_storage(url: str) -> str | None:
    """The file a ``journal:`` or ``sqlite:`` URL names when it does not exist, else None.

    A worker or a resumed run joins a storage and must never create one: opening a mistyped
    path would leave an empty journal or a fresh SQLite database behind.
    """
    if url.startswith("journal:"):
        path = url.removeprefix("journal:").removeprefix("//")
    elif url.startswith("sqlite:"):
        from sqlalchemy.engine import make_url

        try:
            path = make_url(url).database or ""
        except Exception:  # noqa: BLE001 - a malformed URL: opening it says what is wrong
            return None
        if path in ("", ":memory:") or path.startswith("file:"):
            return None
    else:
        return None  # a server: it says itself when the database is missing
    return None if os.path.exists(path) else path


class _BeatingJournal(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage with the heartbeat its RDB storage has (the journal has none).

    A beat is the trial's ``harness_heartbeat`` system attribute, the time it was written:
    a journal file serves processes on one machine, so they share one clock.
    """

    def __init__(self, backend, interval: int, grace: int) -> None:
        super().__init__(backend)
        self._interval, self._grace = interval, grace

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, BEAT, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        return [t._trial_id for t in self.get_all_trials(study_id, deepcopy=False,
                                                         states=(TrialState.RUNNING,))
                if BEAT in t.system_attrs and now - t.system_attrs[BEAT] > self._grace]

    def get_heartbeat_interval(self) -> int:
        return self._interval

    def get_heartbeat_stale_trial_callback(self) -> None:
        return None  # the queue re-queues lost trials itself (requeue_lost)


def open_storage(url: str, attempts: int = 5) -> optuna.storages.BaseStorage:
    """The Optuna storage at ``url``, with heartbeats; a :class:`UserError` (password masked)
    when it cannot open.

    Workers that start together on an empty database race to create Optuna's tables, and the
    losers get a unique-key violation: they retry, and find the tables made.
    """
    interval, grace = HEARTBEAT_S, GRACE_BEATS * HEARTBEAT_S
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            path = url.removeprefix("journal:").removeprefix("//")
            return _BeatingJournal(JournalFileBackend(path), interval, grace)
        for attempt in range(attempts):
            try:
                with warnings.catch_warnings():  # "heartbeat_interval is experimental"
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    rdb = optuna.storages.RDBStorage(url, heartbeat_interval=interval,
                                                     grace_period=grace)
                if url.startswith("sqlite"):
                    _write_ahead(rdb.engine)
                return optuna.storages.get_storage(rdb)
            except Exception as e:
                if "IntegrityError" not in repr(e) and "already exists" not in str(e) \
                        or attempt == attempts - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))
    except Exception as e:  # noqa: BLE001 - any driver or URL error is the user's to fix
        first = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"cannot open Optuna storage {redact_url(url)!r}: {type(e).__name__}: "
                        f"{redact_url(first)}; pass a URL such as sqlite:///path/to.db, "
                        "journal:/path/to/file.log or postgresql://user:pass@host/db.") from None


def _write_ahead(engine) -> None:
    """SQLite in write-ahead-log mode, synced at checkpoints: a trial's per-epoch report costs
    ~2 ms instead of ~20 ms (one fsync per commit), and readers never block the writer of
    another process. A crash can lose the last commits, never corrupt the file; the run resumes."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _pragmas(connection, _record) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    engine.dispose()  # connections made while creating the tables go; new ones get the pragmas


def close_storage(storage) -> None:
    """Close a SQLite storage's pooled connections, so that its write-ahead log is folded back
    into the database file (a run folder copied afterwards holds the whole run in optuna.db)."""
    engine = getattr(getattr(storage, "_backend", storage), "engine", None)
    if engine is not None and engine.url.get_backend_name() == "sqlite":
        engine.dispose()


@dataclass(frozen=True)
class Cell:
    """One cell of the study's grid, as the manifest lists it."""

    device: str
    dataset: str
    model: str
    budget: int | None
    strategy: str
    execution: str
    skipped: str = ""  # why the cell cannot run on this machine; "" when it can

    @property
    def id(self) -> str:
        return StudySpec.cell_id(self.device, self.dataset, self.model, self.budget, self.strategy,
                                 self.execution)


@dataclass(frozen=True)
class RunPlan:
    """What every process of a run reads from the manifest."""

    spec: StudySpec
    run_id: str
    cells: tuple[Cell, ...]
    pretrain_records: tuple[Measurement, ...] = ()
    # a cell's search trials run one at a time, in number order, whichever process takes them:
    # a sampler or pruner reading earlier trials then sees what it sees in one process, so
    # `study --jobs N` gives the trials of `--jobs 1` (cells and finals still run side by side)
    ordered: bool = False

    @property
    def prefix(self) -> str:
        return f"{self.spec.name}/{self.run_id}"

    def search_name(self, cell: Cell) -> str:
        return f"{self.prefix}/{cell.id}"

    def final_name(self, cell: Cell) -> str:
        return f"{self.prefix}/{cell.id}/final"


def _directions(spec: StudySpec) -> list[str]:
    return ["maximize"] * len(spec.objectives)


def search_trials(spec: StudySpec, strategy: str) -> int:
    """The cell's search budget: ``spec.trials``, or the grid's size when that is smaller."""
    if spec.sampler != "grid":
        return spec.trials
    return min(spec.trials, math.prod(len(v) for v in spec.grid[strategy].values()))


def plan_run(storage, spec: StudySpec, run_id: str, pretrain_records=(),
             ordered: bool = False) -> RunPlan:
    """Write the run's manifest and queue every trial of every cell that can run here;
    ``ordered`` runs each cell's search trials one at a time (:attr:`RunPlan.ordered`)."""
    skipped = spec.skipped_cells()
    cells = tuple(Cell(d, ds, m, b, s, e, skipped.get((d, e), ""))
                  for d, ds, m, b, s, e in spec.cells())
    plan = RunPlan(spec, run_id, cells, tuple(pretrain_records), ordered)
    # every study of the run maximises: the finals' values are test accuracies, and Optuna's
    # best_trial (and optuna-dashboard's "best") must be the most accurate seed, not the least
    manifest = optuna.create_study(storage=storage, study_name=plan.prefix, direction="maximize")
    for cell in cells:
        if cell.skipped:
            continue
        search = optuna.create_study(storage=storage, study_name=plan.search_name(cell),
                                     directions=_directions(spec))
        fixed = spec.enqueue.get(cell.strategy)
        for i in range(search_trials(spec, cell.strategy)):
            if i == 0 and fixed:
                search.enqueue_trial(dict(fixed))  # a paper's recipe is tried first
            else:
                # no fixed parameters: the sampler (grid ids included) decides when it runs
                search.add_trial(create_trial(state=TrialState.WAITING))
        final = optuna.create_study(storage=storage, study_name=plan.final_name(cell),
                                    direction="maximize")
        configs = range(search_trials(spec, cell.strategy)) if spec.rerun == "all" else [None]
        for j in configs:  # None: the best search config, known once the search is done
            for i in range(spec.seeds):
                attrs = {"final_index": i} | ({} if j is None else {"search_trial": j})
                final.add_trial(create_trial(state=TrialState.WAITING, user_attrs=attrs))
    # the manifest last: a worker that finds it finds every queue complete
    manifest.set_user_attr(MANIFEST, {
        "spec": spec.to_dict(), "run_id": run_id,
        "cells": [[c.device, c.dataset, c.model, c.budget, c.strategy, c.execution, c.skipped]
                  for c in cells],
        "pretrain_records": [list(astuple(r)) for r in pretrain_records],
        "ordered_search": ordered,
    })
    return plan


def _plan_from_manifest(data: dict[str, Any]) -> RunPlan:
    spec = spec_from_dict(data["spec"])
    cells = tuple(Cell(*c) for c in data["cells"])
    pre = tuple(Measurement(*r) for r in data.get("pretrain_records", []))
    return RunPlan(spec, data["run_id"], cells, pre, bool(data.get("ordered_search", False)))


def find_run(storage, study: str, run_id: str | None = None, unfinished: bool = False) -> RunPlan | None:
    """The run ``run_id`` of ``study`` in ``storage`` (the newest when None), or None.

    ``unfinished`` skips runs with no queued or running trial left: a worker joins work.
    """
    names = optuna.get_all_study_names(storage)
    if run_id is not None:
        candidates = [f"{study}/{run_id}"] if f"{study}/{run_id}" in names else []
    else:
        # run ids start with their UTC timestamp, so the newest sorts last
        candidates = sorted(n for n in names if n.startswith(f"{study}/") and n.count("/") == 1)
    for name in reversed(candidates):
        attrs = optuna.load_study(study_name=name, storage=storage).user_attrs
        if MANIFEST in attrs:
            plan = _plan_from_manifest(attrs[MANIFEST])
            if not unfinished or _open_trials(storage, plan, [c for c in plan.cells if not c.skipped]):
                return plan
    return None


def _open_trials(storage, plan: RunPlan, cells) -> bool:
    """Whether any of ``cells`` still has a queued or running trial (maybe another process's)."""
    return any(_trials(storage, n, states=_OPEN) for c in cells
               for n in (plan.search_name(c), plan.final_name(c)))


def _study(storage, name: str, sampler=None, pruner=None) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)


def _trials(storage, name: str, states=None) -> list[optuna.trial.FrozenTrial]:
    sid = storage.get_study_id_from_name(name)
    return storage.get_all_trials(sid, deepcopy=False, states=states)


def _beats(storage) -> bool:
    return isinstance(storage, BaseHeartbeat) and storage.get_heartbeat_interval() is not None


def _claim(storage, name: str, ordered: bool = False) -> optuna.trial.FrozenTrial | None:
    """Move one WAITING trial of study ``name`` to RUNNING for this process; None when none is left.

    The storage's WAITING -> RUNNING transition succeeds for one process only. The first heartbeat
    goes before the claim, so a process killed right after it still leaves a trial that goes
    stale; the worker's name goes after (a loser of the race must not overwrite the winner's).
    ``ordered``: only the first WAITING trial, and only while none runs, read in one snapshot,
    so two processes never run two trials of the study at once.
    """
    if ordered:
        snapshot = sorted(_trials(storage, name, states=_OPEN), key=lambda t: t.number)
        if any(t.state == TrialState.RUNNING for t in snapshot):
            return None
        waiting = snapshot[:1]
    else:
        waiting = _trials(storage, name, states=(TrialState.WAITING,))
    for t in waiting:
        try:
            if _beats(storage):
                storage.record_heartbeat(t._trial_id)
            if storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                storage.set_trial_system_attr(t._trial_id, WORKER, worker_id())
                return t
        except UpdateFinishedTrialError:
            continue
    return None


def pop_trial(storage, study: optuna.Study) -> optuna.Trial | None:
    """Take one WAITING trial of ``study`` for this process, or None when none is left."""
    t = _claim(storage, study.study_name)
    return None if t is None else optuna.Trial(study, t._trial_id)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def gone(worker: str) -> bool:
    """Whether ``worker`` ("host:pid") names a process of this machine that no longer runs.

    False when it runs, or runs on another machine (only its heartbeats can tell then).
    """
    host, _, pid_text = worker.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: it runs
        return False
    try:  # a zombie (killed, not yet reaped) is gone too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return False


def _retry(storage, name: str, trial_id: int, error: str) -> bool:
    """Fail RUNNING trial ``trial_id`` of study ``name`` with ``error`` and queue a copy of it
    with the same parameters (``retry_of``). False when it finished first, or another process
    failed it first: the move to FAIL succeeds once, and only its winner queues the copy."""
    t = storage.get_trial(trial_id)
    if t.state != TrialState.RUNNING:
        return False
    try:
        storage.set_trial_user_attr(trial_id, "error", error)
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    except UpdateFinishedTrialError:
        return False
    copy = create_trial(state=TrialState.WAITING, params=t.params, distributions=t.distributions,
                        user_attrs={k: v for k, v in t.user_attrs.items()
                                    if k not in (RECORDS, ROW, "error")} | {"retry_of": t.number},
                        system_attrs={k: v for k, v in t.system_attrs.items()
                                      if k not in (WORKER, BEAT)})
    _study(storage, name).add_trial(copy)
    return True


def _queue_names(plan: RunPlan) -> list[str]:
    return [n for c in plan.cells if not c.skipped for n in (plan.search_name(c), plan.final_name(c))]


def requeue_interrupted(storage, plan: RunPlan) -> int:
    """Mark every RUNNING trial of the run FAIL ("interrupted") and queue a copy of each.

    For ``--resume`` of a run whose processes are gone (:func:`live_trials` finds none):
    completed trials stay as they are; the interrupted ones run again with the parameters they
    had been given.
    """
    return sum(_retry(storage, name, t._trial_id, INTERRUPTED) for name in _queue_names(plan)
               for t in _trials(storage, name, states=(TrialState.RUNNING,)))


def requeue_lost(storage, plan: RunPlan) -> int:
    """Fail every RUNNING trial of the run whose heartbeat stopped ("worker lost") and queue a
    copy of each; returns how many. Every process of the run calls it while it works and waits,
    so the run finishes without the process that died."""
    if not _beats(storage):
        return 0
    n = 0
    grace = GRACE_BEATS * storage.get_heartbeat_interval()
    for name in _queue_names(plan):
        for trial_id in storage._get_stale_trial_ids(storage.get_study_id_from_name(name)):
            who = storage.get_trial(trial_id).system_attrs.get(WORKER, "its process")
            n += _retry(storage, name, trial_id, f"worker lost: {who} sent no heartbeat for "
                        f"{grace} s (killed, or its machine stopped); re-queued with its parameters")
    return n


def live_trials(storage, plan: RunPlan) -> list[str]:
    """The RUNNING trials of the run whose process still runs, as "trial N of CELL on host:pid".

    Alive: its heartbeat is fresh, and its process is not one of this machine that is gone.
    A trial with no worker attribute (from an older harness, or killed at the claim) counts
    as gone.
    """
    live = []
    for name in _queue_names(plan):
        stale = set(storage._get_stale_trial_ids(storage.get_study_id_from_name(name))) \
            if _beats(storage) else set()
        for t in _trials(storage, name, states=(TrialState.RUNNING,)):
            who = t.system_attrs.get(WORKER)
            if who is not None and t._trial_id not in stale and not gone(who):
                live.append(f"trial {t.number} of {name.removeprefix(plan.prefix + '/')} on {who}")
    return live


@contextlib.contextmanager
def _beating(storage, trial_id: int):
    """Record the trial's heartbeat every interval while the block runs (in a daemon thread)."""
    if not _beats(storage):
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(storage.get_heartbeat_interval()):
            try:
                storage.record_heartbeat(trial_id)
            except UpdateFinishedTrialError:
                return  # another process declared it lost; the run goes on without this result
            except Exception:  # noqa: BLE001, S112 - a missed beat: the next one may get through
                continue

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=1.0)


@dataclass(frozen=True)
class Outcome:
    """What running one trial gave: its trials-table row, its measurements, its objective values."""

    row: TrialRow
    records: tuple[Measurement, ...]
    values: list[float] | None = None  # the study's objectives; read only when row.status is "ok"


class TrialRunner(Protocol):
    """What a process brings to its share of a run (:class:`harness.run.sweep._Worker` is one).

    It says how a cell's search samples and prunes, and runs the trials :func:`run_trials` pops.
    It never sees the storage: the queue stores each :class:`Outcome` and tells Optuna.
    """

    def sampler(self, cell: Cell, number: int) -> optuna.samplers.BaseSampler:
        """The sampler of search trial ``number`` of ``cell``, set before that trial samples."""
        ...

    def pruner(self) -> optuna.pruners.BasePruner:
        """The pruner of every cell's search."""
        ...

    def search(self, cell: Cell, trial: optuna.Trial) -> Outcome:
        """Run search trial ``trial`` of ``cell``: its config comes from ``trial``, epochs report to it."""
        ...

    def final(self, cell: Cell, number: int, index: int, hp: Mapping[str, Any] | None,
              why: str) -> Outcome:
        """Run final trial ``number`` of ``cell``, the ``index``-th seed of config ``hp``; a
        failed trial with error ``why`` when ``hp`` is None (its search trial did not complete)."""
        ...


def _serves(cell: Cell, device: str | None) -> bool:
    """Whether a process pinned to ``device`` (None: any) takes the cell's trials."""
    if cell.skipped:
        return False
    if device is None:
        return True
    import torch

    want, have = torch.device(cell.device), torch.device(device)
    return want.type == have.type and (want.index is None or want.index == have.index)


_STATES = {"ok": TrialState.COMPLETE, "pruned": TrialState.PRUNED}  # any other status: FAIL


class _Share:
    """One process's share of a run: the cells it serves, their studies (each loaded once, as every
    pop asks for one), popping in order, and storing and telling what each trial gave."""

    def __init__(self, storage, plan: RunPlan, runner: TrialRunner, device: str | None) -> None:
        self.storage, self.plan, self.runner = storage, plan, runner
        self.cells = [c for c in plan.cells if _serves(c, device)]
        self._studies: dict[tuple[str, str], optuna.Study] = {}

    def study(self, cell: Cell, stage: str) -> optuna.Study:
        key = cell.id, stage
        if key not in self._studies:
            if stage == "final":  # finals sample nothing and are never pruned
                self._studies[key] = _study(self.storage, self.plan.final_name(cell))
            else:
                self._studies[key] = _study(self.storage, self.plan.search_name(cell),
                                            self.runner.sampler(cell, 0), self.runner.pruner())
        return self._studies[key]

    def pop(self) -> tuple[Cell, str, optuna.Trial] | None:
        """The next trial this process can run: searches first, then finals of finished searches."""
        for cell in self.cells:
            study = self.study(cell, "search")
            t = _claim(self.storage, study.study_name, self.plan.ordered)
            if t is not None:
                study.sampler = self.runner.sampler(cell, t.number)  # before the trial exists
                return cell, "search", optuna.Trial(study, t._trial_id)
        for cell in self.cells:
            if not _trials(self.storage, self.plan.search_name(cell), states=_OPEN):
                trial = pop_trial(self.storage, self.study(cell, "final"))
                if trial is not None:
                    return cell, "final", trial
        return None

    def run(self, cell: Cell, stage: str, trial: optuna.Trial) -> bool:
        """Run and tell one popped trial, its heartbeat beating meanwhile; False when another
        process declared it lost first (it was re-queued, and this result is dropped)."""
        name = trial.study.study_name
        with _beating(self.storage, trial._trial_id):
            try:
                if stage == "search":
                    out = self.runner.search(cell, trial)
                else:
                    of = trial.user_attrs.get("search_trial")  # rerun="all": that config
                    why = ("no search trial of the cell completed" if of is None
                           else f"search trial {of} did not complete")
                    out = self.runner.final(cell, trial.number, trial.user_attrs["final_index"],
                                            best_config(self.storage, self.plan, cell, of), why)
                self.tell(trial, out)
            except UpdateFinishedTrialError:
                return False  # its heartbeats came too late: its copy runs instead
            except BaseException as e:
                # Ctrl-C (or SIGTERM, as the CLI raises it), or this process cannot go on (a
                # failed trial is a row, never an exception): another process, or --resume,
                # runs the trial again. Best effort: a storage that fails here leaves the trial
                # RUNNING, and its silent heartbeat has it re-queued all the same.
                why = INTERRUPTED if isinstance(e, KeyboardInterrupt) else \
                    f"crashed: {type(e).__name__}: {e}; re-queued with its parameters"
                with contextlib.suppress(Exception):
                    _retry(self.storage, name, trial._trial_id, why)
                raise
        return True

    def tell(self, trial: optuna.Trial, out: Outcome) -> None:
        """Store the trial's records and row with it, and finish it in Optuna."""
        row = replace(out.row, worker=worker_id(), search_trial=trial.user_attrs.get("search_trial"))
        trial.set_user_attr(RECORDS, [list(astuple(r)) for r in out.records])
        # retry_of stays in the trial's own attributes, where collect reads it for every trial:
        # the stored row is the one every earlier version of the harness stored
        trial.set_user_attr(ROW, {k: v for k, v in row.to_dict().items() if k != "retry_of"})
        if row.error:
            trial.set_user_attr("error", row.error)
        state = _STATES.get(row.status, TrialState.FAIL)
        values = out.values if state == TrialState.COMPLETE else None
        if values is not None and not all(math.isfinite(v) for v in values):
            state, values = TrialState.FAIL, None  # a failed run never reaches selection
        # another process may fail the trial ("worker lost") at any moment: then it is not ours
        told = trial.study.tell(trial, values, state=state, skip_if_finished=True)
        if told.state != state:
            raise UpdateFinishedTrialError(f"trial {trial.number} was failed by another process")


def run_trials(storage, plan: RunPlan, runner: TrialRunner, device: str | None = None,
               poll_s: float = 0.5) -> int:
    """Run the run's trials that this process can take until every served cell is finished.

    ``device`` pins the process to the cells of that device (None: every cell). Waits (polling
    the storage) while other processes hold the last trials, and every heartbeat interval
    re-queues the trials of processes that died (:func:`requeue_lost`). Returns how many
    trials this process ran.
    """
    share = _Share(storage, plan, runner, device)
    ran = 0
    next_check = 0.0
    while True:
        if _beats(storage) and time.monotonic() >= next_check:
            requeue_lost(storage, plan)
            next_check = time.monotonic() + storage.get_heartbeat_interval()
        popped = share.pop()
        if popped is None:
            if not _open_trials(storage, plan, share.cells):
                return ran
            time.sleep(poll_s)
            continue
        ran += share.run(*popped)


def best_config(storage, plan: RunPlan, cell: Cell, number: int | None = None) -> dict[str, Any] | None:
    """The hyperparameters of the cell's best search trial (the most accurate of the Pareto
    front for multi-objective studies), or of search trial ``number``; None when that trial
    (or every trial) did not complete."""
    done = _trials(storage, plan.search_name(cell), states=(TrialState.COMPLETE,))
    if number is not None:
        done = [t for t in done if t.number == number]
    if not done:
        return None
    best = max(done, key=lambda t: (t.values[0], -t.number))
    return best.user_attrs["hp"]


def pareto_numbers(storage, plan: RunPlan, cell: Cell) -> set[int]:
    """Numbers of the cell's search trials on the accuracy-throughput Pareto front."""
    if len(plan.spec.objectives) < 2 or cell.skipped:
        return set()
    return {t.number for t in _study(storage, plan.search_name(cell)).best_trials}


def collect(storage, plan: RunPlan) -> tuple[list[Measurement], list[TrialRow]]:
    """Every record and trial row of the run, read back from the storage, in plan order."""
    records: list[Measurement] = list(plan.pretrain_records)
    rows: list[TrialRow] = []
    for cell in plan.cells:
        if cell.skipped:
            rows.append(_unrun_row(plan, cell, "search", None, "skipped", cell.skipped))
            continue
        pareto = pareto_numbers(storage, plan, cell)
        for stage, name in (("search", plan.search_name(cell)), ("final", plan.final_name(cell))):
            for t in sorted(_trials(storage, name), key=lambda t: t.number):
                records += [Measurement(*r) for r in t.user_attrs.get(RECORDS, [])]
                row = _stored_row(plan, cell, stage, t)
                if stage == "search" and len(plan.spec.objectives) > 1:
                    row = replace(row, pareto=t.number in pareto)
                rows.append(replace(row, retry_of=t.user_attrs.get("retry_of")))
    return records, rows


def _stored_row(plan: RunPlan, cell: Cell, stage: str, t: optuna.trial.FrozenTrial) -> TrialRow:
    """The row a finished trial was stored with, or one saying what became of a trial never run."""
    if RECORDS in t.user_attrs:
        return TrialRow.from_dict(t.user_attrs[ROW])
    # interrupted, or never started
    status = {TrialState.FAIL: "failed", TrialState.PRUNED: "pruned"}.get(t.state, t.state.name.lower())
    return _unrun_row(plan, cell, stage, t.number, status, t.user_attrs.get("error", ""))


def _unrun_row(plan: RunPlan, cell: Cell, stage: str, trial: int | None, status: str,
               error: str) -> TrialRow:
    return TrialRow(run_id=plan.run_id, study=plan.spec.name, cell=cell.id, stage=stage, trial=trial,
                    strategy=cell.strategy, budget=budget_label(cell.budget), dataset=cell.dataset,
                    model=cell.model, device=cell.device, execution=cell.execution, status=status,
                    error=error, ran=False)
