"""The ``accuracy_heatmap`` figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import seaborn as sns

from harness.analysis.results import RunTables
from harness.report.figures._common import _cell_text, _label
from harness.report.plots import NoData, figure


@figure("accuracy_heatmap", "Test accuracy per strategy and dataset",
        "Test accuracy % per strategy (rows) and dataset (columns, with whatever else varies "
        "between cells): mean ± 95% CI half-width over the re-runs (no ± with one seed); grey "
        "cells were skipped or have no successful re-run.", order=40)
def accuracy_heatmap(run: RunTables) -> plt.Figure:
    s = run.summary.copy()
    if s.empty or s["test_acc_mean"].isna().all():
        raise NoData("no cell measured a test accuracy")
    s["skipped"] = s["skipped"].astype(object).where(s["skipped"].notna(), "")
    cols = _label(s, ("dataset", "device", "model", "budget", "execution"))
    s["column"] = (cols if cols is not None else s["dataset"].astype(str)).str.replace(" / ", "\n")
    s["acc"] = 100 * s["test_acc_mean"]
    s["text"] = s.apply(_cell_text, axis=1)
    rows, columns = list(dict.fromkeys(s["strategy"])), list(dict.fromkeys(s["column"]))
    acc = s.pivot(index="strategy", columns="column", values="acc").reindex(rows)[columns]
    text = s.pivot(index="strategy", columns="column", values="text").reindex(rows)[columns]
    fig, ax = plt.subplots(figsize=(1.6 + 1.45 * len(columns), 1.0 + 0.55 * len(rows)))
    sns.heatmap(acc.astype(float), annot=text.fillna("").to_numpy(), fmt="", cmap="viridis",
                linewidths=1, linecolor="white", ax=ax, annot_kws={"fontsize": 9},
                cbar_kws={"label": "test accuracy %"})
    ax.set_facecolor("0.85")
    for i, j in zip(*acc.isna().to_numpy().nonzero(), strict=True):  # masked: seaborn skips them
        ax.text(j + 0.5, i + 0.5, text.iat[i, j] if isinstance(text.iat[i, j], str) else "",
                ha="center", va="center", fontsize=9, color="0.35")
    ax.set(xlabel="", ylabel="")
    ax.tick_params(axis="x", rotation=0, labelsize=8)
    ax.tick_params(axis="y", rotation=0)
    return fig
