"""The run's report, ``report.md`` and a self-contained ``report.html``, written from its tables.

:func:`write_reports` reads the run folder back (``harness.analysis.results.load``), draws every figure
(:mod:`harness.report.plots`), lays the report out once as :class:`Section` s and renders it twice:
Markdown here, HTML in :mod:`harness.report.html`. Both the end of a study and
``python -m harness report RUN_DIR`` call it, so a report can be rewritten at any time.

>>> md, html = write_reports("results/finetune_vs_probe/20261128-201700-ab12")   # doctest: +SKIP"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from harness._io import atomic_write_text
from harness.analysis.results import RunTables, load
from harness.analysis.tables import execution_comparison
from harness.analysis.text import _text_col, cell_text, markdown_table
from harness.errors import UserError

if TYPE_CHECKING:  # seaborn and matplotlib load when a report is drawn, not with the CLI
    from harness.report.plots import Plot

METHOD = """Each cell: {trials} Optuna trials selected on validation accuracy, then the best config \
re-run with {seeds} seeds; test accuracy is mean ± 95% CI (Student's t) over those seeds. \
Throughput is steady-state training samples/s (warm-up steps excluded), median over the re-runs; \
peak MiB is the rise of peak memory over the trial's start; MFLOP/sample counts forward and \
backward of what trains (torch.utils.flop_counter); util % is achieved FLOP/s over this device's \
empirical matmul peak (not a datasheet figure); s to target is training time until validation \
accuracy first reached the study's target (empty: never reached, or no target). \
The labelled subset of each budget is fixed by the split seed, so the CI covers initialisation \
and data order, not which examples were labelled."""


@dataclass(frozen=True)
class Section:
    """One part of the report: Markdown-flavoured text (paragraphs, `code`, **bold**, > warning
    lines), then a table, figures, and raw text (shown folded)."""

    title: str
    anchor: str
    text: str = ""
    table: pd.DataFrame | None = None
    plots: tuple[Plot, ...] = ()
    raw: str = ""


def _acc(row, errors: dict[str, str]) -> str:
    if isinstance(row.get("skipped"), str) and row["skipped"]:
        return f"skipped: {row['skipped']}"
    if pd.isna(row["test_acc_mean"]):
        return f"failed: {errors[row['cell']]}" if row["cell"] in errors else "failed"
    ci = "" if pd.isna(row["test_acc_ci95"]) else f" ± {100 * row['test_acc_ci95']:.1f}"
    return f"{100 * row['test_acc_mean']:.1f}{ci}"


_OPTIONAL = (  # (column in the report, column in summary.csv, scale, decimals)
    ("trainable %", "trainable_share", 100, 2),
    ("stored MiB/task", "stored_task_mib", 1, 3),
    ("source acc %", "source_acc_mean", 100, 1),
    ("ms b1", "latency_b1_ms", 1, 2),
    ("ms b1 merged", "latency_b1_merged_ms", 1, 2),
    ("ms b64", "latency_b64_ms", 1, 1),
    ("ms b64 merged", "latency_b64_merged_ms", 1, 1),
)


def summary_view(summary: pd.DataFrame, trials: pd.DataFrame | None = None) -> pd.DataFrame:
    """The summary as people read it: accuracy as mean ± CI in percent, speed, memory; a skipped
    cell's reason, and with ``trials`` a failed cell's first error, in the accuracy column."""
    errors = {}
    if trials is not None and len(trials) and "error" in trials:
        bad = trials[(trials["stage"] == "final") & (trials["status"] == "failed")]
        errors = bad.dropna(subset=["error"]).groupby("cell")["error"].first().to_dict()
    view = pd.DataFrame({
        "device": summary["device"],
        "dataset": summary["dataset"],
        "model": summary["model"],
        "budget": summary["budget"],
        "strategy": summary["strategy"],
        "execution": summary["execution"],
        "test acc % (95% CI)": summary.apply(_acc, axis=1, errors=errors),
        "seeds": summary["n_seeds"],
        "best val %": (100 * summary["best_val_acc"]).round(1),
        # validation labels that selected the config: few of them make "best val" noisy
        "val labels": summary["val_labels"] if "val_labels" in summary else float("nan"),
        "samples/s": summary["samples_per_s"].round(0),
        "peak MiB": summary["peak_memory_mib"].round(0),
        "MFLOP/sample": (1000 * summary["train_gflops_per_sample"]).round(1),
        "util % (matmul)": (100 * summary["utilisation"]).round(1),
        "s to target": summary["time_to_target_s"].round(2),
        "BN": summary["bn_mode"],
        "trials ok/pruned/failed": summary.apply(
            lambda r: f"{r['trials_ok']}/{r['trials_pruned']}/{r['trials_failed']}", axis=1),
        # non-dominated on (test accuracy, samples/s) among the cells of its device and budget
        "Pareto": summary["pareto"].astype(str).map({"True": "yes"}).fillna(""),
        # a best config in the outer 5% of its range: a flag, not a result
        "edge of range": (summary["edge_of_range"].astype(object).fillna("")
                          if "edge_of_range" in summary else ""),
    })
    # PEFT's costs and forgetting: shown where some cell measured them (``_optional``)
    for name, col, scale, digits in _OPTIONAL:
        if col in summary and summary[col].notna().any():
            view[name] = (scale * summary[col]).round(digits)
    # an axis with one value is said once, in the report's header, not on every row
    return view.drop(columns=[c for c in ("device", "dataset", "model") if view[c].nunique() == 1])


def _names(values, code: bool = True) -> str:
    values = ["all" if v is None else str(v) for v in (values if values is not None else [None])]
    return ", ".join(f"`{v}`" if code else v for v in values) or "none"


def _axes(run: RunTables, seconds: float | None) -> pd.DataFrame:
    spec, env, s = run.spec, run.env, run.summary
    skipped = int(_text_col(s["skipped"]).ne("").sum()) if len(s) else 0
    used = f"; this machine: `{env.get('device')}` ({env.get('device_name')})"
    if seconds is not None:
        took = f"wall time {seconds:.0f} s"
    else:
        took = f"{pd.to_numeric(run.trials.get('seconds'), errors='coerce').sum():.0f} s in trials"
    rows = [
        ("devices", _names(spec.get("devices", [])) + used),
        ("datasets", _names(spec.get("datasets") or [spec.get("dataset")])
         + f" (classes {_names(spec.get('classes', []), code=False)})"),
        ("models", _names(spec.get("models") or [spec.get("model")])),
        ("budgets (labelled examples per class)", _names(spec.get("budgets", []), code=False)),
        ("strategies", _names(spec.get("strategies", []))),
        ("executions", _names(spec.get("executions", []))),
        ("objectives", _names(spec.get("objectives", ["accuracy"]), code=False)),
        ("search", (f"{spec.get('trials')} Optuna trials per cell ({spec.get('sampler', 'tpe')} "
                    f"sampler, {spec.get('pruner', 'median')} pruner), selected on validation")),
        ("re-runs", (f"{spec.get('seeds')} seeds of each cell's best config "
                     f"({_names(env.get('final_seeds', []), code=False)}); only they see test")),
        ("training", f"{spec.get('epochs')} epochs, batch {spec.get('batch_size')}"),
        ("cells", f"{len(s)} ({skipped} skipped); {took}"),
    ]
    return pd.DataFrame(rows, columns=["axis", "values"])


def _protocol(spec: dict) -> str:
    """How long every budget trains and how many validation labels select: the choices that
    decide whether budgets are comparable."""
    epochs, min_steps = spec.get("epochs"), spec.get("min_steps")
    steps = (f"every budget trains {epochs} epochs, so smaller budgets take fewer optimisation "
             "steps" if min_steps is None else
             f"every trial takes at least {min_steps} optimisation steps ({epochs} epochs, more "
             "for budgets whose epochs are short)")
    val = spec.get("val_per_class")
    selection = ("the whole validation split selects (column *val labels*)" if val is None else
                 f"{val} validation labels per class select (column *val labels*)")
    return f"Training length: {steps}; {selection}."


def _intro(run: RunTables) -> str:
    spec, env, m = run.spec, run.env, run.measurements
    parts = [spec.get("description", ""), METHOD.format(trials=spec.get("trials"),
                                                        seeds=spec.get("seeds")),
             _protocol(spec)]
    load_avg = m[m["metric"] == "loadavg_1m"]["value"]
    cpus = env.get("cpu_count") or 1
    if len(load_avg) and load_avg.max() > cpus + 1:
        parts.append(f"> **Warning: the machine was busy.** The 1-minute load average reached "
                     f"{load_avg.max():.1f} on {cpus} CPUs during this run; CPU timings are "
                     "unreliable. Re-run on a quiet machine before comparing speeds.")
    pre = m[(m["stage"] == "pretrain") & (m["metric"] == "accuracy")]
    recipe = spec.get("pretrain") or {}
    for _, row in pre.iterrows():
        cached = m[(m["stage"] == "pretrain") & (m["metric"] == "loaded_from_cache")
                   & (m["model"] == row["model"])]["value"]
        how = "loaded from cache" if len(cached) and cached.iloc[0] else "trained in this run"
        parts.append(f"Backbone `{row['model']}` pretrained on `{recipe.get('dataset')}` classes "
                     f"{recipe.get('classes')}: source validation accuracy "
                     f"{100 * row['value']:.1f}% ({how}).")
    if spec.get("weights"):
        parts.append(f"Backbone weights: `{spec['weights']}`.")
    return "\n\n".join(p for p in parts if p)


def _varying(df: pd.DataFrame, columns: tuple[str, ...]) -> list[str]:
    return [c for c in columns if c in df and df[c].nunique() > 1]


def _executions(run: RunTables) -> Section | None:
    cmp = execution_comparison(run.measurements)
    if cmp.empty:
        return None
    view = cmp[[*_varying(cmp, ("device", "dataset", "model")), "budget", "strategy",
                "execution"]].copy()
    view["samples/s"] = cmp["samples_per_s"].round(0)
    view["speedup vs eager"] = cmp["speedup_vs_eager"].map(lambda v: f"{v:.2f}x")
    view["cold compile (s)"] = cmp["cold_compile_s"].round(1)
    view["warm compile (s)"] = cmp["warm_compile_s"].round(1)
    view["graphs compiled"] = cmp["graphs_compiled"]
    view["recompiles in timed steps"] = cmp["timed_recompiles"]
    return Section("Executions", "executions", (
        "Steady-state training throughput (median over the re-runs) and its ratio to eager; "
        "compile cost apart, as the wall time of the steps that compiled a graph: cold for the "
        "cell's first run (a fresh inductor cache), warm for the re-runs (median), and the graphs "
        "compiled per run."), table=view)


def _failures(run: RunTables) -> Section | None:
    t = run.trials
    bad = t[t["status"] == "failed"] if len(t) and "status" in t else t
    if bad is None or bad.empty:
        return None
    return Section("Failed trials", "failed", "Every trial that failed, with its error; a failed "
                   "trial reports no accuracy to selection.",
                   table=bad[["cell", "stage", "trial", "seed", "error"]])


def _key_values(d: dict, name: str) -> pd.DataFrame:
    def show(v) -> str:
        if isinstance(v, dict):
            return ", ".join(f"{k} {x}" for k, x in v.items()) if name == "environment" \
                else json.dumps(v)
        if isinstance(v, list | tuple):
            return ", ".join("all" if x is None else f"{x:g}" if isinstance(x, float) else str(x)
                             for x in v)
        return "none" if v is None else str(v)
    return pd.DataFrame([(k, show(v)) for k, v in d.items()], columns=["key", "value"])


def _claims(claims: pd.DataFrame | None) -> Section | None:
    if claims is None or not len(claims):
        return None
    from harness.analysis.claims import claims_view

    view = claims_view(claims)
    view.insert(2, "claim (paper)", claims["statement"])
    counts = claims["verdict"].value_counts()
    return Section("Claims", "claims", (
        "The papers' claims this study reproduces, each checked against this run's own tables "
        "(`claims.csv`): the measured effect with its 95% CI and the verdict. "
        + ", ".join(f"{n} {v}" for v, n in counts.items()) + "."), table=view)


def sections(run: RunTables, plots: list[Plot] | None, seconds: float | None = None,
             claims: pd.DataFrame | None = None) -> list[Section]:
    """The report's content, in order, for both renderers; ``plots`` None: figures not drawn."""
    s = run.summary
    best = s[_text_col(s["skipped"]) == ""] if len(s) else s
    best = best[[*_varying(s, ("device", "dataset", "model")), "budget", "strategy", "execution",
                 "best_params"]]
    omitted = [p for p in plots or () if p.omitted]
    drawn = (f"{len(plots) - len(omitted)} of {len(plots)} figures drawn, from the tables alone; "
             "each also as SVG beside its PNG in `plots/`.") if plots is not None else (
             "Figures not drawn (`--no-figures` or `HARNESS_FIGURES=0`); `python -m harness "
             "report RUN_DIR` draws them from the tables.")
    out = [
        Section("Run", "run", _intro(run), table=_axes(run, seconds)),
        Section("Summary", "summary", (
            "One row per cell. **Pareto** marks the cells that no other cell of the same device, "
            "dataset and budget beats on both test accuracy and samples/s; a skipped cell says "
            "why it did not run, a failed one its first error."),
            table=summary_view(s, run.trials)),
        _claims(claims),
        _executions(run),
        _failures(run),
        Section("Plots", "plots", drawn, plots=tuple(plots or ())),
        Section("Best configurations", "best", "The config each cell's search selected on "
                "validation accuracy, re-run with the seeds.", table=best),
        Section("Environment", "environment", "Recorded at the start of the run (`env.json`). "
                "Files: `measurements.csv` (tidy, one value per row), `trials.csv`, `summary.csv`, "
                "`env.json`, `spec.json`.", table=_key_values(run.env, "environment")),
        Section("Spec", "spec", "The study as it ran (`spec.json`).",
                table=_key_values(run.spec, "spec"), raw=json.dumps(run.spec, indent=2)),
    ]
    return [x for x in out if x is not None]


def title(run: RunTables) -> str:
    return f"{run.spec.get('name', 'study')}: run {run.env.get('run_id', '')}"


def _safe(text: str) -> str:
    """``text`` with any HTML in it shown, not run, as report.html escapes it.

    Everywhere, code spans included: whether a backtick opens one depends on the Markdown
    flavour (a GFM table row splits a span at ``|``), so sparing them would let some tag
    through; the price is that a ``<`` in `code` shows as ``&lt;``.

    >>> _safe("<b>R&D</b>")
    '&lt;b>R&amp;D&lt;/b>'
    """
    return text.replace("&", "&amp;").replace("<", "&lt;")


def _safe_table(df: pd.DataFrame) -> pd.DataFrame:
    rows = [[_safe(cell_text(v)) for v in row] for row in df.itertuples(index=False)]
    return pd.DataFrame(rows, columns=[_safe(str(c)) for c in df.columns])


def render_markdown(run: RunTables, parts: list[Section]) -> str:
    """The report as Markdown; names, descriptions and errors come from the run's files, so
    every text is escaped (:func:`_safe`) and only the report's own HTML is live."""
    lines = [f"# {_safe(title(run))}", ""]
    for sec in parts:
        lines += [f"## {_safe(sec.title)}", ""]
        if sec.text:
            lines += [_safe(sec.text), ""]
        if sec.raw:  # JSON in a fence is shown as it is: none of its lines can close the fence
            lines += ["<details><summary>json</summary>", "", "```json", sec.raw, "```",
                      "</details>", ""]
        elif sec.table is not None:
            lines += [markdown_table(_safe_table(sec.table)), ""]
        for p in sec.plots:
            lines += [f"### {_safe(p.title)}", "", _safe(p.caption), ""]
            lines += [f"*Omitted: {_safe(p.omitted)}.*" if p.omitted
                      else f"![{_safe(p.title)}](plots/{p.png.name}) ([SVG](plots/{p.svg.name}))",
                      ""]
    return "\n".join(lines)


_FILES = ("measurements.csv", "trials.csv", "summary.csv", "env.json", "spec.json")


def figures_wanted(figures: bool | None = None) -> bool:
    """Whether a run draws its figures: ``figures`` when given, else ``HARNESS_FIGURES`` (``1``,
    the default, or ``0``: tables and reports only, for regression tracking and test suites)."""
    if figures is not None:
        return figures
    value = os.environ.get("HARNESS_FIGURES", "1").strip()
    if value not in ("0", "1"):
        raise UserError(f"HARNESS_FIGURES={value!r} is neither 1 (draw the figures, the default) "
                        "nor 0 (skip them); set one of those or unset it.")
    return value == "1"


def write_reports(run_dir: str | Path, seconds: float | None = None,
                  figures: bool | None = None) -> tuple[Path, Path]:
    """Draw every figure and write ``report.md`` and ``report.html`` into ``run_dir``, from its
    tables alone; returns both paths. ``seconds`` is the run's wall time, when known.
    ``figures`` False (or None with ``HARNESS_FIGURES=0``) draws none, and removes figures an
    earlier report drew, so ``plots/`` never shows an older version of the tables.

    Both reports are rendered before either is written, and each file is replaced atomically,
    so a failure leaves the previous reports as they were; calling it again rewrites them.
    """
    from harness.report import html as report_html

    run_dir = Path(run_dir)
    missing = [f for f in _FILES if not (run_dir / f).is_file()]
    if missing:
        raise UserError(f"{str(run_dir)!r} is not a finished run folder: it lacks "
                        f"{', '.join(missing)}; pass a folder such as results/<study>/<run_id>.")
    run = load(run_dir)
    claims = pd.read_csv(run_dir / "claims.csv") if (run_dir / "claims.csv").is_file() else None
    if figures_wanted(figures):
        from harness.report.plots import draw_all  # matplotlib and seaborn load only here

        plots = draw_all(run_dir, run)
    else:
        plots = None
        for old in (run_dir / "plots").glob("*.*"):
            if old.suffix in (".png", ".svg"):
                old.unlink()
    parts = sections(run, plots, seconds, claims)
    md, html = render_markdown(run, parts), report_html.render(title(run), parts)
    atomic_write_text(run_dir / "report.md", md)
    atomic_write_text(run_dir / "report.html", html)
    return run_dir / "report.md", run_dir / "report.html"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """The ``report`` subcommand: ``python -m harness report RUN_DIR``."""
    p = subparsers.add_parser(
        "report", help="(re)write a run's plots, report.md and report.html from its tables",
        description="Draw every figure into RUN_DIR/plots (PNG and SVG) and write report.md and "
                    "a self-contained report.html, from the run's tables alone.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, results/<study>/<run_id>")
    return p


def main(args: argparse.Namespace) -> int:
    md, html = write_reports(args.run_dir, figures=True)
    print(f"wrote {md} and {html}")
    return 0
