"""The one train/eval loop. Strategies hand it a :class:`~harness.train.strategy.Plan`; it applies it.

What it does, precisely (the reference-loop test in ``tests/harness/test_loop.py`` repeats it by hand):

- batches: each epoch draws ``torch.randperm(n, generator=g)`` from a CPU generator seeded with
  ``cfg.seed`` and takes consecutive slices of ``min(batch_size, n)``, dropping a last partial
  batch, so every timed step has the same shape (and a compiled model never recompiles for it);
  ``cfg.loader="dataloader"`` draws the same slices through a DataLoader (:mod:`harness.data.feed`);
- at a phase's first epoch, it sets ``requires_grad`` from the phase, puts BatchNorm in the
  phase's mode, and builds a fresh optimizer over the parameters that train now (its state is
  for those parameters only);
- optimizer: the phase's :class:`~harness.train.strategy.Optimizer` (SGD with Nesterov momentum
  by default, or AdamW); one param group per block with parameters to train, carrying its
  ``lr_scale``; every step sets ``lr = cfg.lr * lr_scale * lr_factor(progress)`` in one place
  (cosine by default), so any schedule respects the scales; ``progress`` is
  ``step / total_steps`` over the run, or over the phase alone for a phase with ``span="phase"``;
- execution (:class:`~harness.config.execution.Execution`): training steps run the model or its
  ``torch.compile`` wrapper under autocast; evaluation always runs the eager module (same
  parameters), so mode switches and partial eval batches never recompile the training graph;
- dead parameters: on the first step of every phase, every parameter the phase selects must
  have received a gradient, else :class:`StaleGraphError` naming them (a compiled graph from an
  earlier phase, or an adapter the forward pass never calls);
- head-only phases with ``cache_features`` compute the frozen backbone's features of the train
  and val splits once, then train (``sgd``) or fit (``lbfgs``, scikit-learn) the head on them;
- after each epoch it evaluates on the validation split and calls ``on_epoch`` (where Optuna's
  pruning hooks in); a non-finite training loss stops the run with :class:`NonFiniteLossError`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Self

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
from harness.train.strategy import Optimizer, Phase, Plan, cosine, lr_factor

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
    "make_optimizer",
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
    compile_cache_hits: int = 0  # graphs inductor loaded from the run's cache (a warm compile)
    compile_cache_misses: int = 0  # graphs inductor compiled from scratch (a cold compile)
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
    loop = _Loop(model, plan, train_split, val_split, cfg, on_step)
    with loop:  # the feed's workers and the open phase's memory window close whatever happens
        for epoch in range(cfg.epochs):
            phase = plan.phase_at(epoch)
            if phase is not loop.phase:
                loop.enter_phase(phase, epoch)
            losses, epoch_lr = loop.train_epoch()
            record = loop.evaluate_epoch(epoch, losses, epoch_lr)
            if on_epoch is not None:
                on_epoch(record)
    return loop.summarise()


def make_optimizer(groups: list[dict], opt: Optimizer, lr: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    """The phase's optimizer over its param groups (their ``lr`` is set at every step)."""
    if opt.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=opt.betas, eps=opt.eps,
                                 weight_decay=weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=opt.momentum, nesterov=True,
                           weight_decay=weight_decay)


class _Loop:
    """One training run's state, stepped by :func:`train`: phases entered, epochs, steps."""

    def __init__(self, model, plan, train_split, val_split, cfg, on_step) -> None:
        self.model, self.plan, self.cfg, self.on_step = model, plan, cfg, on_step
        self.device = device = next(model.parameters()).device  # splits may stay on the CPU
        ex = self.ex = cfg.execution
        ex.check_device(device)
        self.n = len(train_split)
        bs = self.bs = min(cfg.batch_size, self.n)
        self.steps_per_epoch = self.n // bs
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.g = torch.Generator().manual_seed(cfg.seed)
        self.result = LoopResult(batch_size=bs)
        self.step = 0
        self.phase: Phase | None = None
        self.opt: torch.optim.Optimizer | None = None
        self.stats: PhaseStats | None = None
        self.scaler = ex.grad_scaler(device)
        self.step_fn = ex.prepare(model)
        self.graphs = CompileCounter()
        self.head = model[-1]
        self.x_train, self.x_val = ex.inputs(train_split.x), ex.inputs(val_split.x)
        self.val_y = val_split.y
        self.feed = TrainFeed(self.x_train, train_split.y, bs, self.steps_per_epoch, device,
                              cfg.loader, cfg.loader_workers)
        self.cached: tuple[torch.Tensor, torch.Tensor] | None = None  # the phase's features
        self.check_grads = False
        self.marks = StepClock(device)
        self.elapsed = 0.0  # cumulative training time, for time to accuracy
        self.phase_first_step = self.phase_steps = 0
        self._phase_scope = contextlib.ExitStack()  # the open phase's memory window
        self.result.memory_start_bytes = PeakMemory(device).current_bytes()
        self.result.eval_flops_per_sample = flops_per_sample(model.eval(), self.x_val[:bs],
                                                             train=False)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.feed.close()
        self.leave_phase()

    def leave_phase(self) -> None:
        self._phase_scope.close()
        # at the phase's end, not after its first step: an fp16 GradScaler may skip that step
        if self.opt is not None and self.stats is not None:
            self.stats.optimizer_state_bytes = max(self.stats.optimizer_state_bytes,
                                                   _state_bytes(self.opt))

    def enter_phase(self, phase: Phase, epoch: int) -> None:
        """Set what trains and BatchNorm's mode, count FLOPs, open the phase's memory window,
        build a fresh optimizer, and cache features or fit the L-BFGS head where it says so."""
        self.leave_phase()
        model, cfg, device = self.model, self.cfg, self.device
        self.phase = phase
        stats = self.stats = self.result.phases.setdefault(phase.name, PhaseStats())
        groups = apply_phase(model, phase)
        self.cached = None  # the previous phase's features must not count in this phase's memory
        # counted before the phase's memory window: the counter copies the model
        model.train()
        set_bn_mode(model, phase)
        stats.train_flops_per_sample = (
            0.0 if phase.solver == "lbfgs"
            else flops_per_sample(self.head, torch.empty(self.bs, self.head.in_features,
                                                         device=device))
            if phase.cache_features
            else flops_per_sample(model, self.x_train[:self.bs]))
        self.phase_first_step = self.step
        self.phase_steps = self.steps_per_epoch * (self.plan.end_epoch(phase, cfg.epochs) - epoch)
        stats.memory = self._phase_scope.enter_context(PeakMemory(device, release=False))
        self.opt = make_optimizer(groups, phase.optimizer, cfg.lr, cfg.weight_decay)
        self.check_grads = True
        if phase.cache_features or phase.solver == "lbfgs":
            t0 = clock(device)
            backbone = model[:-1].eval()
            with self.ex.autocast(device):
                self.cached = tuple(logits_in_batches(backbone, x, cfg.eval_batch_size,
                                                      device).float()
                                    for x in (self.x_train, self.x_val))
            stats.feature_cache_s += clock(device) - t0
        if phase.solver == "lbfgs":
            t0 = time.perf_counter()
            fit_lbfgs(self.head, self.cached[0], self.feed.y, dict(phase.solver_options))
            stats.solver_s += time.perf_counter() - t0
        self.elapsed += stats.feature_cache_s + stats.solver_s

    def _lr(self) -> float:
        """The base learning rate at the current step, before any block's ``lr_scale``."""
        first, span = ((self.phase_first_step, self.phase_steps) if self.phase.span == "phase"
                       else (0, self.total_steps))
        return self.cfg.lr * lr_factor(self.phase.optimizer, (self.step - first) / span)

    def train_epoch(self) -> tuple[list[torch.Tensor], float]:
        """One epoch's steps on a fresh permutation; the losses (on the device) and the epoch's
        first learning rate."""
        self.model.train()
        set_bn_mode(self.model, self.phase)
        batches = self.feed.epoch(torch.randperm(self.n, generator=self.g),
                                  self.cached[0] if self.cached else None)
        losses = []
        epoch_lr = self._lr()
        for _ in range(self.steps_per_epoch):
            if self.phase.solver == "lbfgs":  # fitted at the phase start; its epochs take no steps
                self.step += 1
                continue
            losses.append(self.train_step(batches, self._lr()))
            if self.on_step is not None:
                self.on_step(self.step, self.opt)
            self.step += 1
        return losses, epoch_lr

    def train_step(self, batches, lr_now: float) -> torch.Tensor:
        """Forward, backward and optimizer step on the next batch, each part timed."""
        stats, device, opt, marks = self.stats, self.device, self.opt, self.marks
        t_data = time.perf_counter()
        xb, yb = next(batches)  # with a DataLoader, the wait for it
        fn = self.head if self.cached is not None else self.step_fn
        for group in opt.param_groups:
            group["lr"] = lr_now * group["lr_scale"]
        before, cache_before = self.graphs(), self.graphs.cache()
        t0 = clock(device)
        m0 = marks.mark()
        with self.ex.autocast(device):
            loss = F.cross_entropy(fn(xb), yb)
        m1 = marks.mark()
        opt.zero_grad(set_to_none=True)
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        m2 = marks.mark()
        if self.check_grads:
            _check_grads(opt, self.phase, self.plan.strategy)
        if self.scaler is None:
            opt.step()
        else:
            self.scaler.step(opt)
            self.scaler.update()
        m3 = marks.mark()
        t1 = clock(device)
        self.check_grads = False
        stats.data_s.append(t0 - t_data)
        stats.forward_s.append(marks.elapsed(m0, m1))
        stats.backward_s.append(marks.elapsed(m1, m2))
        stats.optimizer_s.append(marks.elapsed(m2, m3))
        self.elapsed += t1 - t0
        compiled = self.graphs() - before
        if compiled:
            stats.graphs_compiled += compiled
            stats.compile_steps_s += t1 - t0
            hits, misses = self.graphs.cache()
            stats.compile_cache_hits += hits - cache_before[0]
            stats.compile_cache_misses += misses - cache_before[1]
            if len(stats.step_seconds) >= self.cfg.warmup_steps:
                stats.timed_recompiles += compiled
        stats.step_seconds.append(t1 - t0)
        stats.batch_sizes.append(self.bs)
        return loss.detach()

    def evaluate_epoch(self, epoch: int, losses: list[torch.Tensor], epoch_lr: float) -> EpochRecord:
        """The epoch's training loss (read once, stacked) and its validation accuracy and loss."""
        stats, head = self.stats, self.head
        if losses:
            epoch_losses = torch.stack(losses).float().cpu()
            self.result.step_losses.extend(epoch_losses.tolist())
            train_loss = float(epoch_losses.mean())
        else:  # an lbfgs epoch: the loss of the fitted head on the training features
            with torch.no_grad():
                train_loss = F.cross_entropy(head(self.cached[0]), self.feed.y).item()
        if not math.isfinite(train_loss):
            raise NonFiniteLossError(f"training loss became {train_loss} in epoch {epoch}")
        if self.cached is not None:  # the head on stored features: no model evaluation to time
            with torch.no_grad():
                val_acc, val_loss = scores(head(self.cached[1]).float(), self.val_y)
        else:
            t0 = clock(self.device)
            with self.ex.autocast(self.device):
                val_acc, val_loss = evaluate(self.model, Split(self.x_val, self.val_y),
                                             self.cfg.eval_batch_size)
            stats.eval_seconds.append(clock(self.device) - t0)
            stats.eval_samples.append(len(self.val_y))
        record = EpochRecord(epoch, self.phase.name, train_loss, val_acc, val_loss, epoch_lr,
                             self.elapsed)
        self.result.epochs.append(record)
        return record

    def summarise(self) -> LoopResult:
        """Steady-state throughput per phase and for the whole run, and the total training time."""
        result, warmup = self.result, self.cfg.warmup_steps
        timed_secs, timed_sizes, warm = [], [], 0
        for name, st in result.phases.items():
            # a phase's first pass meets new shapes (allocator, kernel choice): left out if others exist
            first = 1 if len(st.eval_seconds) > 1 else 0
            result.eval_throughput[name] = steady_state(st.eval_seconds, st.eval_samples, first)
            result.throughput[name] = steady_state(st.step_seconds, st.batch_sizes, warmup)
            result.train_seconds += sum(st.step_seconds) + st.feature_cache_s + st.solver_s
            timed_secs += st.step_seconds[warmup:]
            timed_sizes += st.batch_sizes[warmup:]
            warm += result.throughput[name].warmup_steps
        # the whole run: every phase's steady-state steps together, each phase's warm-up left out
        whole = steady_state(timed_secs, timed_sizes, 0)
        result.throughput[ALL_PHASES] = replace(whole, warmup_steps=warm)
        return result


def _state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's state tensors (SGD's momentum, AdamW's two moments and step)."""
    return sum(t.numel() * t.element_size() for st in opt.state.values()
               for t in st.values() if torch.is_tensor(t))


def _check_grads(opt: torch.optim.Optimizer, phase: Phase, strategy: str = "") -> None:
    missing = [(g["block"], name) for g in opt.param_groups
               for p, name in zip(g["params"], g.get("names", [""] * len(g["params"])))
               if p.grad is None]
    if missing:
        blocks = sorted({b for b, _ in missing})
        names = [n for _, n in missing]
        who = f"strategy {strategy!r} " if strategy else ""
        raise StaleGraphError(
            f"{who}phase {phase.name!r}: parameters of blocks {blocks} got no gradient on the "
            f"phase's first step ({len(names)} of them, e.g. {names[:3]}): the forward pass never "
            "uses them (an adapter that is never called) or a compiled graph from an earlier "
            "phase is being reused."
        )
