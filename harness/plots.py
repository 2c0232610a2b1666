"""Seaborn figures drawn from the tables alone (never from models)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from harness._io import atomic_write_bytes

__all__ = ["accuracy_vs_throughput", "learning_curves", "write_all"]


def _save(fig: plt.Figure, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip("."), dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def accuracy_vs_throughput(summary: pd.DataFrame) -> plt.Figure:
    """Test accuracy (mean, 95% CI over seeds) against steady-state training samples/s."""
    df = summary.dropna(subset=["test_acc_mean", "samples_per_s"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.scatterplot(data=df, x="samples_per_s", y="test_acc_mean", hue="strategy", style="budget",
                    s=90, ax=ax, zorder=3)
    ax.errorbar(df["samples_per_s"], df["test_acc_mean"], yerr=df["test_acc_ci95"].fillna(0),
                fmt="none", ecolor="0.4", capsize=3, zorder=2)
    ax.set_xscale("log")
    ax.set_xlabel("training throughput, steady state (samples/s, log scale)")
    ax.set_ylabel("test accuracy (mean, 95% CI over seeds)")
    ax.set_title("Accuracy vs training speed per strategy and label budget (shots per class)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", borderaxespad=0)
    return fig


def learning_curves(measurements: pd.DataFrame) -> plt.Figure:
    """Validation accuracy per epoch of the final runs, one panel per budget."""
    df = measurements[(measurements["stage"] == "final") & (measurements["split"] == "val")
                      & (measurements["metric"] == "accuracy") & measurements["epoch"].notna()]
    g = sns.relplot(data=df.astype({"epoch": int}), x="epoch", y="value", hue="strategy",
                    col="budget", kind="line", errorbar=("ci", 95), height=3.2, aspect=1.1)
    g.set_axis_labels("epoch", "validation accuracy")
    g.figure.suptitle("Learning curves of the final runs (mean, 95% CI over seeds)", y=1.04)
    return g.figure


def write_all(run_dir: str | Path, measurements: pd.DataFrame, summary: pd.DataFrame) -> list[Path]:
    """Write every figure as PNG into ``run_dir/plots``; returns the paths."""
    out = Path(run_dir) / "plots"
    paths = []
    for name, make, data in (("accuracy_vs_throughput", accuracy_vs_throughput, summary),
                             ("learning_curves", learning_curves, measurements)):
        path = out / f"{name}.png"
        _save(make(data), path)
        paths.append(path)
    return paths
