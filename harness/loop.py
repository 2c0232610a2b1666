"""The one train/eval loop. Strategies hand it a :class:`~harness.strategy.Plan`; it applies it.

What it does, precisely (the reference-loop test in ``tests/harness/test_loop.py`` repeats it by hand):

- batches: each epoch draws ``torch.randperm(n, generator=g)`` from a CPU generator seeded with
  ``cfg.seed`` and takes consecutive slices of ``min(batch_size, n)``, dropping a last partial
  batch, so every timed step has the same shape;
- at a phase's first epoch, it sets ``requires_grad`` from the phase, puts BatchNorm in the
  phase's mode, and builds a fresh optimizer over the parameters that train now (its state is
  for those parameters only);
- optimizer: SGD with Nesterov momentum; one param group per trainable block carrying its
  ``lr_scale``; every step sets ``lr = cfg.lr * lr_scale * cosine(step / total_steps)`` in one
  place, so any schedule respects the scales;
- after each epoch it evaluates on the validation split and calls ``on_epoch`` (where Optuna's
  pruning hooks in); a non-finite training loss stops the run with :class:`NonFiniteLossError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from harness.data import Split
from harness.measure import Throughput, clock, steady_state
from harness.strategy import Phase, Plan

__all__ = ["LoopConfig", "EpochRecord", "LoopResult", "train", "evaluate", "apply_phase",
           "NonFiniteLossError", "cosine"]


ALL_PHASES = "all"  # the key of the whole-run throughput beside the per-phase ones


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class LoopConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.01
    weight_decay: float = 0.0
    momentum: float = 0.9  # SGD with Nesterov momentum: the optimiser of Kornblith et al. 2019
    seed: int = 0
    warmup_steps: int = 3  # steps per phase left out of the throughput (allocator, caches, compile)
    eval_batch_size: int = 1024


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    phase: str
    train_loss: float
    val_accuracy: float
    val_loss: float
    lr: float  # the base learning rate of the epoch's first step, before lr_scale


@dataclass
class LoopResult:
    epochs: list[EpochRecord] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    throughput: dict[str, Throughput] = field(default_factory=dict)  # per phase
    train_seconds: float = 0.0  # wall time of all training steps, warm-up included


def cosine(progress: float) -> float:
    """Cosine decay from 1 at ``progress = 0`` to 0 at ``progress = 1``."""
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


def apply_phase(model: nn.Sequential, phase: Phase) -> list[dict]:
    """Set ``requires_grad`` for ``phase`` and return its optimizer param groups (with ``lr_scale``)."""
    groups = []
    for name, block in model.named_children():
        in_phase = name in phase.trainable
        params = []
        for mod in block.modules():
            for pname, p in mod.named_parameters(recurse=False):
                train = (
                    in_phase
                    and not (phase.bn_mode == "frozen" and _is_bn(mod))
                    and (phase.param_suffixes is None or pname.endswith(phase.param_suffixes))
                )
                p.requires_grad_(train)
                if train:
                    params.append(p)
        if params:
            groups.append({"params": params, "lr_scale": phase.scale(name), "block": name})
    return groups


def set_bn_mode(model: nn.Sequential, phase: Phase) -> None:
    """Put BatchNorm in eval mode wherever the phase says it must not update its statistics."""
    for name, block in model.named_children():
        if phase.bn_mode != "train" or name not in phase.trainable:
            for m in block.modules():
                if _is_bn(m):
                    m.eval()


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 1024) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``split``."""
    was_training = model.training
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(split), batch_size):
        logits = model(split.x[i : i + batch_size])
        y = split.y[i : i + batch_size]
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    model.train(was_training)
    return correct / len(split), loss / len(split)


def train(
    model: nn.Sequential,
    plan: Plan,
    train_split: Split,
    val_split: Split,
    cfg: LoopConfig,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> LoopResult:
    """Train ``model`` in place following ``plan``; see the module docstring for the exact recipe."""
    device = train_split.x.device
    n = len(train_split)
    bs = min(cfg.batch_size, n)
    steps_per_epoch = n // bs
    total_steps = steps_per_epoch * cfg.epochs
    g = torch.Generator().manual_seed(cfg.seed)
    result = LoopResult()
    times: dict[str, tuple[list[float], list[int]]] = {}
    step = 0
    phase: Phase | None = None
    opt: torch.optim.Optimizer | None = None

    for epoch in range(cfg.epochs):
        new_phase = plan.phase_at(epoch)
        if new_phase is not phase:
            phase = new_phase
            groups = apply_phase(model, phase)
            opt = torch.optim.SGD(
                groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                weight_decay=cfg.weight_decay,
            )
            times.setdefault(phase.name, ([], []))
        model.train()
        set_bn_mode(model, phase)
        perm = torch.randperm(n, generator=g).to(device)
        losses = []
        epoch_lr = cfg.lr * cosine(step / total_steps)
        for i in range(steps_per_epoch):
            idx = perm[i * bs : (i + 1) * bs]
            xb, yb = train_split.x[idx], train_split.y[idx]
            lr_now = cfg.lr * cosine(step / total_steps)
            for group in opt.param_groups:
                group["lr"] = lr_now * group["lr_scale"]
            t0 = clock(device)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            t1 = clock(device)
            times[phase.name][0].append(t1 - t0)
            times[phase.name][1].append(bs)
            losses.append(loss.detach())
            step += 1
        epoch_losses = torch.stack(losses).float().cpu()
        result.step_losses.extend(epoch_losses.tolist())
        train_loss = float(epoch_losses.mean())
        if not math.isfinite(train_loss):
            raise NonFiniteLossError(f"training loss became {train_loss} in epoch {epoch}")
        val_acc, val_loss = evaluate(model, val_split, cfg.eval_batch_size)
        record = EpochRecord(epoch, phase.name, train_loss, val_acc, val_loss, epoch_lr)
        result.epochs.append(record)
        if on_epoch is not None:
            on_epoch(record)

    timed_secs, timed_sizes, warm = [], [], 0
    for name, (secs, sizes) in times.items():
        result.throughput[name] = steady_state(secs, sizes, cfg.warmup_steps)
        result.train_seconds += sum(secs)
        timed_secs += secs[cfg.warmup_steps :]
        timed_sizes += sizes[cfg.warmup_steps :]
        warm += result.throughput[name].warmup_steps
    # the whole run: every phase's steady-state steps together, each phase's warm-up left out
    whole = steady_state(timed_secs, timed_sizes, 0)
    result.throughput[ALL_PHASES] = replace(whole, warmup_steps=warm)
    return result
