"""Run a study: a grid of cells, an Optuna study per cell, seeded re-runs of each cell's best config.

Fairness: every cell gets the same number of Optuna trials, and every search trial of every
cell uses the same seed, so strategies differ only in what they do. Selection uses the
**validation** accuracy; the best config of each cell is then re-run with ``spec.seeds`` fresh
seeds, and only those runs measure the **test** split.

This module owns how a trial runs: its sampler, pruner, task, backbone weights and objectives
(``_Worker``, a :class:`~harness.run.queue.TrialRunner`). The run's plan, queue and records live
in its Optuna storage, owned by :mod:`harness.run.queue`: SQLite in the run folder by default, a
journal file or PostgreSQL for workers. :func:`work` is one process's share of a run (the study
process's, or a :func:`run_worker`'s); planning the run and writing its files is
:mod:`harness.pipeline`.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from tqdm.auto import tqdm

from harness.config.execution import parse_execution
from harness.config.spec import StudySpec, TrialConfig, budget_label, resolve_device
from harness.data.task import load_task
from harness.errors import UserError
from harness.models.torchvision import backbone_weights
from harness.registry import STRATEGIES
from harness.run.queue import (
    Cell,
    Outcome,
    RunPlan,
    find_run,
    missing_storage,
    open_storage,
    redact_url,
    run_trials,
)
from harness.run.records import TrialRow
from harness.run.trial import TrialContext, TrialResult, failed_trial, run_trial
from harness.train.pretrain import pretrained_backbone

__all__ = ["FINAL_SEEDS", "SEARCH_SEED", "Jobs", "choose_jobs", "local_workers", "make_pruner",
           "make_sampler", "run_compile_cache", "run_worker", "usable_cores", "work"]

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the tables and the progress bar say it all

SEARCH_SEED = 0  # every search trial of every cell: configs differ, initialisation and order do not
FINAL_SEEDS = 1000  # re-runs use FINAL_SEEDS + i, never the search seed


def startup_trials(trials: int) -> int:
    """Random trials before TPE models the results: Optuna's default of 10 would leave a
    10-trial search purely random, so a third of the budget, at least 2 and at most 10."""
    return min(10, max(2, trials // 3))


def _warmup(spec: StudySpec) -> int:
    """Epochs before any pruner may judge a trial: a quarter of them, at least one."""
    return max(1, spec.epochs // 4)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The study's pruner; both judge validation accuracy reported after each epoch."""
    if spec.pruning == "none":
        return optuna.pruners.NopPruner()
    if spec.pruning == "hyperband":
        # epochs are the resource; no trial is stopped before a second of its epochs
        return optuna.pruners.HyperbandPruner(min_resource=_warmup(spec),
                                              max_resource=spec.epochs, reduction_factor=3)
    warmup = _warmup(spec)
    if spec.pruning == "sha":
        # rungs at a quarter and three quarters of the epochs: the best third goes on from each
        # (the first trials at a rung go on only if the best there so far)
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=warmup, reduction_factor=3)
    # trials are compared within their cell (one strategy), so a phased strategy's slow start
    # is shared by every trial it is judged against; a quarter of the epochs is enough warm-up
    if spec.pruning == "percentile":  # Optuna's percentile counts from the best: 100/3 keeps
        return optuna.pruners.PercentilePruner(  # the best third
            100 / 3, n_startup_trials=startup_trials(spec.trials), n_warmup_steps=warmup)
    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials(spec.trials),
                                       n_warmup_steps=warmup)


def first_pruning_epoch(spec: StudySpec) -> float:
    """The first epoch the study's pruner can stop a trial at: asking it earlier only costs a
    storage read per epoch (the warm-up of median, percentile and sha; Hyperband decides at every rung;
    no pruner: never)."""
    if spec.pruning == "none":
        return math.inf
    return 0 if spec.pruning == "hyperband" else _warmup(spec)


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


def _compiles(plan: RunPlan) -> bool:
    return any(parse_execution(c.execution).compile for c in plan.cells if not c.skipped)


@contextlib.contextmanager
def run_compile_cache(plan: RunPlan) -> Iterator[str | None]:
    """An empty inductor cache folder for the whole run (None when no cell compiles), removed
    at its end: every process of the run on this machine compiles into it, so each graph is
    compiled cold once per run, whichever process meets it first, and warm after that."""
    if not _compiles(plan):
        yield None
        return
    path = tempfile.mkdtemp(prefix="harness-inductor-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def fresh_compile_cache(enabled: bool, path: str | None = None):
    """Point inductor (its FX graph and AOT autograd caches) at ``path``, the run's cache, or
    at an empty folder of this process's own, so the run's first compile of each graph is cold.

    Without it, graphs compiled by any earlier process come from the on-disk cache and compile
    time reads ~0.2 s where a user's first run pays ~13 s. Later trials of the run hit this
    run's cache: ``compile_cache_misses`` and ``compile_cache_hits`` in the measurements tell
    the cold compile from the warm ones.
    """
    if not enabled:
        yield
        return
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    own = path is None
    path = tempfile.mkdtemp(prefix="harness-inductor-") if own else path
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = old
        if own:
            shutil.rmtree(path, ignore_errors=True)


class _Worker:
    """One process's side of a run, the :class:`~harness.run.queue.TrialRunner` of the commands:
    the search's samplers and pruner, its tasks and backbone weights (built once per device),
    running the trials the queue pops, and the progress bar."""

    def __init__(self, plan: RunPlan, device: str | None = None, progress: bool = False) -> None:
        self.plan = plan
        self.spec = plan.spec
        self.device = device  # None: each cell on its own device
        self._tasks: dict = {}
        self._pre: dict = {}  # model -> its backbone state dict (pretrained or loaded)
        self.bar = tqdm(total=sum(0 if c.skipped else self.spec.trials + self.spec.seeds
                                  for c in plan.cells),
                        desc=self.spec.name, unit="trial", disable=not progress)

    def sampler(self, cell: Cell, number: int) -> optuna.samplers.BaseSampler:
        return make_sampler(self.spec, cell.strategy, number)

    def pruner(self) -> optuna.pruners.BasePruner:
        return make_pruner(self.spec)

    def search(self, cell: Cell, trial: optuna.Trial) -> Outcome:
        cfg = replace(self._template(cell), trial=trial.number)
        # Optuna prunes single-objective studies only
        prune_from = first_pruning_epoch(self.spec) if len(self.spec.objectives) == 1 else None
        res = _search_trial(cfg, self._context(cfg.device, cell), trial, prune_from)
        values = [res.val_accuracy]
        if "throughput" in self.spec.objectives:
            values.append(_train_throughput(res))
        out = self._outcome(cell, res, values)
        # a grid's points are the study's protocol, not a searched range: no edge to flag
        grid = self.spec.sampler == "grid"
        limits = STRATEGIES.get(cell.strategy).limits
        edge = "" if grid else edge_of_range(trial.params, trial.distributions, limits=limits)
        return replace(out, row=replace(out.row, edge_of_range=edge))

    def final(self, cell: Cell, number: int, index: int, hp: Mapping[str, Any] | None,
              why: str) -> Outcome:
        cfg = replace(self._template(cell), stage="final", trial=number, seed=FINAL_SEEDS + index)
        ctx = self._context(cfg.device, cell)
        res = run_trial(replace(cfg, hp=hp), ctx) if hp is not None else failed_trial(cfg, ctx, why)
        return self._outcome(cell, res, [res.test_accuracy])

    def _outcome(self, cell: Cell, res: TrialResult, values: list[float]) -> Outcome:
        self.bar.set_postfix_str(f"{cell.id} {res.status} val={res.val_accuracy:.3f}")
        self.bar.update()
        return Outcome(_trial_row(res), res.records, values if res.status == "ok" else None)

    def _context(self, device: str, cell: Cell) -> TrialContext:
        spec = self.spec
        task = self._task(device, cell)
        if cell.model not in self._pre:
            if spec.pretrain is not None:
                recipe = replace(spec.pretrain, model=cell.model)
                self._pre[cell.model] = pretrained_backbone(recipe, device).state_dict
            elif spec.weights is not None:
                self._pre[cell.model] = backbone_weights(cell.model, spec.weights, task.input_shape)
            else:
                self._pre[cell.model] = None
        return TrialContext(self.plan.run_id, task, self._pre[cell.model], self._source(device))

    def _source(self, device: str):
        """The pretraining task's validation split (forgetting is measured on it), or None.

        None too for a language-model recipe: its next-token head is not kept with the
        checkpoint, and the classifier head stored beside the body never trained, so accuracy
        "under the source head" would be chance whatever the strategy did (measured: 19-20% for
        every strategy of text_finetune, the frozen probe included)."""
        spec = self.spec
        if spec.pretrain is None or spec.pretrain.objective == "lm":
            return None
        key = device, "source"
        if key not in self._tasks:
            self._tasks[key] = load_task(spec.pretrain.dataset, spec.pretrain.classes, device=device,
                                         root=spec.data_root)
        return self._tasks[key].val

    def _task(self, device: str, cell: Cell):
        spec = self.spec
        key = device, cell.dataset, cell.budget
        if key not in self._tasks:
            self._tasks[key] = load_task(cell.dataset, spec.classes, cell.budget, device,
                                         root=spec.data_root, ood=spec.ood, loader=spec.loader,
                                         val_shots=spec.val_per_class)
        return self._tasks[key]

    def _template(self, cell: Cell) -> TrialConfig:
        spec = self.spec
        device = self.device or cell.device
        return TrialConfig(
            study=spec.name, cell=cell.id, stage="search", trial=0, seed=SEARCH_SEED,
            strategy=cell.strategy, hp={}, dataset=cell.dataset, classes=spec.classes,
            shots=cell.budget, model=cell.model, device=device, execution=cell.execution,
            epochs=epochs_for(spec, len(self._task(device, cell).train)), batch_size=spec.batch_size,
            target_accuracy=spec.target_accuracy, data_root=spec.data_root, ood=spec.ood,
            loader=spec.loader, loader_workers=spec.loader_workers, weights=spec.weights,
            deploy=spec.deploy,
        )


def epochs_for(spec: StudySpec, n_train: int) -> int:
    """The epochs a trial of ``n_train`` labelled examples trains: the study's, or more when
    ``min_steps`` asks for at least that many optimisation steps (small budgets, few steps)."""
    if spec.min_steps is None:
        return spec.epochs
    steps_per_epoch = n_train // min(spec.batch_size, n_train)
    return max(spec.epochs, math.ceil(spec.min_steps / steps_per_epoch))


def edge_of_range(params: Mapping[str, Any], distributions: Mapping[str, Any],
                  margin: float = 0.05, limits: Mapping[str, str] | None = None) -> str:
    """The numeric hyperparameters within the outer ``margin`` of their searched range (log
    scale where searched log), e.g. ``"lr=0.97 top of [0.001, 1] log"``; "" when none is.

    A best config there is a flag, not a result: the optimum may lie outside the range. An
    edge named in ``limits`` (``{"weight_decay": "bottom"}``: the strategy's ``limits``) is the
    hyperparameter's own limit, beyond which nothing changes: never flagged.
    """
    limits = limits or {}
    flags = []
    for name, dist in distributions.items():
        low, high = getattr(dist, "low", None), getattr(dist, "high", None)
        value = params.get(name)
        if low is None or high is None or high <= low or isinstance(value, bool) or value is None:
            continue
        log = bool(getattr(dist, "log", False))
        scale = math.log if log else float
        pos = (scale(value) - scale(low)) / (scale(high) - scale(low))
        if pos <= margin or pos >= 1 - margin:
            side = "bottom" if pos <= margin else "top"
            if limits.get(name) == side:
                continue
            flags.append(f"{name}={value:.3g} {side} of [{low:g}, {high:g}]" + (" log" if log else ""))
    return "; ".join(flags)


def _train_throughput(res: TrialResult) -> float:
    """The trial's steady-state training samples/s over the whole run (NaN when not measured)."""
    for r in res.records:
        if r.metric == "samples_per_s" and r.phase == "all" and r.split == "train":
            return r.value
    return float("nan")


def _search_trial(cfg: TrialConfig, ctx: TrialContext, trial: optuna.Trial,
                  prune_from: float | None) -> TrialResult:
    strategy = STRATEGIES.get(cfg.strategy)()
    try:
        hp = strategy.search_space(trial)
    except Exception as e:  # noqa: BLE001 - e.g. an enqueued value outside a log-scale range
        return failed_trial(replace(cfg, hp=dict(trial.params)), ctx,
                            f"{type(e).__name__} in search_space: {e}")
    trial.set_user_attr("hp", hp)  # what best_config hands the final re-runs

    def report_epoch(rec) -> None:
        # every epoch is reported (later trials are judged against it, and it shows progress);
        # the pruner is asked only from the first epoch it can stop a trial at
        if prune_from is not None:
            trial.report(rec.val_accuracy, rec.epoch)
            if rec.epoch >= prune_from and trial.should_prune():
                raise optuna.TrialPruned()

    return run_trial(replace(cfg, hp=hp), ctx, report_epoch)


def _trial_row(res: TrialResult) -> TrialRow:
    """The trials-table row of a trial that ran; the queue adds the worker and what it knows."""
    c = res.config
    return TrialRow(
        run_id=res.records[0].run_id if res.records else "", study=c.study, cell=c.cell,
        stage=c.stage, trial=c.trial, seed=c.seed, strategy=c.strategy, budget=budget_label(c.shots),
        dataset=c.dataset, model=c.model, device=c.device, execution=c.execution, status=res.status,
        error=res.error, bn_mode=res.bn_mode, val_accuracy=res.val_accuracy,
        test_accuracy=res.test_accuracy, seconds=res.seconds, hp=dict(c.hp),
        ood_accuracy=dict(res.ood_accuracy), source_accuracy=res.source_accuracy,
    )


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """``torch.set_num_threads(n)`` while the block runs (unchanged when None)."""
    import torch

    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def work(storage, plan: RunPlan, device: str | None, progress: bool, threads: int | None = None,
         compile_cache: str | None = None) -> int:
    """This process's share of the run in ``storage``: run trials until none is left; returns how
    many. ``threads``: torch's intra-op threads meanwhile; ``compile_cache``: the run's inductor
    cache folder shared with its other processes (None: a fresh one of this process's own)."""
    worker = _Worker(plan, device, progress)
    with fresh_compile_cache(_compiles(plan), compile_cache), torch_threads(threads):
        try:
            return run_trials(storage, plan, worker, device=device)
        finally:
            worker.bar.close()


def run_worker(study: str, storage: str, device: str | None = None, run_id: str | None = None,
               wait_s: float = 0.0, progress: bool = True, threads: int | None = None,
               compile_cache: str | None = None) -> int:
    """Join a run of ``study`` in ``storage`` (the newest unfinished, or ``run_id``) and run its trials
    until none is left; returns how many this worker ran. ``device`` pins the worker to the
    cells of that device (``cuda:1`` serves ``cuda`` cells on GPU 1).

    A worker never creates a storage: a journal or SQLite file that is not there (a mistyped
    path) is a :class:`UserError` once ``wait_s`` has passed, and nothing is written.
    """
    if device is not None:
        resolve_device(device)
    deadline = time.monotonic() + wait_s
    while (missing := missing_storage(storage)) is not None:
        if time.monotonic() >= deadline:
            raise UserError(f"the storage {redact_url(storage)!r} does not exist (no file "
                            f"{missing!r}); a worker joins a run and never creates one: check "
                            f"the path, or start the run first with `python -m harness study "
                            f"{study} --storage URL` (or give the worker --wait SECONDS).")
        time.sleep(0.5)
    store = open_storage(storage)
    while (plan := find_run(store, study, run_id, unfinished=True)) is None:
        if run_id is not None and find_run(store, study, run_id) is not None:
            return 0  # the run it was sent to has finished: nothing left to do (a late start)
        if time.monotonic() >= deadline:
            raise UserError(f"no unfinished run of study {study!r} in the storage "
                            f"{redact_url(storage)!r}; "
                            f"start one with `python -m harness study {study} --storage URL` "
                            "(or give the worker --wait SECONDS).")
        time.sleep(0.5)
    return work(store, plan, device, progress, threads, compile_cache)


# --- several local processes on one run: `study --jobs N` -----------------------------------

SMALL_MODEL = 5_000_000  # parameters: below it, one thread per trial does ~as well as several
JOB_TRIALS = 20  # trials per process at least: starting one (imports, data) costs a few seconds
# Cores per process: how a model's step scales with threads decides, and it differs by kind.
# finetune_vs_probe's small CNN steps 1.8x faster on 2 threads than on 1, so one process with 2
# threads ran it 11% faster than two single-threaded ones (229 s against 257 s); peft_vs_full's
# tiny ViT steps only 1.18x faster, so one process took 1,036 s where two took 619 s. So
# convolutional studies get two cores a process, and a study with any attention model one; so
# does a study with compiled cells, whose inductor compiles are mostly single-threaded Python.
CORES_PER_JOB = {"convolutional": 2, "attention": 1, "compiled": 1}
STOP_S = 30.0  # how long stopped workers get to give their trial back before they are killed


@dataclass(frozen=True)
class Jobs:
    """How many processes work on a run on this machine, torch threads each, and why."""

    jobs: int
    threads: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"jobs": self.jobs, "threads_per_job": self.threads, "jobs_reason": self.reason}


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _has_attention(model) -> bool:
    return any(type(m).__name__.endswith("Attention") for m in model.modules())


def _largest_model(spec: StudySpec) -> tuple[str, int | None, bool]:
    """The study's largest backbone, its parameters (None when it cannot be built on the meta
    device, counted as large) and whether any of its backbones has attention layers (a module
    class named ``*Attention``: the harness's ViT and text models, timm's, torch's
    ``MultiheadAttention``), built without memory or weights."""
    import torch

    from harness.models.core import build_model

    sizes, attention = {}, False
    for name in spec.model_axis:
        try:
            with torch.device("meta"):
                model = build_model(name, 3, len(spec.classes or (0, 1)))
            sizes[name] = sum(p.numel() for p in model.parameters())
            attention = attention or _has_attention(model)
        except Exception:  # noqa: BLE001 - a backbone that needs more than this: count it as large
            return name, None, attention
    name = max(sizes, key=sizes.get)
    return name, sizes[name], attention


def choose_jobs(spec: StudySpec, jobs: int | None, threads: int | None = None) -> Jobs:
    """The processes and threads per process of a run on this machine.

    Given ``jobs``: that many, sharing the cores. Else one process, unless every cell runs on
    the CPU with a small backbone: then one process per two cores for convolutional backbones
    (one process with every thread on 2 cores), per core where a backbone has attention layers
    or a cell compiles (``CORES_PER_JOB``), at most one per cell (a cell's search runs its
    trials in order) and per ``JOB_TRIALS`` trials.
    """
    import torch

    cores = usable_cores()

    def each(n: int) -> int:  # one process keeps torch's own choice (physical cores)
        return threads or (torch.get_num_threads() if n == 1 else max(1, cores // n))

    if jobs is not None:
        return Jobs(jobs, each(jobs), f"--jobs {jobs}, {cores} cores")
    skipped = spec.skipped_cells()
    cells = [c for c in spec.cells() if (c[0], c[5]) not in skipped]
    devices = {c[0] for c in cells}
    if devices - {"cpu"}:
        return Jobs(1, each(1), f"auto: cells on {', '.join(sorted(devices))}, "
                                         "one process per accelerator")
    model, size, attention = _largest_model(spec)
    if size is None or size >= SMALL_MODEL:
        return Jobs(1, each(1), f"auto: {model} is large; its trials use every core")
    compiled = any(parse_execution(e).compile for e in spec.executions)
    kind = "attention" if attention else "compiled" if compiled else "convolutional"
    trials = len(cells) * (spec.trials + spec.seeds)
    n = max(1, min(cores // CORES_PER_JOB[kind], len(cells), trials // JOB_TRIALS))
    return Jobs(n, each(n),
                f"auto: {cores} cores, {len(cells)} cells, {trials} trials, largest model "
                f"{model} ({size / 1e6:.2f}M parameters), {kind}: "
                f"{CORES_PER_JOB[kind]} core(s) a process")


@contextlib.contextmanager
def local_workers(study: str, storage_url: str, run_id: str, n: int, threads: int,
                  compile_cache: str | None, log_dir: Path) -> Iterator[list[subprocess.Popen]]:
    """``n`` ``python -m harness worker`` processes on run ``run_id`` while the block runs.

    They stop by themselves once the run has no trial left; the block's end waits for them.
    When the block raises (Ctrl-C, SIGTERM), each gets a SIGTERM, gives its running trial back
    (failed "interrupted" and re-queued) and exits; one that does not within ``STOP_S`` is
    killed (its trial's heartbeat stops, so it is re-queued all the same). None outlives it.
    The storage URL travels in the environment, never on a command line ``ps`` shows.
    """
    root = str(Path(__file__).resolve().parents[2])  # the harness and its plug-in folders
    env = os.environ | {"HARNESS_JOB_STORAGE": storage_url,
                        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "harness", "worker", study, "--storage", "env:HARNESS_JOB_STORAGE",
           "--run", run_id, "--threads", str(threads), "--quiet"]
    if compile_cache is not None:
        cmd += ["--compile-cache", compile_cache]
    procs: list[subprocess.Popen] = []
    if n < 1:
        yield procs
        return
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            with open(log_dir / f"worker-{i + 1}.log", "w") as log:
                procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
        yield procs
    except BaseException:
        _stop_workers(procs, signal.SIGTERM)
        raise
    _wait_workers(procs, log_dir)


def _stop_workers(procs: list[subprocess.Popen], sig: int) -> None:
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(sig)
    deadline = time.monotonic() + STOP_S
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _wait_workers(procs: list[subprocess.Popen], log_dir: Path) -> None:
    """Wait for workers whose run has no trial left; a worker that failed is said in one line
    (its trials were re-queued and run by the others)."""
    for i, p in enumerate(procs):
        try:
            code = p.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            _stop_workers([p], signal.SIGTERM)
            code = p.returncode
        if code != 0:
            print(f"warning: local worker {i + 1} exited with {code}; its trials ran elsewhere; "
                  f"see {log_dir / f'worker-{i + 1}.log'}", file=sys.stderr)
