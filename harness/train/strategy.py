"""The strategy contract: a strategy is data plus a schedule, never a loop of its own.

Given the model's ordered block names, the trial's hyperparameters and the epoch budget, a
strategy returns a :class:`Plan`: phases that start at epoch boundaries, each naming which blocks
train, an ``lr_scale`` per block (layer-wise decay is data here) and the BatchNorm mode. Its
Optuna search space sits beside it in ``search_space``. The one loop (``harness.train.loop``) applies it.

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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import optuna

__all__ = [
    "BN_MODES",
    "SOLVERS",
    "Phase",
    "Plan",
    "Strategy",
    "layerwise_scales",
    "top_blocks",
    "unfreeze_starts",
]

BN_MODES = ("train", "eval", "frozen")
SOLVERS = ("sgd", "lbfgs")


@dataclass(frozen=True)
class Phase:
    """What trains from ``start_epoch`` until the next phase starts."""

    name: str
    start_epoch: int
    trainable: tuple[str, ...]  # block names whose parameters train
    bn_mode: str = "train"
    lr_scale: Mapping[str, float] = field(default_factory=dict)  # block -> multiplier (default 1)
    # block -> parameter-name suffixes: only matching parameters of that block train (BitFit)
    param_suffixes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # head-only phases: compute the frozen backbone's features once instead of every epoch
    cache_features: bool = False
    solver: str = "sgd"  # "sgd", or "lbfgs": scikit-learn's logistic regression on cached features
    solver_options: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"C": 0.1} for lbfgs
    # "run": one cosine over the whole run; "phase": the cosine restarts at this phase and ends
    # with it (LP-FT's fine-tuning has its own schedule in Kumar et al. 2022)
    schedule: str = "run"

    def scale(self, block: str) -> float:
        return float(self.lr_scale.get(block, 1.0))


@dataclass(frozen=True)
class Plan:
    """The phases of one training run, ordered by ``start_epoch``; the first starts at epoch 0."""

    phases: tuple[Phase, ...]

    def validate(self, blocks: Sequence[str], epochs: int) -> None:
        """Raise ValueError when the plan cannot run on these blocks for this many epochs."""
        if not self.phases or self.phases[0].start_epoch != 0:
            raise ValueError(f"the first phase must start at epoch 0, but got {self.phases!r}.")
        starts = [p.start_epoch for p in self.phases]
        if sorted(set(starts)) != starts or starts[-1] >= epochs:
            raise ValueError(
                f"phase start epochs must increase strictly and stay below {epochs=}, "
                f"but got {starts}."
            )
        for p in self.phases:
            if p.name == "all":
                raise ValueError("a phase cannot be named 'all': the tables use it for the whole run.")
            unknown = set(p.trainable) - set(blocks)
            if unknown:
                raise ValueError(
                    f"phase {p.name!r} trains unknown blocks {sorted(unknown)}; blocks: {list(blocks)}."
                )
            if p.bn_mode not in BN_MODES:
                raise ValueError(f"bn_mode must be one of {BN_MODES}, but got {p.bn_mode!r}.")
            if p.schedule not in ("run", "phase"):
                raise ValueError(f"schedule must be 'run' or 'phase', but got {p.schedule!r}.")
            if p.solver not in SOLVERS:
                raise ValueError(f"solver must be one of {SOLVERS}, but got {p.solver!r}.")
            if (p.cache_features or p.solver == "lbfgs") and tuple(p.trainable) != (blocks[-1],):
                raise ValueError(
                    f"phase {p.name!r}: cached features and the lbfgs solver need a head-only "
                    f"phase (trainable=({blocks[-1]!r},)), but it trains {p.trainable}."
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
    searches, always including ``lr`` and ``weight_decay``) and ``plan``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def search_space(self, trial: optuna.Trial) -> dict[str, Any]:
        raise NotImplementedError

    def plan(self, blocks: Sequence[str], hp: Mapping[str, Any], epochs: int) -> Plan:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def sgd_space(trial: optuna.Trial, lr: tuple[float, float] = (1e-4, 0.3)) -> dict[str, Any]:
    """The optimiser's hyperparameters every SGD-trained strategy searches: lr and weight decay.

    ``lr`` is the log-uniform range; a lone head tolerates larger steps than a whole network.
    """
    return {
        "lr": trial.suggest_float("lr", *lr, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
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
