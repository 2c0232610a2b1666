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

Storage URLs: any SQLAlchemy URL Optuna accepts (``sqlite:///x.db``, ``postgresql://...``) or
``journal:PATH``, Optuna's journal file for several processes on one machine.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import astuple, dataclass, replace
from typing import Any, Protocol

import optuna
from optuna.trial import TrialState, create_trial

from harness.config.spec import StudySpec, budget_label, spec_from_dict
from harness.errors import UserError
from harness.run.records import Measurement, TrialRow

__all__ = [
    "FINISHED",
    "Cell",
    "Outcome",
    "RunPlan",
    "TrialRunner",
    "best_config",
    "collect",
    "find_run",
    "open_storage",
    "plan_run",
    "pop_trial",
    "redact_url",
    "requeue_interrupted",
    "run_trials",
    "search_trials",
]

MANIFEST = "harness_run"  # the manifest study's user attribute
RECORDS, ROW = "harness_records", "harness_row"  # a finished trial's user attributes
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
_OPEN = (TrialState.WAITING, TrialState.RUNNING)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs, tables and reports."""
    import re

    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def open_storage(url: str, attempts: int = 5) -> optuna.storages.BaseStorage:
    """The Optuna storage at ``url``; a :class:`UserError` (password masked) when it cannot open.

    Workers that start together on an empty database race to create Optuna's tables, and the
    losers get a unique-key violation: they retry, and find the tables made.
    """
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            path = url.removeprefix("journal:").removeprefix("//")
            return optuna.storages.JournalStorage(JournalFileBackend(path))
        for attempt in range(attempts):
            try:
                return optuna.storages.get_storage(url)
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


def plan_run(storage, spec: StudySpec, run_id: str, pretrain_records=()) -> RunPlan:
    """Write the run's manifest and queue every trial of every cell that can run here."""
    skipped = spec.skipped_cells()
    cells = tuple(Cell(d, ds, m, b, s, e, skipped.get((d, e), ""))
                  for d, ds, m, b, s, e in spec.cells())
    plan = RunPlan(spec, run_id, cells, tuple(pretrain_records))
    manifest = optuna.create_study(storage=storage, study_name=plan.prefix)
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
        final = optuna.create_study(storage=storage, study_name=plan.final_name(cell))
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
    })
    return plan


def _plan_from_manifest(data: dict[str, Any]) -> RunPlan:
    spec = spec_from_dict(data["spec"])
    cells = tuple(Cell(*c) for c in data["cells"])
    pre = tuple(Measurement(*r) for r in data.get("pretrain_records", []))
    return RunPlan(spec, data["run_id"], cells, pre)


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


def _claim(storage, name: str) -> optuna.trial.FrozenTrial | None:
    """Move one WAITING trial of study ``name`` to RUNNING for this process; None when none is left.

    The storage's WAITING -> RUNNING transition succeeds for one process only.
    """
    for t in _trials(storage, name, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                return t
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def pop_trial(storage, study: optuna.Study) -> optuna.Trial | None:
    """Take one WAITING trial of ``study`` for this process, or None when none is left."""
    t = _claim(storage, study.study_name)
    return None if t is None else optuna.Trial(study, t._trial_id)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def requeue_interrupted(storage, plan: RunPlan) -> int:
    """Mark every RUNNING trial of the run FAIL ("interrupted") and queue a copy of each.

    For ``--resume`` of a run whose processes are gone: completed trials stay as they are;
    the interrupted ones run again with the parameters they had been given.
    """
    n = 0
    for cell in plan.cells:
        if cell.skipped:
            continue
        for name in (plan.search_name(cell), plan.final_name(cell)):
            study = _study(storage, name)
            for t in _trials(storage, name, states=(TrialState.RUNNING,)):
                copy = create_trial(state=TrialState.WAITING, params=t.params,
                                    distributions=t.distributions,
                                    user_attrs={k: v for k, v in t.user_attrs.items()
                                                if k not in (RECORDS, ROW)}
                                    | {"retry_of": t.number},
                                    system_attrs=t.system_attrs)
                storage.set_trial_user_attr(t._trial_id, "error", "interrupted: the process "
                                            "running it stopped; the resumed run re-queued it")
                storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
                study.add_trial(copy)
                n += 1
    return n


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
            t = _claim(self.storage, study.study_name)
            if t is not None:
                study.sampler = self.runner.sampler(cell, t.number)  # before the trial exists
                return cell, "search", optuna.Trial(study, t._trial_id)
        for cell in self.cells:
            if not _trials(self.storage, self.plan.search_name(cell), states=_OPEN):
                trial = pop_trial(self.storage, self.study(cell, "final"))
                if trial is not None:
                    return cell, "final", trial
        return None

    def run(self, cell: Cell, stage: str, trial: optuna.Trial) -> None:
        if stage == "search":
            out = self.runner.search(cell, trial)
        else:
            of = trial.user_attrs.get("search_trial")  # rerun="all": that config, not the best
            why = ("no search trial of the cell completed" if of is None
                   else f"search trial {of} did not complete")
            out = self.runner.final(cell, trial.number, trial.user_attrs["final_index"],
                                    best_config(self.storage, self.plan, cell, of), why)
        self.tell(trial, out)

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
        trial.study.tell(trial, values, state=state)



def run_trials(storage, plan: RunPlan, runner: TrialRunner, device: str | None = None,
               poll_s: float = 0.5) -> int:
    """Run the run's trials that this process can take until every served cell is finished.

    ``device`` pins the process to the cells of that device (None: every cell). Waits (polling
    the storage) while other processes hold the last trials. Returns how many trials this
    process ran.
    """
    share = _Share(storage, plan, runner, device)
    ran = 0
    while True:
        popped = share.pop()
        if popped is None:
            if not _open_trials(storage, plan, share.cells):
                return ran
            time.sleep(poll_s)
            continue
        share.run(*popped)
        ran += 1


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
