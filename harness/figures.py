"""The figures of a run's report, in order; each reads the tables and nothing else.

Each draws what it has and raises :class:`harness.plots.NoData` when it has nothing: skipped
and failed cells are simply absent rows, a single seed has no CI (drawn without one), NaNs are
dropped per figure.
"""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from harness.plots import NoData, figure
from harness.tables import RunTables, execution_comparison

MEMORY = {  # whole-run peak memory rise over the trial's start, by what the device measures
    "peak_cpu_rss_increase": "peak CPU RSS rise (MiB)",
    "peak_cpu_rss_process_lifetime_increase": "peak CPU RSS rise, process lifetime (MiB)",
    "peak_cuda_allocated_increase": "peak CUDA allocated rise (MiB)",
}


def _label(df: pd.DataFrame, columns: tuple[str, ...]) -> pd.Series | None:
    """``"digits / shots=20"``: the values of ``columns`` that differ between rows; None if none do."""
    vary = [c for c in columns if c in df and df[c].nunique(dropna=False) > 1]
    if not vary:
        return None
    parts = [("shots=" + df[c].astype(str)) if c == "budget" else df[c].astype(str) for c in vary]
    out = parts[0]
    for p in parts[1:]:
        out = out + " / " + p
    return out


def _final_ok(m: pd.DataFrame) -> pd.DataFrame:
    return m[(m["stage"] == "final") & (m["status"] == "ok")]


def _grid(n: int, width: float, height: float, most: int = 4):
    cols = min(n, most)
    fig, axes = plt.subplots(-(-n // cols), cols, figsize=(width * cols, height * -(-n // cols)),
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


@figure("accuracy_vs_throughput", "Accuracy vs training throughput",
        "Test accuracy (mean over the re-runs; bars: 95% CI, clipped to 0-100) against "
        "steady-state training samples/s, per device (rows) and dataset (columns). Circled cells "
        "are on the Pareto front of their label budget (no other cell is both more accurate and "
        "faster), joined by a dashed step line. Cells without a throughput (too few steps to "
        "time) are left out.")
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


@figure("peak_memory", "Peak memory per strategy",
        "Whole-run peak memory rise over the trial's start (CPU resident set, or the CUDA "
        "allocator on a GPU) of the final re-runs: bars are the mean, dots the single re-runs.")
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


@figure("learning_curves", "Learning curves per phase",
        "Validation accuracy per epoch of the final re-runs (line: mean, band: 95% bootstrap "
        "CI over seeds); the strategy's phases are named at the top, every other one shaded.")
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


def _cell_text(row) -> str:
    if isinstance(row["skipped"], str) and row["skipped"]:
        return "skipped"
    if pd.isna(row["test_acc_mean"]):
        return "failed"
    ci = "" if pd.isna(row["test_acc_ci95"]) else f" ± {100 * row['test_acc_ci95']:.1f}"
    return f"{100 * row['test_acc_mean']:.1f}{ci}"


@figure("accuracy_heatmap", "Test accuracy per strategy and dataset",
        "Test accuracy % per strategy (rows) and dataset (columns, with whatever else varies "
        "between cells): mean ± 95% CI half-width over the re-runs (no ± with one seed); grey "
        "cells were skipped or have no successful re-run.")
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


@figure("execution_speedup", "Eager vs compiled: speedup and compile time",
        "Steady-state training throughput of each execution over eager's (median of the "
        "re-runs) and, when an execution compiled, the wall time of the steps that compiled: "
        "cold (the cell's first run, a fresh inductor cache) and warm (median of the re-runs).")
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


@figure("optimisation_history", "Optuna's optimisation history per cell",
        "Validation accuracy of each search trial by trial number, and the best so far (line); "
        "pruned trials (grey triangles) at the accuracy they were stopped at, failed trials "
        "(red crosses) at the bottom of the panel.")
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
