"""The ``accuracy_vs_memory`` figure: PEFT's promise is accuracy at a fraction of the memory."""

from __future__ import annotations

import matplotlib.pyplot as plt

from harness.analysis.results import RunTables
from harness.report.figures import _pareto
from harness.report.figures._common import MEMORY
from harness.report.plots import figure


@figure("accuracy_vs_memory", "Accuracy vs peak training memory",
        "Test accuracy (mean over the re-runs) against the median peak memory rise of training "
        "(log scale), per backbone and label budget. Circled cells are on the Pareto front (no "
        "other cell is both more accurate and lighter), joined by a dashed line.", order=25)
def accuracy_vs_memory(run: RunTables) -> plt.Figure:
    df, metric = _pareto.cost_and_accuracy(run.measurements, list(MEMORY))
    return _pareto.draw(df, MEMORY[metric].replace("(MiB)", "(MiB, log scale)"), 2**20)
