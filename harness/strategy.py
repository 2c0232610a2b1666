"""The strategy contract: a strategy is data plus a schedule, never a loop of its own.

Given the model's ordered block names, the trial's hyperparameters and the epoch budget, a
strategy returns a :class:`Plan`: phases that start at epoch boundaries, each naming which blocks
train, an ``lr_scale`` per block (layer-wise decay is data here) and the BatchNorm mode. Its
Optuna search space sits beside it in ``search_space``. The one loop (``harness.loop``) applies it.

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

__all__ = ["BN_MODES", "Phase", "Plan", "Strategy"]

BN_MODES = ("train", "eval", "frozen")


@dataclass(frozen=True)
class Phase:
    """What trains from ``start_epoch`` until the next phase starts."""

    name: str
    start_epoch: int
    trainable: tuple[str, ...]  # block names whose parameters train
    bn_mode: str = "train"
    lr_scale: Mapping[str, float] = field(default_factory=dict)  # block -> multiplier (default 1)
    param_suffixes: tuple[str, ...] | None = None  # e.g. ("bias",): only matching parameters train

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
