"""Run one :class:`~harness.config.spec.TrialConfig`; every failure becomes a status and a reason.

A trial builds the backbone (with the pretrained weights and a fresh head when the study has a
source task), asks the strategy for its plan, trains it with the one loop under
:class:`~harness.measure.memory.PeakMemory`, and turns what happened into :class:`Measurement` rows.
A raised exception, a NaN loss or an out-of-memory error gives ``status="failed"`` and the
error text; Optuna's pruning gives ``status="pruned"``. Test accuracy, and the accuracy on
every out-of-distribution set of the task (rows with ``split="ood:<name>"``), is measured only
for ``stage="final"`` runs: selection never sees the test split or an OOD set.

Final runs of a study with a pretrained backbone and OOD sets also measure feature distortion
(Kumar et al. 2022): how far training moved the backbone's features (the head's input) from the
pretrained ones, on the test split and on every OOD set (:func:`feature_distortion`).

Final runs of a study that pretrains its backbone also measure forgetting (:func:`source_accuracy`):
the fine-tuned body (adapters and prompts included) under the pretrained model's own head, on the
pretraining task's validation split (rows ``metric="accuracy", split="source"``).
"""

from __future__ import annotations

import copy
import os
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import optuna
import torch

from harness.config.execution import AMP_DTYPES, parse_execution
from harness.config.spec import TrialConfig, budget_label
from harness.data.core import Split, Task
from harness.measure.deploy import deployment, memory_split
from harness.measure.env import device_name
from harness.measure.flops import datasheet_peak, empirical_peak
from harness.measure.memory import release_free_memory
from harness.models.core import build_model, count_parameters, replace_head
from harness.registry import STRATEGIES
from harness.run.records import Measurement
from harness.train.evaluation import evaluate, logits_in_batches
from harness.train.loop import EpochRecord, LoopConfig, LoopResult, train
from harness.train.strategy import build_plan

__all__ = ["TrialContext", "TrialResult", "build_trial_model", "failed_trial", "feature_distortion",
           "run_trial", "source_accuracy"]


@dataclass(frozen=True)
class TrialContext:
    """What the trials of one cell share: the run's id, the task on the device, the backbone weights."""

    run_id: str
    task: Task
    pretrained: dict[str, torch.Tensor] | None = None
    source: Split | None = None  # the pretraining task's validation split: forgetting


@dataclass(frozen=True)
class TrialResult:
    config: TrialConfig
    status: str  # "ok", "pruned" or "failed"
    error: str
    val_accuracy: float  # after the last completed epoch; NaN when none completed
    test_accuracy: float | None  # final runs only
    seconds: float
    bn_mode: str
    records: tuple[Measurement, ...]
    ood_accuracy: Mapping[str, float] = field(default_factory=dict)  # final runs: OOD set -> accuracy
    # final runs with a pretrained backbone and OOD sets: "test" / "ood:<name>" -> distortion
    feature_distortion: Mapping[str, float] = field(default_factory=dict)
    source_accuracy: float | None = None  # final runs with a source task: after fine-tuning


def build_trial_model(cfg: TrialConfig, ctx: TrialContext) -> torch.nn.Sequential:
    """The trial's model: seeded, pretrained weights loaded, a fresh head for the target classes."""
    torch.manual_seed(cfg.seed)
    task = ctx.task
    size = task.input_shape[-1]  # reaches only the backbones that need it (ViT)
    if ctx.pretrained is None:
        model = build_model(cfg.model, task.input_shape[0], task.n_classes, image_size=size)
    else:
        n_source = ctx.pretrained["head.weight"].shape[0]
        model = build_model(cfg.model, task.input_shape[0], n_source, image_size=size)
        model.load_state_dict(ctx.pretrained)
        replace_head(model, task.n_classes)
    return model.to(task.device)


@dataclass
class _Outcome:
    """What a trial got as far as it went (a failure keeps what came before it)."""

    epochs: list[EpochRecord] = field(default_factory=list)
    bn_mode: str = ""
    result: LoopResult | None = None
    n_trainable: int = 0
    test_acc: float | None = None
    ood_acc: dict[str, float] = field(default_factory=dict)
    distortion: dict[str, float] = field(default_factory=dict)
    source_acc: float | None = None
    # memory split per phase; final runs also stored bytes, merge, export, latency (deploy.py)
    deploy: list[dict] = field(default_factory=list)


def run_trial(
    cfg: TrialConfig,
    ctx: TrialContext,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> TrialResult:
    """Train and measure ``cfg``; never raises except for KeyboardInterrupt."""
    t0 = time.perf_counter()
    load_1m = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    out = _Outcome()
    status, error = "ok", ""
    try:
        _train_and_evaluate(cfg, ctx, out, on_epoch)
    except optuna.TrialPruned:
        status = "pruned"
    except Exception as e:  # noqa: BLE001 - a failed trial is a row, not a crash of the study
        status = "failed"
        error = f"{type(e).__name__}: {e}".strip()
        if not str(e):
            error += " " + traceback.format_exc(limit=-1).strip().splitlines()[-1]
    seconds = time.perf_counter() - t0
    # a failed run's last accuracy must never reach selection: NaN makes Optuna mark it FAIL
    val_acc = out.epochs[-1].val_accuracy if out.epochs and status != "failed" else float("nan")
    records = _records(cfg, ctx, status, out.epochs, out.result, out.test_acc, seconds,
                       out.n_trainable, out.ood_acc, out.distortion, out.source_acc)
    records.append(replace(records[-1], metric="loadavg_1m", value=load_1m, unit="1"))
    # whole-run rows on the split deploy.py gives them (training memory: train; stored and
    # served: deploy)
    records += [replace(records[-1], epoch=None, **{"phase": "all", **row,
                                                     "value": float(row["value"])})
                for row in out.deploy]
    return TrialResult(cfg, status, error, val_acc, out.test_acc, seconds, out.bn_mode,
                       tuple(records), out.ood_acc, out.distortion, out.source_acc)


def _train_and_evaluate(cfg: TrialConfig, ctx: TrialContext, out: _Outcome,
                        on_epoch: Callable[[EpochRecord], None] | None) -> None:
    """Build the model and the strategy's plan, train, and (final runs) evaluate test and OOD."""

    def record_epoch(rec: EpochRecord) -> None:
        out.epochs.append(rec)
        if on_epoch is not None:
            on_epoch(rec)

    strategy = STRATEGIES.get(cfg.strategy)()
    model = build_trial_model(cfg, ctx)
    model, plan = build_plan(cfg.strategy, strategy, model, cfg.hp, cfg.epochs)
    out.bn_mode = plan.bn_modes
    execution = parse_execution(cfg.execution)
    if execution.compile:
        # every trial compiles from a clean slate: its compile time is its own, and no
        # trial inherits another's graphs or runs into dynamo's recompile limit (dynamo is
        # imported here, not with the module: an eager run never pays its 2 s)
        import torch._dynamo

        torch._dynamo.reset()
    loop_cfg = LoopConfig(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=float(cfg.hp["lr"]),
        weight_decay=float(cfg.hp.get("weight_decay", 0.0)), seed=cfg.seed,
        execution=execution, loader=cfg.loader, loader_workers=cfg.loader_workers,
    )
    release_free_memory()  # earlier trials' garbage must not count as this trial's memory
    out.result = train(model, plan, ctx.task.train, ctx.task.val, loop_cfg, record_epoch)
    out.n_trainable = count_parameters(model, trainable_only=True)
    out.deploy = memory_split(model, plan, out.result)
    if cfg.stage == "final":  # stored bytes; with deploy, a merge, an export and timed passes
        out.deploy += deployment(model, plan, ctx.task.test.x[:64], serve=cfg.deploy)
    if cfg.stage == "final":
        out.test_acc, _ = evaluate(model, ctx.task.test)
        out.ood_acc = _ood_accuracy(model, cfg, ctx.task)
        if ctx.pretrained is not None and cfg.ood:
            splits = {"test": ctx.task.test,
                      **{f"ood:{name}": split for name, split in ctx.task.ood.items()}}
            out.distortion = feature_distortion(model, ctx.pretrained, splits)
        if ctx.pretrained is not None and ctx.source is not None:
            out.source_acc = source_accuracy(model, ctx.pretrained, ctx.source)


def failed_trial(cfg: TrialConfig, ctx: TrialContext, error: str) -> TrialResult:
    """A trial that failed before it could train (for example, its hyperparameters were invalid)."""
    records = _records(cfg, ctx, "failed", [], None, None, 0.0, 0)
    return TrialResult(cfg, "failed", error, float("nan"), None, 0.0, "", tuple(records))


def _ood_accuracy(model: torch.nn.Module, cfg: TrialConfig, task: Task) -> dict[str, float]:
    """Accuracy on every OOD set of the task; the ones ``cfg.ood`` names must all be there."""
    missing = [name for name in cfg.ood if name not in task.ood]
    if missing:
        raise ValueError(f"the trial asks for OOD sets {missing} that its task lacks "
                         f"(it has {list(task.ood)}); load the task with ood={list(cfg.ood)}.")
    return {name: evaluate(model, split)[0] for name, split in task.ood.items()}


def source_accuracy(model: torch.nn.Sequential, pretrained: Mapping[str, torch.Tensor],
                    source: Split) -> float:
    """Accuracy on the pretraining task of the fine-tuned body under the pretrained head.

    Forgetting as Biderman et al. (2024) measure it: the target head is set aside and the
    source head (``pretrained``'s ``head.*``) reads the body's features, whatever the strategy
    did to the body (adapters, prompts and LoRA included), so a probe scores exactly the
    pretrained accuracy.
    """
    weight = pretrained["head.weight"]
    head = torch.nn.Linear(weight.shape[1], weight.shape[0])
    head.load_state_dict({"weight": weight, "bias": pretrained["head.bias"]})
    p = next(model.parameters())
    probe = torch.nn.Sequential(model[:-1], head.to(device=p.device, dtype=p.dtype))
    was_training = model.training
    try:
        return evaluate(probe, source)[0]
    finally:
        model.train(was_training)


@torch.no_grad()
def feature_distortion(model: torch.nn.Sequential, pretrained: Mapping[str, torch.Tensor],
                       splits: Mapping[str, Split], batch_size: int = 128) -> dict[str, float]:
    """Per split, the mean over its examples of ``||f(x) - f0(x)|| / ||f0(x)||``.

    ``f`` is ``model`` without its head (the head's input), ``f0`` the same backbone with the
    ``pretrained`` weights; both in eval mode (BatchNorm on running statistics), so a frozen
    backbone gives exactly 0. Costs one forward pass of each backbone over each split, none
    when the backbone is bitwise the pretrained one (a probe).
    """
    after = model[:-1]
    weights = {k: v for k, v in pretrained.items() if not k.startswith("head.")}
    now = after.state_dict()
    if all(torch.equal(now[k], v.to(now[k].device)) for k, v in weights.items()):
        return {name: 0.0 for name in splits}
    before = copy.deepcopy(after)
    before.load_state_dict(weights)
    was_training = model.training
    after.eval()
    before.eval()
    device = next(model.parameters()).device
    out = {}
    try:
        for name, split in splits.items():
            fa = logits_in_batches(after, split.x, batch_size, device).float()
            fb = logits_in_batches(before, split.x, batch_size, device).float()
            ratio = (fa - fb).norm(dim=1) / fb.norm(dim=1).clamp_min(1e-12)
            out[name] = float(ratio.mean())
    finally:
        model.train(was_training)
    return out


def _p50(values: list[float], warmup: int) -> float:
    v = values[warmup:]
    return float(np.median(v)) if v else float("nan")


def _records(cfg, ctx, status, epochs, result, test_acc, seconds, n_trainable, ood_acc=None,
             distortion=None, source_acc=None):
    base = Measurement(
        run_id=ctx.run_id, study=cfg.study, cell=cfg.cell, stage=cfg.stage, trial=cfg.trial,
        phase="all", strategy=cfg.strategy, dataset=cfg.dataset, model=cfg.model,
        budget=budget_label(cfg.shots), device=cfg.device, execution=cfg.execution, seed=cfg.seed,
        split="train", metric="", value=float("nan"), unit="", epoch=None, status=status,
    )
    rows = []

    def add(metric, value, unit, **kw):
        rows.append(replace(base, metric=metric, value=float(value), unit=unit, **kw))

    for e in epochs:
        add("loss", e.train_loss, "nats", phase=e.phase, epoch=e.epoch)
        add("lr", e.lr, "1", phase=e.phase, epoch=e.epoch)
        add("train_time_s", e.train_seconds, "s", phase=e.phase, epoch=e.epoch)
        add("accuracy", e.val_accuracy, "fraction", phase=e.phase, split="val", epoch=e.epoch)
        add("loss", e.val_loss, "nats", phase=e.phase, split="val", epoch=e.epoch)
    if epochs:
        add("accuracy", epochs[-1].val_accuracy, "fraction", split="val")
    if cfg.target_accuracy is not None:
        reached = [e.train_seconds for e in epochs if e.val_accuracy >= cfg.target_accuracy]
        # seconds of training (evaluation excluded) until val accuracy first reached the target
        add("time_to_target_s", reached[0] if reached else float("nan"), "s", split="val")
        add("target_accuracy", cfg.target_accuracy, "fraction", split="val")
    if test_acc is not None:
        add("accuracy", test_acc, "fraction", split="test")
    for name, acc in (ood_acc or {}).items():
        add("accuracy", acc, "fraction", split=f"ood:{name}")
    for split, value in (distortion or {}).items():
        add("feature_distortion", value, "fraction", split=split)
    if source_acc is not None:  # forgetting: the pretraining task, under its own head
        add("accuracy", source_acc, "fraction", split="source")
        add("examples", len(ctx.source), "count", split="source")
    if result is not None:
        _loop_rows(add, cfg, result)
        add("trainable_params", n_trainable, "count")
    add("trial_time_s", seconds, "s")
    # how many labels trained and selected this trial (the budget, and the validation size)
    add("examples", len(ctx.task.train), "count")
    add("examples", len(ctx.task.val), "count", split="val")
    if test_acc is not None:  # what each final accuracy is a fraction of (claims' binomial error)
        add("examples", len(ctx.task.test), "count", split="test")
        for name in ood_acc or {}:
            add("examples", len(ctx.task.ood[name]), "count", split=f"ood:{name}")
    return rows


def _loop_rows(add, cfg, result):
    """Speed, compute, compilation and memory of the loop, per phase and for the whole run."""
    execution = parse_execution(cfg.execution)
    device = torch.device(cfg.device)
    dtype = AMP_DTYPES.get(execution.amp, torch.float32)
    emp_peak = empirical_peak(device, dtype)
    # fp32 convolutions run on TF32 tensor cores when cuDNN allows it: compare with that peak
    tf32 = device.type == "cuda" and dtype == torch.float32 and torch.backends.cudnn.allow_tf32
    sheet_peak = datasheet_peak(device_name(device), dtype, tf32=tf32) if device.type == "cuda" else None
    flops_done, timed_s = 0.0, 0.0
    peaks, kind = [], "cpu_rss"
    add("eval_flops_per_sample", result.eval_flops_per_sample, "FLOP", split="val")
    for phase, st in result.phases.items():
        flops, secs, mem_kind = _phase_rows(add, phase, st, result, device, emp_peak, sheet_peak)
        flops_done += flops
        timed_s += secs
        if st.memory is not None:
            kind = mem_kind
            peaks.append(st.memory.peak_bytes)
    for phase, tp in result.throughput.items():
        add("samples_per_s", tp.samples_per_s, "samples/s", phase=phase)
        add("step_p50_s", tp.step_p50_s, "s", phase=phase)
        add("step_p90_s", tp.step_p90_s, "s", phase=phase)
        add("timed_steps", tp.timed_steps, "count", phase=phase)
        add("warmup_steps", tp.warmup_steps, "count", phase=phase)
    add("empirical_peak_flops_per_s", emp_peak, "FLOP/s")
    if timed_s > 0:
        # the whole run: FLOPs of all timed steps over their time, so slow steps weigh by time
        add("achieved_flops_per_s", flops_done / timed_s, "FLOP/s")
        add("utilisation_empirical", flops_done / timed_s / emp_peak, "fraction")
        if sheet_peak:
            add("utilisation_datasheet", flops_done / timed_s / sheet_peak, "fraction")
    if sheet_peak:
        add("datasheet_peak_flops_per_s", sheet_peak, "FLOP/s")
        add("datasheet_peak_is_tf32", float(tf32), "bool")
    add("train_time_s", result.train_seconds, "s")
    add("batch_size", result.batch_size, "count")
    if peaks:
        # the trial: the highest phase peak, and its rise over the memory at the loop's start
        add(f"peak_{kind}", max(peaks), "bytes")
        add(f"peak_{kind}_increase", max(peaks) - result.memory_start_bytes, "bytes")


def _phase_rows(add, phase, st, result, device, emp_peak, sheet_peak) -> tuple[float, float, str]:
    """One phase's rows; returns its timed FLOPs, timed seconds and memory kind."""
    tp = result.throughput[phase]
    w = tp.warmup_steps
    add("graphs_compiled", st.graphs_compiled, "count", phase=phase)
    add("timed_recompiles", st.timed_recompiles, "count", phase=phase)
    if st.graphs_compiled:
        # the steps that compiled, compilation included (their excess over a steady step
        # is the compile cost; both are in the table)
        add("compile_steps_s", st.compile_steps_s, "s", phase=phase)
        # cold: compiled from scratch; warm: every graph from the run's inductor cache
        add("compile_cache_hits", st.compile_cache_hits, "count", phase=phase)
        add("compile_cache_misses", st.compile_cache_misses, "count", phase=phase)
        add("compile_cold", float(st.compile_cache_misses > 0), "bool", phase=phase)
    if st.feature_cache_s:
        add("feature_cache_s", st.feature_cache_s, "s", phase=phase)
    if st.solver_s:
        add("solver_s", st.solver_s, "s", phase=phase)
    for part in ("forward", "backward", "optimizer", "data"):
        add(f"{part}_p50_s", _p50(getattr(st, f"{part}_s"), w), "s", phase=phase)
    add("optimizer_state_bytes", st.optimizer_state_bytes, "bytes", phase=phase)
    ev = result.eval_throughput[phase]
    add("samples_per_s", ev.samples_per_s, "samples/s", phase=phase, split="val")
    add("timed_passes", ev.timed_steps, "count", phase=phase, split="val")
    add("train_flops_per_sample", st.train_flops_per_sample, "FLOP", phase=phase)
    achieved = st.train_flops_per_sample * tp.samples_per_s
    add("achieved_flops_per_s", achieved, "FLOP/s", phase=phase)
    add("utilisation_empirical", achieved / emp_peak, "fraction", phase=phase)
    if sheet_peak:
        add("utilisation_datasheet", achieved / sheet_peak, "fraction", phase=phase)
    kind = ""
    if st.memory is not None:
        kind = st.memory.kind
        add(f"peak_{kind}", st.memory.peak_bytes, "bytes", phase=phase)
        add(f"peak_{kind}_increase", st.memory.increase_bytes, "bytes", phase=phase)
        if device.type == "cuda":
            add("peak_cuda_reserved", st.memory.reserved_bytes, "bytes", phase=phase)
    return (st.train_flops_per_sample * sum(st.batch_sizes[w:]), sum(st.step_seconds[w:]), kind)
