"""The ``learning_curves`` figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import seaborn as sns

from harness.analysis.results import RunTables
from harness.report.figures._common import _final_ok, _label
from harness.report.plots import NoData, figure


@figure("learning_curves", "Learning curves per phase",
        "Validation accuracy per epoch of the final re-runs (line: mean, band: 95% bootstrap "
        "CI over seeds); the strategy's phases are named at the top, every other one shaded.", order=30)
def learning_curves(run: RunTables) -> plt.Figure:
    m = _final_ok(run.measurements)
    df = m[(m["split"] == "val") & (m["metric"] == "accuracy") & m["epoch"].notna()
           & (m["phase"] != "all")].dropna(subset=["value"]).copy()
    if df.empty:
        raise NoData("no final run recorded a validation accuracy per epoch")
    df["epoch"] = df["epoch"].astype(int)
    df["acc"] = 100 * df["value"]
    hue = _label(df, ("device", "dataset", "model", "budget", "execution"))
    if hue is not None:
        df["config"] = hue
    strategies = list(dict.fromkeys(df["strategy"]))
    g = sns.relplot(data=df, x="epoch", y="acc", hue="config" if hue is not None else None,
                    col="strategy", col_order=strategies, col_wrap=min(3, len(strategies)),
                    kind="line", marker="o", errorbar=("ci", 95), seed=0, height=3.2, aspect=1.3)
    for strategy, ax in g.axes_dict.items():
        d = df[df["strategy"] == strategy]
        starts = d.groupby("phase")["epoch"].min().sort_values()
        ends = [*starts.iloc[1:].tolist(), d["epoch"].max() + 1]
        for i, (phase, start) in enumerate(starts.items()):
            if i % 2:
                ax.axvspan(start - 0.5, ends[i] - 0.5, color="0.88", zorder=0)
            ax.text((start + ends[i] - 1) / 2, 1.01, phase, transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=8, color="0.3")
        ax.set_title(strategy, pad=14)
        ax.xaxis.get_major_locator().set_params(integer=True)
    g.set_axis_labels("epoch", "validation accuracy %")
    if g.legend is not None:
        g.legend.set_title("")
    return g.figure
