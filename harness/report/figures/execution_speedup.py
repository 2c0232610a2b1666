"""The ``execution_speedup`` figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import seaborn as sns

from harness.analysis.results import RunTables
from harness.analysis.tables import execution_comparison
from harness.report.figures._common import _label
from harness.report.plots import NoData, figure


@figure("execution_speedup", "Eager vs compiled: speedup and compile time",
        "Steady-state training throughput of each execution over eager's (median of the "
        "re-runs) and, when an execution compiled, the wall time of the steps that compiled: "
        "cold (the cell's first run, a fresh inductor cache) and warm (median of the re-runs).", order=50)
def execution_speedup(run: RunTables) -> plt.Figure:
    cmp = execution_comparison(run.measurements)
    if cmp.empty:
        executions = sorted(set(run.measurements["execution"].dropna()) - {""})
        raise NoData(f"the run has final runs of one execution ({', '.join(executions) or 'none'}); "
                     "nothing to compare")
    cmp = cmp[cmp["execution"] != "eager"].copy()
    if cmp.empty:
        raise NoData("only eager has final runs; nothing to compare")
    group = _label(cmp, ("device", "dataset", "model", "budget"))
    cmp["group"] = cmp["strategy"] + ("" if group is None else "\n" + group.str.replace(" / ", ", "))
    panels = [("speedup_vs_eager", "speedup over eager (x)")]
    if (cmp[["cold_compile_s", "warm_compile_s"]].fillna(0) > 0).any(axis=None):
        panels += [("cold_compile_s", "cold compile (s)"), ("warm_compile_s", "warm compile (s)")]
    order = list(dict.fromkeys(cmp["group"]))
    fig, axes = plt.subplots(1, len(panels), sharey=True, squeeze=False,
                             figsize=(1.5 + 3.8 * len(panels),
                                      1.2 + 0.3 * len(order) * cmp["execution"].nunique()))
    axes = list(axes.flat)
    for ax, (col, xlabel) in zip(axes, panels, strict=True):
        d = cmp.dropna(subset=[col])
        sns.barplot(data=d, y="group", x=col, hue="execution", order=order, ax=ax,
                    legend=ax is axes[0])
        if d.empty:
            ax.text(0.5, 0.5, "no eager baseline", ha="center", transform=ax.transAxes)
        if col == "speedup_vs_eager":
            ax.axvline(1.0, color="0.3", lw=1, ls="--")
        ax.set(xlabel=xlabel, ylabel="")
        ax.tick_params(axis="y", labelsize=8)
    if len(panels) == 1:
        axes[0].set_xlabel("speedup over eager (x); no execution compiled")
    fig.tight_layout()
    if axes[0].get_legend() is not None:
        sns.move_legend(axes[0], "lower left", bbox_to_anchor=(0.0, 1.0), ncols=3, title="",
                        frameon=False)
    return fig
