"""The one train/eval loop. Strategies hand it a :class:`~harness.train.strategy.Plan`; it applies it.

What it does, precisely (the reference-loop test in ``tests/harness/test_loop.py`` repeats it by hand):

- batches: each epoch draws ``torch.randperm(n, generator=g)`` from a CPU generator seeded with
  ``cfg.seed`` and takes consecutive slices of ``min(batch_size, n)``, dropping a last partial
  batch, so every timed step has the same shape (and a compiled model never recompiles for it);
  ``cfg.loader="dataloader"`` draws the same slices through a DataLoader (:mod:`harness.data.feed`);
- at a phase's first epoch, it sets ``requires_grad`` from the phase, puts BatchNorm in the
  phase's mode, and builds a fresh optimizer over the parameters that train now (its state is
  for those parameters only);
- optimizer: SGD with Nesterov momentum; one param group per trainable block carrying its
  ``lr_scale``; every step sets ``lr = cfg.lr * lr_scale * cosine(progress)`` in one place, so
  any schedule respects the scales; ``progress`` is ``step / total_steps`` over the run, or over
  the phase alone for a phase with ``schedule="phase"``;
- execution (:class:`~harness.config.execution.Execution`): training steps run the model or its
  ``torch.compile`` wrapper under autocast; evaluation always runs the eager module (same
  parameters), so mode switches and partial eval batches never recompile the training graph;
- stale compiled graphs: on the first step of every phase, every parameter the phase trains
  must have received a gradient, else :class:`StaleGraphError`;
- head-only phases with ``cache_features`` compute the frozen backbone's features of the train
  and val splits once, then train (``sgd``) or fit (``lbfgs``, scikit-learn) the head on them;
- after each epoch it evaluates on the validation split and calls ``on_epoch`` (where Optuna's
  pruning hooks in); a non-finite training loss stops the run with :class:`NonFiniteLossError`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from harness.config.execution import CompileCounter, Execution
from harness.data.core import Split
from harness.data.feed import TrainFeed
from harness.measure.clock import StepClock, Throughput, clock, steady_state
from harness.measure.flops import flops_per_sample
from harness.measure.memory import PeakMemory
from harness.train.evaluation import evaluate, fit_lbfgs, logits_in_batches, scores
from harness.train.phases import apply_phase, set_bn_mode
from harness.train.strategy import Phase, Plan

__all__ = [
    "ALL_PHASES",
    "EpochRecord",
    "LoopConfig",
    "LoopResult",
    "NonFiniteLossError",
    "PhaseStats",
    "StaleGraphError",
    "apply_phase",
    "cosine",
    "evaluate",
    "set_bn_mode",
    "train",
]

ALL_PHASES = "all"  # the key of the whole-run throughput beside the per-phase ones


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class StaleGraphError(RuntimeError):
    """A parameter the phase trains got no gradient: the step ran a graph built for another phase."""


@dataclass(frozen=True)
class LoopConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.01
    weight_decay: float = 0.0
    momentum: float = 0.9  # SGD with Nesterov momentum: the optimiser of Kornblith et al. 2019
    seed: int = 0
    warmup_steps: int = 3  # steps per phase left out of the throughput (allocator, caches, compile)
    # larger eval batches ran slower per image on the CPU here: 1024 about 2x, and 256 about 3x
    # whenever a fresh process (or a trial after malloc_trim) meets it; 128 was steady
    eval_batch_size: int = 128
    execution: Execution = field(default_factory=Execution)
    loader: str = "resident"  # or "dataloader": the same batches from CPU tensors (harness.data.feed)
    loader_workers: int = 2  # DataLoader workers; 0 loads in the main process


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    phase: str
    train_loss: float
    val_accuracy: float
    val_loss: float
    lr: float  # the base learning rate of the epoch's first step, before lr_scale
    train_seconds: float = 0.0  # cumulative training time at the epoch's end (evaluation excluded)


@dataclass
class PhaseStats:
    """What one phase cost: its steps' times, compilation and feature caching."""

    step_seconds: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    graphs_compiled: int = 0  # graphs dynamo compiled during this phase's steps
    compile_steps_s: float = 0.0  # wall time of the steps that compiled (compilation included)
    timed_recompiles: int = 0  # graphs compiled inside the timed (post-warm-up) steps: should be 0
    feature_cache_s: float = 0.0  # computing the frozen features once
    solver_s: float = 0.0  # the lbfgs fit
    # per step, the parts of step_seconds (CUDA events on a GPU, so no extra syncs) and the
    # batch indexing before it (outside step_seconds)
    forward_s: list[float] = field(default_factory=list)  # forward and loss
    backward_s: list[float] = field(default_factory=list)  # zero_grad and backward
    optimizer_s: list[float] = field(default_factory=list)  # optimizer step
    data_s: list[float] = field(default_factory=list)
    eval_seconds: list[float] = field(default_factory=list)  # each validation pass, synced
    eval_samples: list[int] = field(default_factory=list)
    optimizer_state_bytes: int = 0  # after the phase's first step
    train_flops_per_sample: float = float("nan")  # forward + backward of what trains (0 for lbfgs)
    memory: PeakMemory | None = None  # peak over the phase's steps and evaluations


@dataclass
class LoopResult:
    epochs: list[EpochRecord] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    phases: dict[str, PhaseStats] = field(default_factory=dict)
    throughput: dict[str, Throughput] = field(default_factory=dict)  # per phase and ALL_PHASES
    eval_throughput: dict[str, Throughput] = field(default_factory=dict)  # validation, per phase
    train_seconds: float = 0.0  # all training steps, feature caching and solver fits included
    batch_size: int = 0  # the training batch actually used: min(cfg.batch_size, examples)
    eval_flops_per_sample: float = float("nan")
    memory_start_bytes: float = float("nan")  # resident (CPU) or allocated (CUDA) at the start


def cosine(progress: float) -> float:
    """Cosine decay from 1 at ``progress = 0`` to 0 at ``progress = 1``."""
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def train(
    model: nn.Sequential,
    plan: Plan,
    train_split: Split,
    val_split: Split,
    cfg: LoopConfig,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    on_step: Callable[[int, torch.optim.Optimizer], None] | None = None,
) -> LoopResult:
    """Train ``model`` in place following ``plan``; see the module docstring for the exact recipe."""
    device = next(model.parameters()).device  # the splits may stay on the CPU (dataloader path)
    ex = cfg.execution
    ex.check_device(device)
    n = len(train_split)
    bs = min(cfg.batch_size, n)
    steps_per_epoch = n // bs
    total_steps = steps_per_epoch * cfg.epochs
    g = torch.Generator().manual_seed(cfg.seed)
    result = LoopResult(batch_size=bs)
    step = 0
    phase: Phase | None = None
    opt: torch.optim.Optimizer | None = None
    scaler = ex.grad_scaler(device)
    step_fn = ex.prepare(model)
    graphs = CompileCounter()
    head = model[-1]
    x_train, x_val = ex.inputs(train_split.x), ex.inputs(val_split.x)
    feed = TrainFeed(x_train, train_split.y, bs, steps_per_epoch, device, cfg.loader,
                     cfg.loader_workers)
    cached: tuple[torch.Tensor, torch.Tensor] | None = None  # train and val features of the phase
    check_grads = False
    marks = StepClock(device)
    elapsed = 0.0  # cumulative training time, for time to accuracy
    result.memory_start_bytes = PeakMemory(device).current_bytes()
    result.eval_flops_per_sample = flops_per_sample(model.eval(), x_val[:bs], train=False)
    mem: PeakMemory | None = None
    stats: PhaseStats | None = None
    try:
        for epoch in range(cfg.epochs):
            new_phase = plan.phase_at(epoch)
            if new_phase is not phase:
                if mem is not None:
                    mem.__exit__(None, None, None)
                    _leave_phase(stats, opt)
                phase = new_phase
                stats = result.phases.setdefault(phase.name, PhaseStats())
                groups = apply_phase(model, phase)
                cached = None  # the previous phase's features must not count in this phase's memory
                # counted before the phase's memory window: the counter copies the model
                model.train()
                set_bn_mode(model, phase)
                stats.train_flops_per_sample = (
                    0.0 if phase.solver == "lbfgs"
                    else flops_per_sample(head, torch.empty(bs, head.in_features, device=device))
                    if phase.cache_features
                    else flops_per_sample(model, x_train[:bs]))
                phase_first_step = step
                phase_steps = steps_per_epoch * (plan.end_epoch(phase, cfg.epochs) - epoch)
                stats.memory = mem = PeakMemory(device, release=False).__enter__()
                opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                                      weight_decay=cfg.weight_decay)
                check_grads = True
                if phase.cache_features or phase.solver == "lbfgs":
                    t0 = clock(device)
                    backbone = model[:-1].eval()
                    with ex.autocast(device):
                        cached = tuple(logits_in_batches(backbone, x, cfg.eval_batch_size,
                                                         device).float() for x in (x_train, x_val))
                    stats.feature_cache_s += clock(device) - t0
                if phase.solver == "lbfgs":
                    t0 = time.perf_counter()
                    fit_lbfgs(head, cached[0], feed.y, dict(phase.solver_options))
                    stats.solver_s += time.perf_counter() - t0
                elapsed += stats.feature_cache_s + stats.solver_s
            model.train()
            set_bn_mode(model, phase)
            batches = feed.epoch(torch.randperm(n, generator=g), cached[0] if cached else None)
            losses = []
            span = (phase_first_step, phase_steps) if phase.schedule == "phase" else (0, total_steps)
            epoch_lr = cfg.lr * cosine((step - span[0]) / span[1])
            for _ in range(steps_per_epoch):
                lr_now = cfg.lr * cosine((step - span[0]) / span[1])
                if phase.solver == "lbfgs":  # fitted once at the phase start; its epochs take no steps
                    step += 1
                    continue
                t_data = time.perf_counter()
                xb, yb = next(batches)  # with a DataLoader, the wait for it
                fn = head if cached is not None else step_fn
                for group in opt.param_groups:
                    group["lr"] = lr_now * group["lr_scale"]
                before = graphs()
                t0 = clock(device)
                m0 = marks.mark()
                with ex.autocast(device):
                    loss = F.cross_entropy(fn(xb), yb)
                m1 = marks.mark()
                opt.zero_grad(set_to_none=True)
                (loss if scaler is None else scaler.scale(loss)).backward()
                m2 = marks.mark()
                if check_grads:
                    _check_grads(opt, phase)
                if scaler is None:
                    opt.step()
                else:
                    scaler.step(opt)
                    scaler.update()
                m3 = marks.mark()
                t1 = clock(device)
                check_grads = False
                stats.data_s.append(t0 - t_data)
                stats.forward_s.append(marks.elapsed(m0, m1))
                stats.backward_s.append(marks.elapsed(m1, m2))
                stats.optimizer_s.append(marks.elapsed(m2, m3))
                elapsed += t1 - t0
                compiled = graphs() - before
                if compiled:
                    stats.graphs_compiled += compiled
                    stats.compile_steps_s += t1 - t0
                    if len(stats.step_seconds) >= cfg.warmup_steps:
                        stats.timed_recompiles += compiled
                stats.step_seconds.append(t1 - t0)
                stats.batch_sizes.append(bs)
                losses.append(loss.detach())
                if on_step is not None:
                    on_step(step, opt)
                step += 1
            if losses:
                epoch_losses = torch.stack(losses).float().cpu()
                result.step_losses.extend(epoch_losses.tolist())
                train_loss = float(epoch_losses.mean())
            else:  # an lbfgs epoch: the loss of the fitted head on the training features
                with torch.no_grad():
                    train_loss = F.cross_entropy(head(cached[0]), feed.y).item()
            if not math.isfinite(train_loss):
                raise NonFiniteLossError(f"training loss became {train_loss} in epoch {epoch}")
            if cached is not None:  # the head on stored features: no model evaluation to time
                with torch.no_grad():
                    val_acc, val_loss = scores(head(cached[1]).float(), val_split.y)
            else:
                t0 = clock(device)
                with ex.autocast(device):
                    val_acc, val_loss = evaluate(model, Split(x_val, val_split.y), cfg.eval_batch_size)
                stats.eval_seconds.append(clock(device) - t0)
                stats.eval_samples.append(len(val_split))
            record = EpochRecord(epoch, phase.name, train_loss, val_acc, val_loss, epoch_lr, elapsed)
            result.epochs.append(record)
            if on_epoch is not None:
                on_epoch(record)
    finally:
        feed.close()
        if mem is not None:
            mem.__exit__(None, None, None)
            _leave_phase(stats, opt)

    timed_secs, timed_sizes, warm = [], [], 0
    for name, st in result.phases.items():
        # the first pass of a phase meets new shapes (allocator, kernel choice): left out if others exist
        first = 1 if len(st.eval_seconds) > 1 else 0
        result.eval_throughput[name] = steady_state(st.eval_seconds, st.eval_samples, first)
        result.throughput[name] = steady_state(st.step_seconds, st.batch_sizes, cfg.warmup_steps)
        result.train_seconds += sum(st.step_seconds) + st.feature_cache_s + st.solver_s
        timed_secs += st.step_seconds[cfg.warmup_steps :]
        timed_sizes += st.batch_sizes[cfg.warmup_steps :]
        warm += result.throughput[name].warmup_steps
    # the whole run: every phase's steady-state steps together, each phase's warm-up left out
    whole = steady_state(timed_secs, timed_sizes, 0)
    result.throughput[ALL_PHASES] = replace(whole, warmup_steps=warm)
    return result


def _leave_phase(stats: PhaseStats, opt: torch.optim.Optimizer | None) -> None:
    # at the phase's end, not after its first step: an fp16 GradScaler may skip that step
    if opt is not None:
        stats.optimizer_state_bytes = max(stats.optimizer_state_bytes, _state_bytes(opt))


def _state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's state tensors (momentum buffers for SGD)."""
    return sum(t.numel() * t.element_size() for st in opt.state.values()
               for t in st.values() if torch.is_tensor(t))


def _check_grads(opt: torch.optim.Optimizer, phase: Phase) -> None:
    missing = [g["block"] for g in opt.param_groups for p in g["params"] if p.grad is None]
    if missing:
        raise StaleGraphError(
            f"phase {phase.name!r}: parameters of blocks {sorted(set(missing))} got no gradient "
            "on the phase's first step; a compiled graph from an earlier phase is being reused."
        )
