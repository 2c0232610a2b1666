"""The ``optimisation_history`` figure."""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import pandas as pd

from harness.analysis.results import RunTables
from harness.report.figures._common import _grid, _label
from harness.report.plots import NoData, figure


@figure("optimisation_history", "Optuna's optimisation history per cell",
        "Validation accuracy of each search trial by trial number, and the best so far (line); "
        "pruned trials (grey triangles) at the accuracy they were stopped at, failed trials "
        "(red crosses) at the bottom of the panel.", order=60)
def optimisation_history(run: RunTables) -> plt.Figure:
    t = run.trials
    t = t[(t["stage"] == "search") & (t["status"] != "skipped")].copy() if len(t) else t
    if t.empty:
        raise NoData("the run has no search trials (every cell was skipped)")
    t["acc"] = 100 * pd.to_numeric(t["val_accuracy"], errors="coerce")
    names = _label(t, ("device", "dataset", "model", "budget", "strategy", "execution"))
    t["name"] = names if names is not None else t["strategy"]
    cells = list(dict.fromkeys(t["cell"]))
    fig, axes = _grid(len(cells), width=3.6, height=2.8)
    for cell, ax in zip(cells, axes, strict=True):
        d = t[t["cell"] == cell].sort_values("trial")
        ok, pruned = d[d["status"] == "ok"], d[d["status"] == "pruned"]
        failed = d[~d["status"].isin(["ok", "pruned"])]
        ax.scatter(ok["trial"], ok["acc"], s=22, color="C0", label="ok", zorder=3)
        ax.step(d["trial"], ok["acc"].cummax().reindex(d.index).ffill(), where="post",
                color="C1", lw=1.5, label="best so far")
        low = ax.get_ylim()[0] if d["acc"].notna().any() else 0.0  # where a trial without one sits
        for rows, marker, color, name in ((pruned, "v", "0.55", "pruned"), (failed, "x", "C3", "failed")):
            ax.scatter(rows["trial"], rows["acc"].fillna(low), s=28, marker=marker, color=color,
                       label=name, zorder=3, clip_on=False)
        ax.set_title(textwrap.fill(d["name"].iloc[0], 34), fontsize=9)
        ax.set(xlabel="trial", ylabel="val accuracy %")
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles = {h.get_label(): h for ax in axes for h in ax.get_legend_handles_labels()[0]}
    fig.legend(handles.values(), handles.keys(), loc="upper center", ncols=len(handles),
               bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.94 if len(axes) > 4 else 0.9))
    return fig
