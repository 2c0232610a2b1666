"""Run a study: a grid of cells, an Optuna study per cell, seeded re-runs of each cell's best config.

Fairness: every cell gets the same number of Optuna trials, and every search trial of every
cell uses the same seed, so strategies differ only in what they do. Selection uses the
**validation** accuracy; the best config of each cell is then re-run with ``spec.seeds`` fresh
seeds, and only those runs measure the **test** split.

The run's plan, queue and records live in its Optuna storage (:mod:`harness.run.queue`): SQLite in
the run folder by default, a journal file or PostgreSQL for workers. :func:`run_study` plans the
run, works on it beside any :func:`run_worker` processes, and writes the tables from the
storage; :func:`resume_study` finishes a run whose process was killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import astuple, dataclass, replace
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import torch
from optuna.trial import TrialState
from tqdm.auto import tqdm

from harness._io import atomic_write_text
from harness.analysis.claims import evaluate_claims, write_claims
from harness.analysis.results import load, write_tables
from harness.analysis.tables import measurements_frame, summarize
from harness.config.execution import parse_execution
from harness.config.spec import StudySpec, TrialConfig, budget_label, device_problem, resolve_device
from harness.data.task import load_task
from harness.errors import UserError
from harness.measure.env import environment
from harness.models.core import build_model
from harness.models.torchvision import load_backbone_weights
from harness.registry import STRATEGIES
from harness.run.queue import (
    RECORDS,
    ROW,
    Cell,
    RunPlan,
    best_config,
    collect,
    find_run,
    open_storage,
    plan_run,
    redact_url,
    requeue_interrupted,
    run_trials,
    worker_id,
)
from harness.run.records import Measurement
from harness.run.trial import TrialContext, TrialResult, failed_trial, run_trial
from harness.train.pretrain import Pretrained, pretrained_backbone, recipe_key

__all__ = ["FINAL_SEEDS", "SEARCH_SEED", "StudyRun", "redact_url", "resume_study", "run_study",
           "run_worker"]

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the tables and the progress bar say it all

SEARCH_SEED = 0  # every search trial of every cell: configs differ, initialisation and order do not
FINAL_SEEDS = 1000  # re-runs use FINAL_SEEDS + i, never the search seed


@dataclass(frozen=True)
class StudyRun:
    run_dir: Path
    summary: pd.DataFrame
    seconds: float
    claims: pd.DataFrame | None = None  # the study's papers' claims checked, when it has any


def startup_trials(trials: int) -> int:
    """Random trials before TPE models the results: Optuna's default of 10 would leave a
    10-trial search purely random, so a third of the budget, at least 2 and at most 10."""
    return min(10, max(2, trials // 3))


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The study's pruner; both judge validation accuracy reported after each epoch."""
    if spec.pruning == "none":
        return optuna.pruners.NopPruner()
    if spec.pruning == "hyperband":
        # epochs are the resource; no trial is stopped before a second of its epochs
        return optuna.pruners.HyperbandPruner(min_resource=max(1, spec.epochs // 4),
                                              max_resource=spec.epochs, reduction_factor=3)
    # trials are compared within their cell (one strategy), so a phased strategy's slow start
    # is shared by every trial it is judged against; a quarter of the epochs is enough warm-up
    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials(spec.trials),
                                       n_warmup_steps=max(1, spec.epochs // 4))


class _PlannedGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler for a run whose plan already holds one trial per grid point.

    Optuna's own stops ``Study.optimize`` once the grid is visited; a planned run never calls
    ``optimize`` (its queue ends by itself), so there is nothing to stop.
    """

    def after_trial(self, study, trial, state, values) -> None:
        pass


def make_sampler(spec: StudySpec, strategy: str, trial: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler for search trial number ``trial`` of a cell.

    Seeded by ``(sampler_seed, trial)``: trial n draws the same point whichever process runs
    it, a resumed run does not repeat the points it already tried, and no two trials share
    a random start-up point (a sampler seeded once per trial with one seed would give every
    trial the same one).
    """
    seed = int(np.random.SeedSequence([spec.sampler_seed, trial]).generate_state(1)[0])
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "grid":
        # the seed shuffles the grid, and trial n takes point n of it: one order for all trials
        grid = {k: list(v) for k, v in spec.grid[strategy].items()}
        return _PlannedGridSampler(grid, seed=spec.sampler_seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(spec.trials))


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


@contextlib.contextmanager
def fresh_compile_cache(enabled: bool):
    """Point inductor at an empty cache for the run, so its first compile of each graph is cold.

    Without it, graphs compiled by any earlier process come from the on-disk cache and compile
    time reads ~0.2 s where a user's first run pays ~13 s. Later trials of the run hit this
    run's cache: the tables show the first (cold) and the re-runs (warm) apart.
    """
    if not enabled:
        yield
        return
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    path = tempfile.mkdtemp(prefix="harness-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = old
        shutil.rmtree(path, ignore_errors=True)


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


class _Worker:
    """One process's side of a run: its tasks and backbone weights, built once per device."""

    def __init__(self, plan: RunPlan, device: str | None = None, progress: bool = False) -> None:
        self.plan = plan
        self.spec = plan.spec
        self.device = device  # None: each cell on its own device
        self._tasks: dict = {}
        self._pre: dict = {}  # model -> its backbone state dict (pretrained or loaded)
        self._studies: dict = {}  # (cell id, stage) -> its Optuna study
        self.bar = tqdm(total=sum(0 if c.skipped else self.spec.trials + self.spec.seeds
                                  for c in plan.cells),
                        desc=self.spec.name, unit="trial", disable=not progress)

    def study(self, storage, cell: Cell, stage: str) -> optuna.Study:
        """The cell's search or final study, loaded once per process (every pop asks for it)."""
        key = cell.id, stage
        if key not in self._studies:
            if stage == "final":
                self._studies[key] = optuna.load_study(study_name=self.plan.final_name(cell),
                                                       storage=storage)
            else:
                self._studies[key] = optuna.load_study(
                    study_name=self.plan.search_name(cell), storage=storage,
                    sampler=make_sampler(self.spec, cell.strategy), pruner=make_pruner(self.spec))
        return self._studies[key]

    def seed_sampler(self, cell: Cell, study: optuna.Study, number: int) -> None:
        """Give search trial ``number`` its own seeded sampler before it samples anything."""
        study.sampler = make_sampler(self.spec, cell.strategy, number)

    def _context(self, device: str, cell: Cell) -> TrialContext:
        spec = self.spec
        key = device, cell.dataset, cell.budget
        if key not in self._tasks:
            self._tasks[key] = load_task(cell.dataset, spec.classes, cell.budget, device,
                                         root=spec.data_root, ood=spec.ood, loader=spec.loader)
        task = self._tasks[key]
        if cell.model not in self._pre:
            if spec.pretrain is not None:
                recipe = replace(spec.pretrain, model=cell.model)
                self._pre[cell.model] = pretrained_backbone(recipe, device).state_dict
            elif spec.weights is not None:
                self._pre[cell.model] = backbone_weights(cell.model, spec.weights, task.input_shape)
            else:
                self._pre[cell.model] = None
        return TrialContext(self.plan.run_id, task, self._pre[cell.model])

    def template(self, cell: Cell) -> TrialConfig:
        spec = self.spec
        return TrialConfig(
            study=spec.name, cell=cell.id, stage="search", trial=0, seed=SEARCH_SEED,
            strategy=cell.strategy, hp={}, dataset=cell.dataset, classes=spec.classes,
            shots=cell.budget, model=cell.model, device=self.device or cell.device,
            execution=cell.execution, epochs=spec.epochs, batch_size=spec.batch_size,
            target_accuracy=spec.target_accuracy, data_root=spec.data_root, ood=spec.ood,
            loader=spec.loader, loader_workers=spec.loader_workers, weights=spec.weights,
        )

    def __call__(self, storage, cell: Cell, trial: optuna.Trial, stage: str):
        template = self.template(cell)
        ctx = self._context(template.device, cell)
        if stage == "search":
            res = _search_trial(replace(template, trial=trial.number), ctx, trial,
                                prune=len(self.spec.objectives) == 1)
        else:
            cfg = replace(template, stage="final", trial=trial.number,
                          seed=FINAL_SEEDS + trial.user_attrs["final_index"])
            of = trial.user_attrs.get("search_trial")  # rerun="all": that config, not the best
            hp = best_config(storage, self.plan, cell, of)
            res = (run_trial(replace(cfg, hp=hp), ctx) if hp is not None else
                   failed_trial(cfg, ctx, "no search trial of the cell completed" if of is None
                                else f"search trial {of} did not complete"))
        row = _trial_row(res) | {"worker": worker_id()}
        if stage == "final" and trial.user_attrs.get("search_trial") is not None:
            row["search_trial"] = trial.user_attrs["search_trial"]
        trial.set_user_attr(RECORDS, [list(astuple(r)) for r in res.records])
        trial.set_user_attr(ROW, row)
        if res.error:
            trial.set_user_attr("error", res.error)
        self.bar.set_postfix_str(f"{cell.id} {res.status} val={res.val_accuracy:.3f}")
        self.bar.update()
        state = {"ok": TrialState.COMPLETE, "pruned": TrialState.PRUNED}.get(res.status, TrialState.FAIL)
        if state != TrialState.COMPLETE:
            return state, None
        if stage == "final":
            return state, [res.test_accuracy]
        values = [res.val_accuracy]
        if "throughput" in self.spec.objectives:
            values.append(_train_throughput(res))
        return state, values


def backbone_weights(name: str, weights: str, input_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """The state dict of model ``name`` with ``weights`` loaded (its head is replaced per trial)."""
    model = build_model(name, input_shape[0], 2, image_size=input_shape[-1])
    load_backbone_weights(name, model, weights)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _train_throughput(res: TrialResult) -> float:
    """The trial's steady-state training samples/s over the whole run (NaN when not measured)."""
    for r in res.records:
        if r.metric == "samples_per_s" and r.phase == "all" and r.split == "train":
            return r.value
    return float("nan")


def _search_trial(cfg: TrialConfig, ctx: TrialContext, trial: optuna.Trial, prune: bool) -> TrialResult:
    strategy = STRATEGIES.get(cfg.strategy)()
    try:
        hp = strategy.search_space(trial)
    except Exception as e:  # noqa: BLE001 - e.g. an enqueued value outside a log-scale range
        return failed_trial(replace(cfg, hp=dict(trial.params)), ctx,
                            f"{type(e).__name__} in search_space: {e}")
    trial.set_user_attr("hp", hp)

    def report_epoch(rec) -> None:
        if prune:  # Optuna prunes single-objective studies only
            trial.report(rec.val_accuracy, rec.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

    return run_trial(replace(cfg, hp=hp), ctx, report_epoch)


def _trial_row(res: TrialResult) -> dict:
    c = res.config
    row = {
        "run_id": res.records[0].run_id if res.records else "", "study": c.study, "cell": c.cell,
        "stage": c.stage, "trial": c.trial, "seed": c.seed, "strategy": c.strategy,
        "budget": budget_label(c.shots), "dataset": c.dataset, "model": c.model, "device": c.device,
        "execution": c.execution, "status": res.status, "error": res.error, "bn_mode": res.bn_mode,
        "val_accuracy": res.val_accuracy, "test_accuracy": res.test_accuracy,
        "seconds": res.seconds, "params": json.dumps(dict(c.hp), sort_keys=True),
    }
    row.update({f"ood_accuracy:{k}": v for k, v in res.ood_accuracy.items()})
    row.update({f"param_{k}": v for k, v in c.hp.items()})
    return row


def _work(storage, plan: RunPlan, device: str | None, progress: bool) -> int:
    worker = _Worker(plan, device, progress)
    compiles = any(parse_execution(c.execution).compile for c in plan.cells if not c.skipped)
    with fresh_compile_cache(compiles):
        try:
            return run_trials(storage, plan, lambda p, c, t, s: worker(storage, c, t, s),
                              lambda c, s: worker.study(storage, c, s), device=device,
                              prepare=worker.seed_sampler)
        finally:
            worker.bar.close()


def _first_device(spec: StudySpec) -> str:
    return next(d for d in spec.devices if device_problem(d) is None)


def run_study(
    spec: StudySpec,
    out_root: str | Path = "results",
    storage: str | None = None,
    progress: bool = True,
) -> StudyRun:
    """Run ``spec`` and write its tables, plot and report to ``<out_root>/<study>/<run_id>/``.

    Other processes may join the run with :func:`run_worker` on the same ``storage``.
    """
    spec.validate(check_data=True)
    if spec.weights is not None:  # a missing or unfit file fails before anything is written
        shape = load_task(spec.dataset_axis[0], spec.classes, root=spec.data_root).input_shape
        for model in spec.model_axis:
            backbone_weights(model, spec.weights, shape)
    store = open_storage(storage) if storage is not None else None
    t_start = time.perf_counter()
    run_id = new_run_id()
    run_dir = _make_run_dir(out_root, spec.name, run_id)
    storage_url = storage or f"sqlite:///{(run_dir / 'optuna.db').resolve()}"
    store = store or open_storage(storage_url)
    device = _first_device(spec)
    env = environment(resolve_device(device))
    env.update(run_id=run_id, storage=redact_url(storage_url), search_seed=SEARCH_SEED,
               final_seeds=[FINAL_SEEDS + i for i in range(spec.seeds)])
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
    plan = plan_run(store, spec, run_id, pre_rows)
    _work(store, plan, None, progress)
    return _finish(store, plan, run_dir, env, spec_dict, time.perf_counter() - t_start)


def resume_study(run_dir: str | Path, storage: str | None = None, progress: bool = True) -> StudyRun:
    """Finish the run in ``run_dir`` whose process stopped: completed trials are kept, the
    interrupted ones re-queued with their parameters, the rest run, then the tables are written."""
    run_dir = Path(run_dir)
    spec_file = run_dir / "spec.json"
    if not spec_file.is_file():
        raise UserError(f"--resume {str(run_dir)!r} is not a run folder (it has no spec.json); "
                        "pass the folder results/<study>/<run_id> of the run to finish.")
    env = json.loads((run_dir / "env.json").read_text())
    storage_url = storage or f"sqlite:///{(run_dir / 'optuna.db').resolve()}"
    if storage is None and not (run_dir / "optuna.db").is_file():
        raise UserError(f"run {str(run_dir)!r} used the storage {env.get('storage')!r}; pass it "
                        "again with --storage to resume.")
    store = open_storage(storage_url)
    spec_dict = json.loads(spec_file.read_text())
    plan = find_run(store, spec_dict["name"], run_dir.name)
    if plan is None:
        raise UserError(f"run {run_dir.name!r} of study {spec_dict['name']!r} is not in the storage "
                        f"{redact_url(storage_url)!r}; pass the storage the run used with --storage.")
    t_start = time.perf_counter()
    requeued = requeue_interrupted(store, plan)
    if progress and requeued:
        print(f"{spec_dict['name']}: re-queued {requeued} interrupted trial(s)")
    _work(store, plan, None, progress)
    return _finish(store, plan, run_dir, env, spec_dict, time.perf_counter() - t_start)


def run_worker(study: str, storage: str, device: str | None = None, run_id: str | None = None,
               wait_s: float = 0.0, progress: bool = True) -> int:
    """Join a run of ``study`` in ``storage`` (the newest unfinished, or ``run_id``) and run its trials
    until none is left; returns how many this worker ran. ``device`` pins the worker to the
    cells of that device (``cuda:1`` serves ``cuda`` cells on GPU 1)."""
    if device is not None:
        resolve_device(device)
    store = open_storage(storage)
    deadline = time.monotonic() + wait_s
    while (plan := find_run(store, study, run_id, unfinished=True)) is None:
        if time.monotonic() >= deadline:
            raise UserError(f"no unfinished run of study {study!r} in the storage "
                            f"{redact_url(storage)!r}; "
                            f"start one with `python -m harness study {study} --storage URL` "
                            "(or give the worker --wait SECONDS).")
        time.sleep(0.5)
    return _work(store, plan, device, progress)


def _finish(store, plan: RunPlan, run_dir: Path, env: dict, spec_dict: dict, seconds: float) -> StudyRun:
    """Write the tables, plots and report of a finished run, all from the storage."""
    from harness.report import (
        markdown as report,  # the last stage; imported here to keep the flow one-way
    )

    rows, trial_rows = collect(store, plan)
    measurements = measurements_frame(rows)
    trials = pd.DataFrame(trial_rows)
    summary = summarize(measurements, trials)
    write_tables(run_dir, measurements, trials, summary)
    claims = evaluate_claims(plan.spec.name, load(run_dir))
    if len(claims):
        write_claims(run_dir, claims)
    report.write_reports(run_dir, seconds)
    return StudyRun(run_dir, summary, seconds, claims)
