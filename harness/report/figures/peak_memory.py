"""The ``peak_memory`` figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import seaborn as sns

from harness.analysis.results import RunTables
from harness.report.figures._common import MEMORY, _final_ok, _grid, _label
from harness.report.plots import NoData, figure


@figure("peak_memory", "Peak memory per strategy",
        "Whole-run peak memory rise over the trial's start (CPU resident set, or the CUDA "
        "allocator on a GPU) of the final re-runs: bars are the mean, dots the single re-runs.", order=20)
def peak_memory(run: RunTables) -> plt.Figure:
    m = _final_ok(run.measurements)
    df = m[m["metric"].isin(list(MEMORY)) & (m["phase"] == "all")].dropna(subset=["value"]).copy()
    if df.empty:
        raise NoData("no final run recorded its peak memory")
    df["MiB"] = df["value"] / 2**20
    hue = _label(df, ("dataset", "model", "budget", "execution"))
    df["config"] = hue if hue is not None else "all"
    order, hue_order = list(dict.fromkeys(df["strategy"])), list(dict.fromkeys(df["config"]))
    panels = list(df.groupby(["device", "metric"], sort=False))
    fig, axes = _grid(len(panels), width=max(4.0, 1.2 * len(order) + 1.5), height=3.6)
    for ((device, metric), d), ax in zip(panels, axes, strict=True):
        kw = {"data": d, "x": "strategy", "y": "MiB", "hue": "config", "order": order,
              "hue_order": hue_order, "ax": ax}
        sns.barplot(**kw, errorbar=None, alpha=0.6, legend=hue is not None and ax is axes[0])
        sns.stripplot(**kw, dodge=True, palette=["0.15"] * len(hue_order), size=4, legend=False)
        ax.set(title=str(device), xlabel="", ylabel=MEMORY[metric])
        ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()  # before the legend moves out: bbox_inches="tight" makes room for it
    if hue is not None:
        sns.move_legend(axes[0], "upper left", bbox_to_anchor=(1.0, 1.0), title="", fontsize=8)
    return fig
