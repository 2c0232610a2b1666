"""The ``accuracy_vs_throughput`` figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import seaborn as sns

from harness.analysis.results import RunTables
from harness.report.figures._common import _label
from harness.report.plots import NoData, figure


@figure("accuracy_vs_throughput", "Accuracy vs training throughput",
        "Test accuracy (mean over the re-runs; bars: 95% CI, clipped to 0-100) against "
        "steady-state training samples/s, per device (rows) and dataset (columns). Circled cells "
        "are on the Pareto front of their label budget (no other cell is both more accurate and "
        "faster), joined by a dashed step line. Cells without a throughput (too few steps to "
        "time) are left out.", order=10)
def accuracy_vs_throughput(run: RunTables) -> plt.Figure:
    df = run.summary.dropna(subset=["test_acc_mean", "samples_per_s"]).copy()
    if df.empty:
        raise NoData("no cell has both a test accuracy and a steady-state throughput")
    df["acc"] = 100 * df["test_acc_mean"]
    ci = 100 * df["test_acc_ci95"].fillna(0)
    df["lo"] = df["acc"] - (df["acc"] - ci).clip(lower=0)
    df["hi"] = (df["acc"] + ci).clip(upper=100) - df["acc"]
    style = _label(df, ("model", "budget", "execution"))
    if style is not None:
        df["config"] = style
    g = sns.relplot(data=df, x="samples_per_s", y="acc", hue="strategy",
                    style="config" if style is not None else None, row="device", col="dataset",
                    kind="scatter", s=90, zorder=3, height=3.6, aspect=1.3,
                    facet_kws={"sharex": False, "sharey": False})
    several_budgets = df["budget"].nunique() > 1
    for (device, dataset), ax in g.axes_dict.items():
        d = df[(df["device"] == device) & (df["dataset"] == dataset)]
        ax.errorbar(d["samples_per_s"], d["acc"], yerr=[d["lo"], d["hi"]], fmt="none",
                    ecolor="0.55", capsize=3, zorder=2)
        front = d[d["pareto"].astype(str) == "True"]
        ax.scatter(front["samples_per_s"], front["acc"], s=260, facecolors="none",
                   edgecolors="0.2", linewidths=1.2, zorder=4)
        for budget, b in front.groupby("budget"):
            b = b.sort_values("samples_per_s")
            ax.step(b["samples_per_s"], b["acc"], where="pre", color="0.25", lw=1.2, ls="--",
                    zorder=1)
            if several_budgets:
                ax.annotate(f"shots={budget}", (b["samples_per_s"].iloc[0], b["acc"].iloc[0]),
                            textcoords="offset points", xytext=(6, 6), fontsize=8, color="0.3",
                            annotation_clip=True, clip_on=True)
        ax.set_xscale("log")
        ax.margins(x=0.12, y=0.08)
        ax.grid(True, which="both", alpha=0.3)
    g.set_axis_labels("training samples/s (steady state, log scale)", "test accuracy %")
    return g.figure
