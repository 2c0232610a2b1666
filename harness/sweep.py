"""Run a study: a grid of cells, an Optuna study per cell, seeded re-runs of each cell's best config.

Fairness: every cell gets the same number of Optuna trials, and every search trial of every
cell uses the same seed, so strategies differ only in what they do. Selection uses the
**validation** accuracy; the best config of each cell is then re-run with ``spec.seeds`` fresh
seeds, and only those runs measure the **test** split.

Storage: SQLite in the run folder by default; any Optuna storage URL otherwise. Each cell's
Optuna study is named ``<study>/<run_id>/<cell>``, so several runs can share one database.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
import pandas as pd
from tqdm.auto import tqdm

from harness._io import atomic_write_text
from harness.data import load_task
from harness.errors import UserError
from harness.execution import parse_execution
from harness.measure import environment
from harness.pretrain import Pretrained, pretrained_backbone, recipe_key
from harness.registry import STRATEGIES
from harness.spec import StudySpec, TrialConfig, budget_label, resolve_device
from harness.strategy import Strategy
from harness.tables import Measurement, measurements_frame, summarize, write_csv
from harness.trial import TrialContext, TrialResult, failed_trial, run_trial

__all__ = ["FINAL_SEEDS", "SEARCH_SEED", "StudyRun", "redact_url", "run_study"]

SEARCH_SEED = 0  # every search trial of every cell: configs differ, initialisation and order do not
FINAL_SEEDS = 1000  # re-runs use FINAL_SEEDS + i, never the search seed


@dataclass(frozen=True)
class StudyRun:
    run_dir: Path
    summary: pd.DataFrame
    seconds: float


def startup_trials(trials: int) -> int:
    """Random trials before TPE models the results: Optuna's default of 10 would leave a
    10-trial search purely random, so a third of the budget, at least 2 and at most 10."""
    return min(10, max(2, trials // 3))


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The study's pruner; both judge validation accuracy reported after each epoch."""
    if spec.pruner == "none":
        return optuna.pruners.NopPruner()
    if spec.pruner == "hyperband":
        # epochs are the resource; no trial is stopped before a second of its epochs
        return optuna.pruners.HyperbandPruner(min_resource=max(1, spec.epochs // 4),
                                              max_resource=spec.epochs, reduction_factor=3)
    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials(spec.trials),
                                       n_warmup_steps=spec.epochs // 2)


def make_sampler(spec: StudySpec, strategy: str) -> optuna.samplers.BaseSampler:
    """The cell's sampler, seeded so that a study repeats its search."""
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.sampler_seed)
    if spec.sampler == "grid":
        grid = {k: list(v) for k, v in spec.grid[strategy].items()}
        return optuna.samplers.GridSampler(grid, seed=spec.sampler_seed)
    return optuna.samplers.TPESampler(seed=spec.sampler_seed,
                                      n_startup_trials=startup_trials(spec.trials))


def _check_storage(url: str) -> None:
    try:
        optuna.storages.get_storage(url)
    except Exception as e:  # noqa: BLE001 - any driver or URL error is the user's to fix
        raise UserError(f"cannot open Optuna storage {redact_url(url)!r}: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}; pass a URL such as "
                        "sqlite:///path/to.db or postgresql://user:pass@host/db.") from None


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


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs, tables and reports."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _pretrain_rows(run_id: str, spec: StudySpec, pre: Pretrained) -> list[Measurement]:
    r = pre.recipe
    base = Measurement(
        run_id=run_id, study=spec.name, cell="pretrain", stage="pretrain", trial=0, phase="pretrain",
        strategy="pretrain", dataset=r.dataset, model=r.model, budget="all", device=spec.device,
        execution="eager", seed=r.seed, split="source_val", metric="accuracy",
        value=pre.source_val_accuracy, unit="fraction", epoch=None, status="ok",
    )
    return [base, replace(base, split="train", metric="pretrain_time_s", value=pre.seconds, unit="s"),
            replace(base, split="train", metric="loaded_from_cache", value=float(pre.cached), unit="bool")]


@dataclass(frozen=True)
class _Cell:
    """One cell's Optuna objective: every trial, failed ones included, goes to ``collect``."""

    template: TrialConfig
    ctx: TrialContext
    strategy: Strategy
    collect: Callable[[TrialResult], None]

    def objective(self, trial: optuna.Trial) -> float:
        try:
            hp = self.strategy.search_space(trial)
        except Exception as e:  # noqa: BLE001 - e.g. an enqueued value outside a log-scale range
            res = failed_trial(replace(self.template, trial=trial.number, hp=dict(trial.params)),
                               self.ctx, f"{type(e).__name__} in search_space: {e}")
            self.collect(res)
            trial.set_user_attr("error", res.error)
            return float("nan")
        trial.set_user_attr("hp", hp)

        def report_epoch(rec) -> None:
            trial.report(rec.val_accuracy, rec.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        res = run_trial(replace(self.template, trial=trial.number, hp=hp), self.ctx, report_epoch)
        self.collect(res)
        trial.set_user_attr("status", res.status)
        if res.error:
            trial.set_user_attr("error", res.error)
        if res.status == "pruned":
            raise optuna.TrialPruned()
        return res.val_accuracy  # NaN for a failed trial: Optuna marks it FAIL and goes on


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
    row.update({f"param_{k}": v for k, v in c.hp.items()})
    return row


def run_study(
    spec: StudySpec,
    out_root: str | Path = "results",
    storage: str | None = None,
    progress: bool = True,
) -> StudyRun:
    """Run ``spec`` and write its tables, plot and report to ``<out_root>/<study>/<run_id>/``."""
    from harness import plots, report  # the last stages; imported here to keep the flow one-way

    spec.validate(check_data=True)
    device = resolve_device(spec.device)
    if storage is not None:
        _check_storage(storage)
    t_start = time.perf_counter()
    run_id = new_run_id()
    run_dir = _make_run_dir(out_root, spec.name, run_id)
    storage_url = storage or f"sqlite:///{(run_dir / 'optuna.db').resolve()}"
    env = environment(device)
    env.update(run_id=run_id, storage=redact_url(storage_url), search_seed=SEARCH_SEED,
               final_seeds=[FINAL_SEEDS + i for i in range(spec.seeds)])
    atomic_write_text(run_dir / "env.json", json.dumps(env, indent=2, default=str))
    spec_dict = spec.to_dict()
    if spec.pretrain is not None:
        spec_dict["pretrain_key"] = recipe_key(spec.pretrain)
    atomic_write_text(run_dir / "spec.json", json.dumps(spec_dict, indent=2))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows: list[Measurement] = []
    trial_rows: list[dict] = []
    pre = None
    if spec.pretrain is not None:
        pre = pretrained_backbone(spec.pretrain, device)
        rows += _pretrain_rows(run_id, spec, pre)

    compiles = any(parse_execution(e).compile for e in spec.executions)
    with fresh_compile_cache(compiles):
        bar = tqdm(total=len(spec.cells()) * (spec.trials + spec.seeds), desc=spec.name,
                   unit="trial", disable=not progress)
        tasks = {}

        def collect(res: TrialResult) -> None:
            rows.extend(res.records)
            trial_rows.append(_trial_row(res))
            bar.set_postfix_str(f"{res.config.cell} {res.status} val={res.val_accuracy:.3f}")
            bar.update()

        for budget, strategy_name, execution in spec.cells():
            if budget not in tasks:
                tasks[budget] = load_task(spec.dataset, spec.classes, budget, device)
            ctx = TrialContext(run_id, tasks[budget], pre.state_dict if pre else None)
            cell = spec.cell_id(budget, strategy_name, execution)
            strategy = STRATEGIES.get(strategy_name)()
            template = TrialConfig(
                study=spec.name, cell=cell, stage="search", trial=0, seed=SEARCH_SEED,
                strategy=strategy_name, hp={}, dataset=spec.dataset, classes=spec.classes, shots=budget,
                model=spec.model, device=spec.device, execution=execution, epochs=spec.epochs,
                batch_size=spec.batch_size, target_accuracy=spec.target_accuracy,
            )

            cell_run = _Cell(template, ctx, strategy, collect)
            study = optuna.create_study(
                storage=storage_url, study_name=f"{spec.name}/{run_id}/{cell}", direction="maximize",
                sampler=make_sampler(spec, strategy_name),
                pruner=make_pruner(spec),
            )
            if strategy_name in spec.enqueue:
                study.enqueue_trial(dict(spec.enqueue[strategy_name]))
            study.optimize(cell_run.objective, n_trials=spec.trials)
            done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
            if not done:
                bar.update(spec.seeds)  # nothing to re-run: the cell shows as failed in the tables
                continue
            best_hp = study.best_trial.user_attrs["hp"]
            for i in range(spec.seeds):
                collect(run_trial(replace(template, stage="final", trial=i, seed=FINAL_SEEDS + i,
                                          hp=best_hp), ctx))
        bar.close()

    measurements = measurements_frame(rows)
    trials = pd.DataFrame(trial_rows)
    summary = summarize(measurements, trials)
    write_csv(run_dir / "measurements.csv", measurements)
    write_csv(run_dir / "trials.csv", trials)
    write_csv(run_dir / "summary.csv", summary)
    plots.write_all(run_dir, measurements, summary)
    seconds = time.perf_counter() - t_start
    report.write_markdown(run_dir, spec_dict, env, summary, measurements, seconds)
    return StudyRun(run_dir, summary, seconds)
