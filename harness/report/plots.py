"""The run's figures, drawn from its tables alone (never from models), each as PNG and SVG.

A figure is a function ``draw(run: RunTables) -> matplotlib Figure`` registered with
``@figure`` in its own module of ``harness/report/figures/``; one with nothing to draw raises :class:`NoData` with
the reason, and :func:`draw_all` turns that into an omitted :class:`Plot` the report names, so
a run with skipped or failed cells, one seed or NaNs still gets every other figure.

>>> plots = draw_all(run_dir, harness.load(run_dir))   # doctest: +SKIP
>>> {p.name: p.omitted for p in plots if p.omitted}   # doctest: +SKIP
{'execution_speedup': 'the run has one execution (eager); nothing to compare'}
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from harness._io import atomic_write_bytes
from harness.analysis.results import RunTables
from harness.registry import Registry

__all__ = ["FIGURES", "NoData", "Plot", "draw_all", "figure", "in_order"]


class NoData(Exception):  # a reason, not an error: like optuna.TrialPruned
    """A figure has nothing to draw; the message says why (it goes into the report)."""


@dataclass(frozen=True)
class Figure:
    name: str
    title: str
    caption: str
    draw: Callable[[RunTables], plt.Figure]
    order: int = 0  # place in the report, lower first


@dataclass(frozen=True)
class Plot:
    """A figure written (``png`` and ``svg`` set) or omitted (``omitted`` says why)."""

    name: str
    title: str
    caption: str
    png: Path | None = None
    svg: Path | None = None
    omitted: str = ""


FIGURES: Registry = Registry("figure", package="harness.report.figures")


def figure(name: str, title: str, caption: str, *, order: int):
    """Register ``draw`` as the figure ``name``, saved as ``plots/<name>.png`` and ``.svg``.

    ``order`` places it in the report (lower first); a new figure is one new module in
    ``harness/report/figures/`` and edits no list.
    """
    def register(draw: Callable[[RunTables], plt.Figure]):
        FIGURES.add(name, Figure(name, title, caption, draw, order))
        return draw
    return register


def in_order() -> list[Figure]:
    """Every registered figure, in the report's order."""
    return sorted(FIGURES.values(), key=lambda f: f.order)


def _save(fig: plt.Figure, base: Path) -> tuple[Path, Path]:
    paths = base.with_suffix(".png"), base.with_suffix(".svg")
    for path in paths:
        buf = io.BytesIO()
        meta = {"Date": None} if path.suffix == ".svg" else {}  # same tables, same bytes
        fig.savefig(buf, format=path.suffix[1:], dpi=110, bbox_inches="tight", metadata=meta)
        atomic_write_bytes(path, buf.getvalue())
    return paths


def _draw(f: Figure, run: RunTables, base: Path) -> Plot:
    before, rng = set(plt.get_fignums()), np.random.get_state()
    np.random.seed(0)  # seaborn's strip-plot jitter draws from the global generator
    try:
        with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85), \
                plt.rc_context({"svg.hashsalt": f.name, "svg.fonttype": "path"}):
            png, svg = _save(f.draw(run), base)
        return Plot(f.name, f.title, f.caption, png, svg)
    except NoData as e:
        return Plot(f.name, f.title, f.caption, omitted=str(e))
    except Exception as e:  # noqa: BLE001 - a figure's bug must not cost a finished run its report
        warnings.warn(f"figure {f.name!r} failed: {type(e).__name__}: {e}", stacklevel=3)
        return Plot(f.name, f.title, f.caption,
                    omitted=f"drawing it failed ({type(e).__name__}: {e})")
    finally:
        np.random.set_state(rng)
        for num in set(plt.get_fignums()) - before:
            plt.close(num)


def draw_all(run_dir: str | Path, run: RunTables) -> list[Plot]:
    """Write every figure into ``run_dir/plots`` as PNG and SVG; an omitted one says why.

    A figure that fails for a reason of its own is omitted too (with the error and a warning),
    so a finished run always gets its report; an omitted figure's old files are removed, so
    the folder never shows a plot of an earlier version of the tables.
    """
    out = Path(run_dir) / "plots"
    plots = []
    for f in in_order():
        plot = _draw(f, run, out / f.name)
        if plot.omitted:
            for suffix in (".png", ".svg"):
                (out / f.name).with_suffix(suffix).unlink(missing_ok=True)
        plots.append(plot)
    return plots
