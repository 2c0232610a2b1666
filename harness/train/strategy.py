"""The strategy contract (v2): a strategy is data plus a schedule, never a loop of its own.

A strategy may first **transform the model** (:meth:`Strategy.prepare`: inject adapters, add
prompt tokens, swap normalisation), then, given the model's ordered block names, the trial's
hyperparameters and the epoch budget, returns a :class:`Plan`: phases that start at epoch
boundaries, each naming

- **which parameters train**: whole blocks (``trainable``), and parameters selected by
  ``fnmatch`` patterns over their full names (``params``, e.g. ``"*.lora_A.*"`` or ``"*.bias"``);
  a pattern that matches no parameter is a :class:`PlanError`, and every selected parameter
  must get a gradient on the phase's first step (else the loop's ``StaleGraphError``);
- an ``lr_scale`` per block (layer-wise decay is data here);
- the **optimizer and schedule** (:class:`Optimizer`: ``sgd`` with Nesterov momentum or ``adamw``;
  ``cosine``, ``warmup_cosine``, ``constant`` or ULMFiT's ``slanted_triangular``), searchable
  like any hyperparameter (:func:`optimizer_from`);
- the BatchNorm mode.

Its Optuna search space sits beside it in ``search_space``. The one loop (``harness.train.loop``)
applies the plan; :func:`build_plan` is the one place that prepares the model and checks the plan.

BatchNorm modes, always explicit and recorded:

- ``train``: BatchNorm in trainable blocks normalises with batch statistics and updates its
  running statistics;
- ``eval``: every BatchNorm uses its running statistics, which never change; the affine
  parameters train where their block trains;
- ``frozen``: like ``eval``, and the affine parameters never train either.

BatchNorm in a block that does not train is always in eval mode: a frozen block stays bitwise
unchanged, buffers included.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import optuna
from torch import nn

from harness.models.core import blocks

__all__ = [
    "BN_MODES",
    "OPTIMIZERS",
    "SCHEDULES",
    "SOLVERS",
    "Optimizer",
    "Phase",
    "Plan",
    "PlanError",
    "Strategy",
    "build_plan",
    "layerwise_scales",
    "lr_factor",
    "optimizer_from",
    "top_blocks",
    "unfreeze_starts",
]

BN_MODES = ("train", "eval", "frozen")
SOLVERS = ("sgd", "lbfgs")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "warmup_cosine", "constant", "slanted_triangular")


class PlanError(ValueError):
    """A plan that cannot run on this model: a selector that matches nothing, an unknown block."""


@dataclass(frozen=True)
class Optimizer:
    """The optimizer a phase builds and the learning-rate schedule its steps follow, as data.

    The defaults are the harness's first optimiser: SGD with Nesterov momentum 0.9 (Kornblith
    et al. 2019) under a cosine decay.
    """

    name: str = "sgd"  # "sgd" (Nesterov momentum) or "adamw"
    schedule: str = "cosine"  # one of SCHEDULES
    momentum: float = 0.9  # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adamw
    eps: float = 1e-8  # adamw
    warmup: float = 0.0  # warmup_cosine: the fraction of the schedule's steps that warm up linearly
    cut_frac: float = 0.1  # slanted_triangular: fraction of steps rising (Howard & Ruder 2018)
    ratio: float = 32.0  # slanted_triangular: how much smaller the lowest rate is than the peak

    def check(self) -> None:
        if self.name not in OPTIMIZERS:
            raise PlanError(f"optimizer must be one of {OPTIMIZERS}, but got {self.name!r}.")
        if self.schedule not in SCHEDULES:
            raise PlanError(f"schedule must be one of {SCHEDULES}, but got {self.schedule!r}.")
        if not 0 <= self.warmup < 1 or not 0 < self.cut_frac < 1 or self.ratio < 1:
            raise PlanError(f"need 0 <= warmup < 1, 0 < cut_frac < 1 and ratio >= 1, but got "
                            f"warmup={self.warmup}, cut_frac={self.cut_frac}, ratio={self.ratio}.")


def cosine(progress: float) -> float:
    """Cosine decay from 1 at ``progress = 0`` to 0 at ``progress = 1``."""
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_factor(opt: Optimizer, progress: float) -> float:
    """The multiplier of the base learning rate at ``progress`` (0 to 1) through the schedule."""
    if opt.schedule == "cosine":
        return cosine(progress)
    if opt.schedule == "constant":
        return 1.0
    if opt.schedule == "warmup_cosine":
        if progress < opt.warmup:
            return progress / opt.warmup
        return cosine((progress - opt.warmup) / (1.0 - opt.warmup))
    # slanted triangular: a short linear rise to the peak, a long linear fall to peak / ratio
    if progress < opt.cut_frac:
        x = progress / opt.cut_frac
    else:
        x = 1.0 - (progress - opt.cut_frac) / (1.0 - opt.cut_frac)
    return (1.0 + x * (opt.ratio - 1.0)) / opt.ratio


def optimizer_from(hp: Mapping[str, Any], **defaults: Any) -> Optimizer:
    """The :class:`Optimizer` named by a trial's hyperparameters (``optimizer``, ``schedule``,
    ``warmup``), falling back to ``defaults`` and then to SGD with a cosine schedule.

    >>> optimizer_from({"optimizer": "adamw", "schedule": "warmup_cosine", "warmup": 0.1}).name
    'adamw'
    """
    keys = {"optimizer": "name", "schedule": "schedule", "warmup": "warmup"}
    values = {field_: hp[key] for key, field_ in keys.items() if key in hp}
    return Optimizer(**{**defaults, **values})


@dataclass(frozen=True)
class Phase:
    """What trains from ``start_epoch`` until the next phase starts, and how."""

    name: str
    start_epoch: int
    trainable: tuple[str, ...]  # block names whose parameters all train
    bn_mode: str = "train"
    lr_scale: Mapping[str, float] = field(default_factory=dict)  # block -> multiplier (default 1)
    # fnmatch patterns over full parameter names ("block3.0.weight"): matching parameters train
    # too, in their block's param group (BitFit: "*.bias"; LoRA: "*.lora_A.*", "*.lora_B.*")
    params: tuple[str, ...] = ()
    optimizer: Optimizer = field(default_factory=Optimizer)
    # head-only phases: compute the frozen backbone's features once instead of every epoch
    cache_features: bool = False
    solver: str = "sgd"  # "sgd", or "lbfgs": scikit-learn's logistic regression on cached features
    solver_options: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"C": 0.1} for lbfgs
    # "run": the schedule spans the whole run; "phase": it restarts at this phase and ends with
    # it (LP-FT's fine-tuning has its own schedule in Kumar et al. 2022)
    span: str = "run"

    def scale(self, block: str) -> float:
        return float(self.lr_scale.get(block, 1.0))

    def selects(self, block: str, name: str) -> bool:
        """Whether the parameter ``name`` (full name) of ``block`` is selected to train."""
        return block in self.trainable or any(fnmatch.fnmatchcase(name, p) for p in self.params)


@dataclass(frozen=True)
class Plan:
    """The phases of one training run, ordered by ``start_epoch``; the first starts at epoch 0."""

    phases: tuple[Phase, ...]
    strategy: str = ""  # named in error messages; set by build_plan

    def validate(self, blocks: Sequence[str], epochs: int,
                 param_names: Sequence[str] | None = None) -> None:
        """Raise :class:`PlanError` when the plan cannot run on these blocks for this many epochs;
        with ``param_names`` (the model's full parameter names) every pattern must match one."""
        who = f"strategy {self.strategy!r}: " if self.strategy else ""
        if not self.phases or self.phases[0].start_epoch != 0:
            raise PlanError(f"{who}the first phase must start at epoch 0, but got {self.phases!r}.")
        starts = [p.start_epoch for p in self.phases]
        if sorted(set(starts)) != starts or starts[-1] >= epochs:
            raise PlanError(
                f"{who}phase start epochs must increase strictly and stay below {epochs=}, "
                f"but got {starts}."
            )
        for p in self.phases:
            if p.name == "all":
                raise PlanError("a phase cannot be named 'all': the tables use it for the whole run.")
            unknown = set(p.trainable) - set(blocks)
            if unknown:
                raise PlanError(
                    f"{who}phase {p.name!r} trains unknown blocks {sorted(unknown)}; blocks: {list(blocks)}."
                )
            if p.bn_mode not in BN_MODES:
                raise PlanError(f"bn_mode must be one of {BN_MODES}, but got {p.bn_mode!r}.")
            if p.span not in ("run", "phase"):
                raise PlanError(f"span must be 'run' or 'phase', but got {p.span!r}.")
            if p.solver not in SOLVERS:
                raise PlanError(f"solver must be one of {SOLVERS}, but got {p.solver!r}.")
            p.optimizer.check()
            if isinstance(p.params, str):
                raise PlanError(f"{who}phase {p.name!r}: params must be a tuple of patterns, "
                                f"but got the string {p.params!r}.")
            if (p.cache_features or p.solver == "lbfgs") and (
                    tuple(p.trainable) != (blocks[-1],) or p.params):
                raise PlanError(
                    f"{who}phase {p.name!r}: cached features and the lbfgs solver need a head-only "
                    f"phase (trainable=({blocks[-1]!r},), no params), but it trains {p.trainable} "
                    f"and {p.params}."
                )
            for pattern in p.params if param_names is not None else ():
                if not any(fnmatch.fnmatchcase(n, pattern) for n in param_names):
                    raise PlanError(
                        f"{who}phase {p.name!r}: pattern {pattern!r} matches no parameter of the "
                        f"model; names look like {list(param_names)[:3]}."
                    )

    def end_epoch(self, phase: Phase, epochs: int) -> int:
        """The epoch at which ``phase`` ends (the next phase's start, or ``epochs``)."""
        later = [p.start_epoch for p in self.phases if p.start_epoch > phase.start_epoch]
        return min(later, default=epochs)

    def phase_at(self, epoch: int) -> Phase:
        current = self.phases[0]
        for p in self.phases:
            if p.start_epoch <= epoch:
                current = p
        return current

    @property
    def bn_modes(self) -> str:
        """The BatchNorm modes of the phases, for the tables (``eval`` or ``eval>train``)."""
        return ">".join(p.bn_mode for p in self.phases)


class Strategy:
    """Base class of a fine-tuning strategy; subclasses are registered with ``STRATEGIES.register``.

    A subclass sets ``description`` and implements ``search_space`` (the hyperparameters Optuna
    searches, always including ``lr`` and ``weight_decay``) and ``plan``; it overrides
    ``prepare`` when it changes the model (adapters, prompt tokens).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # edges of the search range that are the hyperparameter's own limit, not a guess: a best
    # config there is no flag (see sweep.edge_of_range). Weight decay's bottom (1e-6 in
    # sgd_space, 1e-4 for AdamW's smaller lr) is "no decay" in effect: lr * wd * steps stays
    # far under 1e-3 over any run here, so nothing below it trains differently
    # (tests/strategies/test_contract.py checks this against weight_decay=0).
    limits: ClassVar[Mapping[str, str]] = {"weight_decay": "bottom"}

    def search_space(self, trial: optuna.Trial) -> dict[str, Any]:
        raise NotImplementedError

    def prepare(self, model: nn.Sequential, hp: Mapping[str, Any]) -> nn.Sequential:
        """Transform the model before training (its blocks and head stay where they are)."""
        return model

    def plan(self, blocks: Sequence[str], hp: Mapping[str, Any], epochs: int) -> Plan:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def sgd_space(trial: optuna.Trial, lr: tuple[float, float] = (1e-4, 0.3),
              weight_decay: tuple[float, float] = (1e-6, 1e-2)) -> dict[str, Any]:
    """The optimiser's hyperparameters every SGD-trained strategy searches: lr and weight decay.

    ``lr`` is the log-uniform range; a lone head tolerates larger steps than a whole network.
    ``weight_decay``'s bottom must be "no decay" in effect at the range's highest lr (see
    ``Strategy.limits``).
    """
    return {
        "lr": trial.suggest_float("lr", *lr, log=True),
        "weight_decay": trial.suggest_float("weight_decay", *weight_decay, log=True),
    }


def top_blocks(blocks: Sequence[str], k: int) -> tuple[str, ...]:
    """The top ``k`` blocks (the head is the top one)."""
    if not 1 <= k <= len(blocks):
        raise ValueError(f"k must be between 1 and {len(blocks)}, but got {k=}.")
    return tuple(blocks[len(blocks) - k :])


def layerwise_scales(blocks: Sequence[str], decay: float) -> dict[str, float]:
    """Discriminative learning rates: ``decay ** depth``, depth counted from the head (0)."""
    if not 0 < decay <= 1:
        raise ValueError(f"decay must be in (0, 1], but got {decay=}.")
    return {b: decay ** (len(blocks) - 1 - i) for i, b in enumerate(blocks)}


def unfreeze_starts(n_blocks: int, epochs: int, every: int = 1,
                    schedule: Sequence[int] | None = None) -> list[int]:
    """Start epochs of the phases that unfreeze one more block each, from the top.

    ``schedule`` given as data wins (it must start at 0 and increase strictly); otherwise a
    block is unfrozen every ``every`` epochs, the last ones merged when the epochs run out.
    """
    if schedule is not None:
        starts = [int(e) for e in schedule]
        if not starts or starts[0] != 0 or len(starts) > n_blocks:
            raise ValueError(f"schedule must start at 0 with at most {n_blocks} entries, but got {starts}.")
        return starts
    if every < 1:
        raise ValueError(f"every must be at least 1, but got {every=}.")
    return [e for e in (i * every for i in range(n_blocks)) if e < epochs]


def build_plan(name: str, strategy: Strategy, model: nn.Sequential, hp: Mapping[str, Any],
               epochs: int) -> tuple[nn.Sequential, Plan]:
    """Prepare ``model`` for strategy ``name`` and return it with the strategy's checked plan.

    The one place a plan meets a model: a pattern that matches no parameter (a mistyped
    adapter name, say) raises :class:`PlanError` naming the strategy, phase and pattern.
    """
    model = strategy.prepare(model, hp)
    names = blocks(model)
    plan = dataclasses.replace(strategy.plan(names, hp, epochs), strategy=name)
    plan.validate(names, epochs, [n for n, _ in model.named_parameters()])
    return model, plan
