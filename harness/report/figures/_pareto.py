"""Accuracy against a cost per cell, with each label budget's Pareto front (more accurate and
cheaper): what the PEFT figures share. Reads the tidy table only."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from harness.report.figures._common import _final_ok, _grid
from harness.report.plots import NoData

CELL = ["device", "dataset", "model", "budget", "strategy", "execution"]


def cost_and_accuracy(m: pd.DataFrame, metrics: list[str]) -> tuple[pd.DataFrame, str]:
    """Per cell: mean final test accuracy and the median of the first of ``metrics`` recorded
    (whole run, whichever split it is recorded on: memory on ``train``, stored bytes on
    ``deploy``); NoData naming the metrics when no cell has one."""
    f = _final_ok(m)
    acc = f[(f["metric"] == "accuracy") & (f["split"] == "test") & f["epoch"].isna()]
    for metric in metrics:
        cost = f[(f["metric"] == metric) & (f["phase"] == "all")]
        if len(cost):
            df = pd.concat([acc.groupby(CELL)["value"].mean().rename("acc"),
                            cost.groupby(CELL)["value"].median().rename("cost")], axis=1).dropna()
            if len(df):
                return df.reset_index(), metric
    raise NoData(f"no final run recorded {' or '.join(metrics)} beside its test accuracy")


def on_front(d: pd.DataFrame) -> np.ndarray:
    """Cells no other cell beats on both axes (at least as accurate and as cheap, one strictly)."""
    a, c = d["acc"].to_numpy(), d["cost"].to_numpy()
    return np.array([not ((a >= a[i]) & (c <= c[i]) & ((a > a[i]) | (c < c[i]))).any()
                     for i in range(len(d))])


def draw(df: pd.DataFrame, xlabel: str, scale: float) -> plt.Figure:
    """One panel per (model, budget): a point per strategy, the front joined by a dashed line."""
    groups = list(df.groupby(["model", "budget"], sort=True))
    fig, axes = _grid(len(groups), 4.6, 3.6, most=3)
    strategies = sorted(df["strategy"].unique())
    colours = {s: f"C{i % 10}" for i, s in enumerate(strategies)}
    for ax, ((model, budget), d) in zip(axes, groups, strict=True):
        d = d.sort_values("cost")
        x, y = d["cost"] / scale, 100 * d["acc"]
        for s, xi, yi in zip(d["strategy"], x, y, strict=True):
            ax.scatter(xi, yi, s=70, color=colours[s], label=s, zorder=3)
        front = on_front(d)
        ax.step(x[front], y[front], where="post", color="0.25", ls="--", lw=1.1, zorder=1)
        ax.scatter(x[front], y[front], s=200, facecolors="none", edgecolors="0.2", zorder=4)
        ax.set_xscale("log")
        ax.set_title(f"{model}, shots={budget}", fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy %")
        ax.grid(True, which="both", alpha=0.3)
    handles = {h.get_label(): h for ax in axes for h in ax.collections if h.get_label() in colours}
    fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=min(5, len(handles)),
               fontsize=8, bbox_to_anchor=(0.5, 1.02))
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    return fig
