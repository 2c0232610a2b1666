"""A run lives in its Optuna storage: the plan, the queue of trials, and every trial's records.

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
records and its trial-table row as user attributes, so the tables are built from the storage
alone, whichever machine ran what.

Storage URLs: any SQLAlchemy URL Optuna accepts (``sqlite:///x.db``, ``postgresql://...``) or
``journal:PATH``, Optuna's journal file for several processes on one machine.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass
from typing import Any

import optuna
from optuna.trial import TrialState, create_trial

from harness.config.spec import StudySpec, budget_label, spec_from_dict
from harness.errors import UserError
from harness.run.records import Measurement

__all__ = [
    "FINISHED",
    "Cell",
    "RunPlan",
    "find_run",
    "open_storage",
    "plan_run",
    "pop_trial",
    "redact_url",
    "requeue_interrupted",
    "run_trials",
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
            if not unfinished or _open_trials(storage, plan):
                return plan
    return None


def _open_trials(storage, plan: RunPlan) -> bool:
    return any(_trials(storage, n, states=_OPEN) for c in plan.cells if not c.skipped
               for n in (plan.search_name(c), plan.final_name(c)))


def _study(storage, name: str, sampler=None, pruner=None) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)


def _trials(storage, name: str, states=None) -> list[optuna.trial.FrozenTrial]:
    sid = storage.get_study_id_from_name(name)
    return storage.get_all_trials(sid, deepcopy=False, states=states)


def pop_trial(storage, study: optuna.Study,
              prepare: Callable[[optuna.Study, int], None] | None = None) -> optuna.Trial | None:
    """Take one WAITING trial of ``study`` for this process, or None when none is left.

    The storage's WAITING -> RUNNING transition succeeds for one process only. ``prepare``
    sees the study and the trial's number before the trial object (and its sampler) exists.
    """
    for t in _trials(storage, study.study_name, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                if prepare is not None:
                    prepare(study, t.number)
                return optuna.Trial(study, t._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


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


# a trial runner: (plan, cell, trial, stage) -> (state, values); it stores records and row itself
Runner = Callable[[RunPlan, Cell, optuna.Trial, str], tuple[TrialState, list[float] | None]]


def _serves(cell: Cell, device: str | None) -> bool:
    """Whether a process pinned to ``device`` (None: any) takes the cell's trials."""
    if cell.skipped:
        return False
    if device is None:
        return True
    import torch

    want, have = torch.device(cell.device), torch.device(device)
    return want.type == have.type and (want.index is None or want.index == have.index)


def _search_done(storage, plan: RunPlan, cell: Cell) -> bool:
    return not _trials(storage, plan.search_name(cell), states=_OPEN)


def _next(storage, plan: RunPlan, cells, make_study, prepare) -> tuple[Cell, str, optuna.Study,
                                                                     optuna.Trial] | None:
    """Pop the next trial this process can run: searches first, then finals of finished searches."""
    for cell in cells:
        study = make_study(cell, "search")
        trial = pop_trial(storage, study, prepare and (lambda s, n, c=cell: prepare(c, s, n)))
        if trial is not None:
            return cell, "search", study, trial
    for cell in cells:
        if _search_done(storage, plan, cell):
            study = make_study(cell, "final")
            trial = pop_trial(storage, study)
            if trial is not None:
                return cell, "final", study, trial
    return None


def run_trials(storage, plan: RunPlan, runner: Runner, make_study, device: str | None = None,
               poll_s: float = 0.5, on_done: Callable[[], None] | None = None,
               prepare: Callable[[Cell, optuna.Study, int], None] | None = None) -> int:
    """Run the run's trials that this process can take until every served cell is finished.

    Waits (polling the storage) while other processes hold the last trials. Returns how many
    trials this process ran.
    """
    cells = [c for c in plan.cells if _serves(c, device)]
    ran = 0
    while True:
        popped = _next(storage, plan, cells, make_study, prepare)
        if popped is None:
            if all(not _trials(storage, n, states=_OPEN) for c in cells
                   for n in (plan.search_name(c), plan.final_name(c))):
                return ran
            time.sleep(poll_s)
            continue
        cell, stage, study, trial = popped
        state, values = runner(plan, cell, trial, stage)
        if values is not None and not all(math.isfinite(v) for v in values):
            state, values = TrialState.FAIL, None  # a failed run never reaches selection
        study.tell(trial, values if state == TrialState.COMPLETE else None, state=state)
        ran += 1
        if on_done is not None:
            on_done()


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


def collect(storage, plan: RunPlan) -> tuple[list[Measurement], list[dict]]:
    """Every record and trial row of the run, read back from the storage, in plan order."""
    rows: list[Measurement] = list(plan.pretrain_records)
    trial_rows: list[dict] = []
    for cell in plan.cells:
        if cell.skipped:
            trial_rows.append(_skipped_row(plan, cell))
            continue
        pareto = pareto_numbers(storage, plan, cell)
        for stage, name in (("search", plan.search_name(cell)), ("final", plan.final_name(cell))):
            for t in sorted(_trials(storage, name), key=lambda t: t.number):
                if RECORDS in t.user_attrs:
                    rows += [Measurement(*r) for r in t.user_attrs[RECORDS]]
                    row = dict(t.user_attrs[ROW])
                else:  # interrupted, or never started
                    row = _bare_row(plan, cell, stage, t)
                if stage == "search" and len(plan.spec.objectives) > 1:
                    row["pareto"] = t.number in pareto
                row["retry_of"] = t.user_attrs.get("retry_of")
                trial_rows.append(row)
    return rows, trial_rows


def _bare_row(plan: RunPlan, cell: Cell, stage: str, t) -> dict:
    status = {TrialState.FAIL: "failed", TrialState.PRUNED: "pruned"}.get(t.state, t.state.name.lower())
    return {"run_id": plan.run_id, "study": plan.spec.name, "cell": cell.id, "stage": stage,
            "trial": t.number, "strategy": cell.strategy, "budget": budget_label(cell.budget),
            "dataset": cell.dataset, "model": cell.model, "device": cell.device,
            "execution": cell.execution, "status": status,
            "error": t.user_attrs.get("error", ""), "params": "{}"}


def _skipped_row(plan: RunPlan, cell: Cell) -> dict:
    return {"run_id": plan.run_id, "study": plan.spec.name, "cell": cell.id, "stage": "search",
            "trial": None, "strategy": cell.strategy, "budget": budget_label(cell.budget),
            "dataset": cell.dataset, "model": cell.model, "device": cell.device,
            "execution": cell.execution, "status": "skipped", "error": cell.skipped, "params": "{}"}
