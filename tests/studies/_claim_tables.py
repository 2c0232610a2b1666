"""Hand-built run tables for claim tests: runs with chosen accuracies, written as a study writes them.

:func:`runs` makes the rows of one cell (one per value, seeds 1000, 1001, ...); :func:`run_tables`
turns rows into :class:`RunTables` with the tidy measurements of every final run that finished
(test accuracy, OOD accuracies, feature distortion, samples/s) and the trials table.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from harness.analysis.results import RunTables
from harness.analysis.tables import measurements_frame
from harness.run.records import Measurement

MNIST_5_9 = {"dataset": "mnist5k", "classes": [5, 6, 7, 8, 9]}  # 500 test images
DIVERGED = "diverged"  # a run that ran and stopped on a non-finite loss


def runs(strategy: str, test, *, stage: str = "final", budget: str = "all", device: str = "cpu",
         dataset: str = "mnist5k", model: str = "small_cnn", execution: str = "eager",
         val=None, ood: dict[str, list[float]] | None = None,
         distortion: dict[str, list[float]] | None = None, speed: list[float] | None = None,
         params: dict | None = None, status: str | None = None, error: str = "",
         search_trial: int | None = None, first_seed: int = 1000) -> list[dict]:
    """The rows of one cell: one per value of ``test`` (:data:`DIVERGED`: that run diverged)."""
    cell = f"{device}/{dataset}/{model}/shots={budget}/{strategy}/{execution}"
    out = []
    for i, acc in enumerate(test):
        diverged = acc == DIVERGED
        out.append({
            "cell": cell, "stage": stage, "seed": first_seed + i, "strategy": strategy,
            "budget": budget, "device": device, "dataset": dataset, "model": model,
            "execution": execution,
            "status": status or ("failed" if diverged else "ok"),
            "error": "NonFiniteLossError: loss is nan at epoch 1" if diverged else error,
            "val_accuracy": math.nan if diverged else (val[i] if val is not None else acc),
            "test_accuracy": math.nan if diverged or stage != "final" else acc,
            "params": dict(params or {}), "search_trial": search_trial,
            "ood": {k: v[i] for k, v in (ood or {}).items()},
            "distortion": {k: v[i] for k, v in (distortion or {}).items()},
            "speed": None if speed is None else speed[i],
        })
    return out


def run_tables(*cells: list[dict], spec: dict | None = None) -> RunTables:
    """The tables of a run made of ``cells`` (lists of :func:`runs` rows)."""
    rows, records, trial_of = [], [], {}
    for row in (r for cell in cells for r in cell):
        trial = trial_of[row["cell"], row["stage"]] = trial_of.get((row["cell"], row["stage"]), -1) + 1
        trow = {k: row[k] for k in ("cell", "stage", "seed", "strategy", "budget", "dataset",
                                    "model", "device", "execution", "status", "error",
                                    "val_accuracy", "test_accuracy")}
        trow |= {"trial": trial, "params": json.dumps(row["params"], sort_keys=True),
                 **{f"param_{k}": v for k, v in row["params"].items()},
                 **({} if row["search_trial"] is None else {"search_trial": row["search_trial"]})}
        rows.append(trow)
        if row["stage"] != "final" or row["status"] != "ok":
            continue
        base = Measurement("r", "study", row["cell"], "final", trial, "all", row["strategy"],
                           row["dataset"], row["model"], row["budget"], row["device"],
                           row["execution"], row["seed"], "test", "accuracy",
                           row["test_accuracy"], "fraction", None, "ok")
        records.append(base)
        for name, acc in row["ood"].items():
            records.append(Measurement(**{**base.__dict__, "split": f"ood:{name}", "value": acc}))
        for split, value in row["distortion"].items():
            records.append(Measurement(**{**base.__dict__, "split": split, "value": value,
                                          "metric": "feature_distortion"}))
        if row["speed"] is not None:
            records.append(Measurement(**{**base.__dict__, "split": "train", "value": row["speed"],
                                          "metric": "samples_per_s", "unit": "samples/s"}))
    return RunTables(measurements_frame(records), pd.DataFrame(rows), pd.DataFrame(), {},
                     dict(MNIST_5_9 if spec is None else spec))
