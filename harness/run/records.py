"""The records a trial hands forward: ``Measurement``, the tidy long table's row, and ``TrialRow``,
the trials table's row."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Measurement:
    run_id: str
    study: str
    cell: str
    stage: str
    trial: int
    phase: str
    strategy: str
    dataset: str
    model: str
    budget: str
    device: str
    execution: str
    seed: int
    split: str
    metric: str
    value: float
    unit: str
    epoch: int | None
    status: str


COLUMNS = tuple(f.name for f in fields(Measurement))

_OOD, _PARAM = "ood_accuracy:", "param_"  # prefixes of the columns named after an OOD set, a parameter


@dataclass(frozen=True)
class TrialRow:
    """One row of the trials table: a planned trial, run or not, and what became of it.

    :meth:`to_dict` is the only place that decides the table's columns and their order: the
    fixed ones, then ``params`` (the JSON of ``hp``), one ``ood_accuracy:<set>`` per OOD set,
    one ``param_<name>`` per parameter, and the columns only some rows have. A trial that never
    ran (``ran=False``: a skipped cell, an interrupted or never started trial) has no seed,
    BN mode, accuracies, seconds or worker columns.
    """

    run_id: str
    study: str
    cell: str
    stage: str  # "search" or "final"
    trial: int | None  # the Optuna trial number; None for a skipped cell, which has no trials
    strategy: str
    budget: str  # budget_label(shots)
    dataset: str
    model: str
    device: str
    execution: str
    status: str  # "ok", "pruned", "failed", "skipped", or the Optuna state of a trial never run
    error: str = ""
    hp: Mapping[str, Any] = field(default_factory=dict, hash=False)
    ran: bool = True
    # the columns of a trial that ran
    seed: int | None = None
    bn_mode: str = ""
    val_accuracy: float = math.nan
    test_accuracy: float | None = None  # final runs only
    seconds: float = math.nan
    ood_accuracy: Mapping[str, float] = field(default_factory=dict, hash=False)  # final runs only
    worker: str = ""  # host:pid of the process that ran it
    # the columns the run's storage adds; None leaves the column out of the row
    search_trial: int | None = None  # a final run of rerun="all": the search trial it re-runs
    pareto: bool | None = None  # a search trial of a multi-objective run: on the Pareto front?
    # a search trial whose numeric hyperparameters sit in the outer 5% of their searched range
    # (log scale where searched log): "lr=0.97 top of [0.001, 1] log"; "" when none does
    edge_of_range: str | None = None
    retry_of: int | None = None  # a re-queued interrupted trial: its number (every trial has the column)
    # forgetting: a final run's accuracy on the pretraining task under the pretrained head
    # (studies that pretrain their backbone); None leaves the column out of the row
    source_accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The row as the trials table takes it (key order decides the table's column order)."""
        row: dict[str, Any] = {"run_id": self.run_id, "study": self.study, "cell": self.cell,
                               "stage": self.stage, "trial": self.trial}
        if self.ran:
            row["seed"] = self.seed
        row |= {"strategy": self.strategy, "budget": self.budget, "dataset": self.dataset,
                "model": self.model, "device": self.device, "execution": self.execution,
                "status": self.status, "error": self.error}
        if self.ran:
            row |= {"bn_mode": self.bn_mode, "val_accuracy": self.val_accuracy,
                    "test_accuracy": self.test_accuracy, "seconds": self.seconds}
        row["params"] = json.dumps(dict(self.hp), sort_keys=True)
        row |= {f"{_OOD}{k}": v for k, v in self.ood_accuracy.items()}
        row |= {f"{_PARAM}{k}": v for k, v in self.hp.items()}
        if self.ran:
            row["worker"] = self.worker
        for name in ("search_trial", "pareto", "edge_of_range", "source_accuracy"):
            if getattr(self, name) is not None:
                row[name] = getattr(self, name)
        if self.trial is not None:
            row["retry_of"] = self.retry_of
        return row

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> TrialRow:
        """The row :meth:`to_dict` gave, read back (the run's storage keeps each trial's as JSON)."""
        hp = {k.removeprefix(_PARAM): v for k, v in row.items() if k.startswith(_PARAM)}
        ood = {k.removeprefix(_OOD): v for k, v in row.items() if k.startswith(_OOD)}
        plain = {k: v for k, v in row.items() if k in _PLAIN}
        unknown = set(row) - set(plain) - {"params"} - {_PARAM + k for k in hp} - {_OOD + k for k in ood}
        if unknown:
            raise ValueError(f"a trial row has no column {sorted(unknown)}; it has {sorted(_PLAIN)}, "
                             f"params, {_PARAM}<name> and {_OOD}<set>.")
        return cls(**plain, hp=hp, ood_accuracy=ood, ran="seed" in row)


_PLAIN = frozenset(f.name for f in fields(TrialRow)) - {"hp", "ood_accuracy", "ran"}
