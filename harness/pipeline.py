"""The whole pipeline of a study, the last stage: run it, then write its tables, claims and report.

:func:`run_study` checks the study (:func:`~harness.run.preflight.check_runnable`), plans the run
into its storage, works on it beside any ``worker`` processes (:mod:`harness.run.sweep`), then
writes every file from the storage: the tables and claims (:mod:`harness.analysis`) and the
reports (:mod:`harness.report`). :func:`resume_study` finishes a run whose process was killed,
and refuses one that still runs (its ``run.lock`` names a live process, or its running trials
have fresh heartbeats). A Ctrl-C or SIGTERM leaves a run that ``--resume`` finishes
(:class:`RunInterrupted` says where it is).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from harness._io import atomic_write_text
from harness.analysis.claims import evaluate_claims, write_claims
from harness.analysis.results import load, write_tables
from harness.analysis.tables import measurements_frame, summarize
from harness.config.spec import StudySpec, device_problem, resolve_device
from harness.errors import UserError
from harness.measure.env import environment
from harness.report.markdown import figures_wanted, write_reports
from harness.run.preflight import check_runnable
from harness.run.queue import (
    RunPlan,
    close_storage,
    collect,
    find_run,
    gone,
    live_trials,
    missing_storage,
    open_storage,
    plan_run,
    redact_url,
    requeue_interrupted,
    worker_id,
)
from harness.run.records import Measurement
from harness.run.sweep import (
    FINAL_SEEDS,
    SEARCH_SEED,
    Jobs,
    choose_jobs,
    local_workers,
    run_compile_cache,
    work,
)
from harness.train.pretrain import Pretrained, pretrained_backbone, recipe_key

__all__ = ["RunInterrupted", "StudyRun", "new_run_id", "resume_study", "run_study"]

LOCK = "run.lock"  # in the run folder while a study process works on it: "host:pid"


class RunInterrupted(KeyboardInterrupt):
    """A Ctrl-C or SIGTERM stopped the run in ``run_dir``; its running trial was marked failed
    ("interrupted") and re-queued, so ``--resume run_dir`` finishes it."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(str(run_dir))
        self.run_dir = run_dir


@contextlib.contextmanager
def _holding(run_dir: Path):
    """Name this process in the run folder's lock while the block runs; a stop by Ctrl-C or
    SIGTERM leaves as :class:`RunInterrupted`."""
    lock = run_dir / LOCK
    atomic_write_text(lock, worker_id())
    try:
        yield
    except KeyboardInterrupt:
        raise RunInterrupted(run_dir) from None
    finally:
        lock.unlink(missing_ok=True)


def _refuse_if_alive(run_dir: Path, store, plan: RunPlan) -> None:
    """A :class:`UserError` when a process still works on the run: resuming it would fail its
    running trials under it."""
    held = []
    lock = run_dir / LOCK
    if lock.is_file():
        who = lock.read_text().strip()
        if who and who != worker_id() and not gone(who):
            held.append(f"the study process {who} holds {LOCK}")
    held += live_trials(store, plan)
    if held:
        raise UserError(f"run {run_dir.name!r} is still running ({'; '.join(held[:3])}"
                        f"{'; ...' if len(held) > 3 else ''}); --resume finishes a run whose "
                        "processes are gone: let it finish, or stop it (Ctrl-C) and resume then.")


@dataclass(frozen=True)
class StudyRun:
    run_dir: Path
    summary: pd.DataFrame
    seconds: float
    claims: pd.DataFrame | None = None  # the study's papers' claims checked, when it has any


def _make_run_dir(out_root: str | Path, study: str, run_id: str) -> Path:
    out_root = Path(out_root)
    if out_root.exists() and not out_root.is_dir():
        raise UserError(f"--out {str(out_root)!r} is a file; pass a folder for the runs.")
    run_dir = out_root / study / run_id
    try:
        run_dir.mkdir(parents=True)
    except OSError as e:
        raise UserError(f"cannot create the run folder {str(run_dir)!r}: {e.strerror}.") from None
    return run_dir


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def _pretrain_rows(run_id: str, spec: StudySpec, pre: Pretrained, device: str) -> list[Measurement]:
    r = pre.recipe
    base = Measurement(
        run_id=run_id, study=spec.name, cell="pretrain", stage="pretrain", trial=0, phase="pretrain",
        strategy="pretrain", dataset=r.dataset, model=r.model, budget="all", device=device,
        execution="eager", seed=r.seed, split="source_val", metric="accuracy",
        value=pre.source_val_accuracy, unit="fraction", epoch=None, status="ok",
    )
    return [base, replace(base, split="train", metric="pretrain_time_s", value=pre.seconds, unit="s"),
            replace(base, split="train", metric="loaded_from_cache", value=float(pre.cached), unit="bool")]


def _first_device(spec: StudySpec) -> str:
    return next(d for d in spec.devices if device_problem(d) is None)


def _default_storage(run_dir: Path, jobs: int) -> str:
    """SQLite in the run folder for one process; Optuna's journal file for several, as
    SQLite's WAITING -> RUNNING move is not atomic between processes."""
    if jobs > 1:
        return f"journal:{(run_dir / 'optuna.journal').resolve()}"
    return f"sqlite:///{(run_dir / 'optuna.db').resolve()}"


def run_study(
    spec: StudySpec,
    out_root: str | Path = "results",
    storage: str | None = None,
    progress: bool = True,
    jobs: int | None = 1,
    threads: int | None = None,
    figures: bool | None = None,
) -> StudyRun:
    """Run ``spec`` and write its tables, plot and report to ``<out_root>/<study>/<run_id>/``.

    ``jobs`` processes work on the run (this one and ``jobs - 1`` local workers it starts and
    stops; None chooses from the machine, :func:`~harness.run.sweep.choose_jobs`), with
    ``threads`` torch threads each (default: the cores shared out). Several jobs run each cell's
    search trials in order, so the trials are those of one job with the same threads per trial.
    Other processes may join the run with :func:`run_worker` on the same ``storage``.
    ``figures`` False (None: ``HARNESS_FIGURES``, drawn by default) writes the report without
    figures; ``python -m harness report RUN_DIR`` draws them later.
    """
    draw = figures_wanted(figures)  # a bad HARNESS_FIGURES fails before the run, not after it
    check_runnable(spec)
    store = open_storage(storage) if storage is not None else None
    t_start = time.perf_counter()
    run_id = new_run_id()
    run_dir = _make_run_dir(out_root, spec.name, run_id)
    share = choose_jobs(spec, jobs, threads)
    with _holding(run_dir):
        storage_url = storage or _default_storage(run_dir, share.jobs)
        store = store or open_storage(storage_url)
        device = _first_device(spec)
        env = environment(resolve_device(device))
        env.update(run_id=run_id, storage=redact_url(storage_url), search_seed=SEARCH_SEED,
                   final_seeds=[FINAL_SEEDS + i for i in range(spec.seeds)], **share.to_dict())
        atomic_write_text(run_dir / "env.json", json.dumps(env, indent=2, default=str))
        spec_dict = spec.to_dict()
        if spec.pretrain is not None:
            spec_dict["pretrain_key"] = recipe_key(spec.pretrain)
        atomic_write_text(run_dir / "spec.json", json.dumps(spec_dict, indent=2))

        pre_rows = []
        if spec.pretrain is not None:
            for model in spec.model_axis:
                pre = pretrained_backbone(replace(spec.pretrain, model=model), device)
                pre_rows += _pretrain_rows(run_id, spec, pre, device)
        plan = plan_run(store, spec, run_id, pre_rows, ordered=share.jobs > 1)
        _work(store, storage_url, plan, run_dir, share, progress)
        return _finish(store, plan, run_dir, env, spec_dict, time.perf_counter() - t_start, draw)


def _work(store, storage_url: str, plan: RunPlan, run_dir: Path, share: Jobs, progress: bool) -> None:
    """This process's share of the run beside ``share.jobs - 1`` local workers it starts, and
    stops on a Ctrl-C or SIGTERM (each gives its running trial back first)."""
    with run_compile_cache(plan) as cache, local_workers(
            plan.spec.name, storage_url, plan.run_id, share.jobs - 1, share.threads, cache,
            run_dir / "workers"):
        work(store, plan, None, progress, share.threads, cache)


def resume_study(run_dir: str | Path, storage: str | None = None, progress: bool = True,
                 figures: bool | None = None) -> StudyRun:
    """Finish the run in ``run_dir`` whose process stopped: completed trials are kept, the
    interrupted ones re-queued with their parameters, the rest run, then the tables are written."""
    draw = figures_wanted(figures)
    run_dir = Path(run_dir)
    spec_file = run_dir / "spec.json"
    if not spec_file.is_file():
        raise UserError(f"--resume {str(run_dir)!r} is not a run folder (it has no spec.json); "
                        "pass the folder results/<study>/<run_id> of the run to finish.")
    env = json.loads((run_dir / "env.json").read_text())
    journal = run_dir / "optuna.journal"  # a run of several jobs
    storage_url = storage or (f"journal:{journal.resolve()}" if journal.is_file() else
                              f"sqlite:///{(run_dir / 'optuna.db').resolve()}")
    if storage is None and not (run_dir / "optuna.db").is_file() and not journal.is_file():
        raise UserError(f"run {str(run_dir)!r} used the storage {env.get('storage')!r}; pass it "
                        "again with --storage to resume.")
    missing = missing_storage(storage_url)
    if missing is not None:  # never create a storage: a mistyped path would leave one behind
        raise UserError(f"the storage {redact_url(storage_url)!r} does not exist (no file "
                        f"{missing!r}); pass the storage run {run_dir.name!r} used with --storage.")
    store = open_storage(storage_url)
    spec_dict = json.loads(spec_file.read_text())
    plan = find_run(store, spec_dict["name"], run_dir.name)
    if plan is None:
        raise UserError(f"run {run_dir.name!r} of study {spec_dict['name']!r} is not in the storage "
                        f"{redact_url(storage_url)!r}; pass the storage the run used with --storage.")
    _refuse_if_alive(run_dir, store, plan)
    t_start = time.perf_counter()
    with _holding(run_dir):
        requeued = requeue_interrupted(store, plan)
        if progress and requeued:
            print(f"{spec_dict['name']}: re-queued {requeued} interrupted trial(s)")
        work(store, plan, None, progress)
        return _finish(store, plan, run_dir, env, spec_dict, time.perf_counter() - t_start, draw)


def _finish(store, plan: RunPlan, run_dir: Path, env: dict, spec_dict: dict, seconds: float,
            figures: bool = True) -> StudyRun:
    """Write the tables, plots and report of a finished run, all from the storage."""
    rows, trial_rows = collect(store, plan)
    measurements = measurements_frame(rows)
    trials = pd.DataFrame([r.to_dict() for r in trial_rows])
    summary = summarize(measurements, trials)
    write_tables(run_dir, measurements, trials, summary)
    claims = evaluate_claims(plan.spec.name, load(run_dir))
    if len(claims):
        write_claims(run_dir, claims)
    write_reports(run_dir, seconds, figures)
    close_storage(store)
    return StudyRun(run_dir, summary, seconds, claims)
