"""What the figures share: labels for varying columns, the final runs that finished, memory metrics."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

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


def _cell_text(row) -> str:
    if isinstance(row["skipped"], str) and row["skipped"]:
        return "skipped"
    if pd.isna(row["test_acc_mean"]):
        return "failed"
    ci = "" if pd.isna(row["test_acc_ci95"]) else f" ± {100 * row['test_acc_ci95']:.1f}"
    return f"{100 * row['test_acc_mean']:.1f}{ci}"
