"""The ``accuracy_vs_stored_bytes`` figure: what each task costs to keep, against its accuracy."""

from __future__ import annotations

import matplotlib.pyplot as plt

from harness.analysis.results import RunTables
from harness.report.figures import _pareto
from harness.report.plots import figure

# bytes stored per task (safetensors of what the strategy trained: the adapter, or the whole
# model), as the deployment measures record them
STORED = ["stored_bytes_task"]


@figure("accuracy_vs_stored_bytes", "Accuracy vs bytes stored per task",
        "Test accuracy (mean over the re-runs) against the bytes a task needs stored beside the "
        "shared backbone (the trained parameters saved with safetensors; log scale), per "
        "backbone and label budget. Circled cells are on the Pareto front (no other cell is "
        "both more accurate and smaller). Needs runs that record stored bytes.", order=26)
def accuracy_vs_stored_bytes(run: RunTables) -> plt.Figure:
    df, _ = _pareto.cost_and_accuracy(run.measurements, STORED)
    return _pareto.draw(df, "stored bytes per task (KiB, log scale)", 2**10)
