"""The records a trial hands forward: ``Measurement``, the tidy long table's row."""

from __future__ import annotations

from dataclasses import dataclass, fields


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
