"""The Markdown report of a run, written from its tables."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from harness._io import atomic_write_text

__all__ = ["markdown_table", "summary_view", "write_markdown"]


def summary_view(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as people read it: accuracy as mean ± CI in percent, speed, memory."""

    def acc(row) -> str:
        if isinstance(row.get("skipped"), str) and row["skipped"]:
            return f"skipped: {row['skipped']}"
        if pd.isna(row["test_acc_mean"]):
            return "failed"
        ci = "" if pd.isna(row["test_acc_ci95"]) else f" ± {100 * row['test_acc_ci95']:.1f}"
        return f"{100 * row['test_acc_mean']:.1f}{ci}"

    view = pd.DataFrame({
        "device": summary["device"],
        "dataset": summary["dataset"],
        "model": summary["model"],
        "budget": summary["budget"],
        "strategy": summary["strategy"],
        "execution": summary["execution"],
        "test acc % (95% CI)": summary.apply(acc, axis=1),
        "seeds": summary["n_seeds"],
        "best val %": (100 * summary["best_val_acc"]).round(1),
        "samples/s": summary["samples_per_s"].round(0),
        "peak MiB": summary["peak_memory_mib"].round(0),
        "MFLOP/sample": (1000 * summary["train_gflops_per_sample"]).round(1),
        "util % (matmul)": (100 * summary["utilisation"]).round(1),
        "s to target": summary["time_to_target_s"].round(2),
        "BN": summary["bn_mode"],
        "trials ok/pruned/failed": summary.apply(
            lambda r: f"{r['trials_ok']}/{r['trials_pruned']}/{r['trials_failed']}", axis=1),
        # non-dominated on (test accuracy, samples/s) among the cells of its device and budget
        "Pareto": summary["pareto"].map({True: "yes", False: ""}),
    })
    # an axis with one value is said once, in the report's header, not on every row
    return view.drop(columns=[c for c in ("device", "dataset", "model") if view[c].nunique() == 1])


def markdown_table(df: pd.DataFrame) -> str:
    cells = [[str(c) for c in df.columns]] + [["" if pd.isna(v) else str(v) for v in row]
                                               for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    lines.insert(1, "|" + "---|" * len(df.columns))
    return "\n".join(lines)


def _busy_warning(measurements: pd.DataFrame, env: dict) -> str:
    load = measurements[measurements["metric"] == "loadavg_1m"]["value"]
    cpus = env.get("cpu_count") or 1
    if load.empty or load.max() <= cpus + 1:
        return ""
    return (f"> **Warning: the machine was busy.** The 1-minute load average reached {load.max():.1f} "
            f"on {cpus} CPUs during this run; CPU timings are unreliable. Re-run on a quiet "
            "machine before comparing speeds.\n\n")


def _execution_section(measurements: pd.DataFrame) -> str:
    from harness.tables import execution_comparison

    cmp = execution_comparison(measurements)
    if cmp.empty:
        return ""
    view = pd.DataFrame({
        "budget": cmp["budget"], "strategy": cmp["strategy"], "execution": cmp["execution"],
        "samples/s": cmp["samples_per_s"].round(0),
        "speedup vs eager": cmp["speedup_vs_eager"].map(lambda v: f"{v:.2f}x"),
        "cold compile (s)": cmp["cold_compile_s"].round(1),
        "warm compile (s)": cmp["warm_compile_s"].round(1),
        "graphs compiled": cmp["graphs_compiled"],
        "recompiles in timed steps": cmp["timed_recompiles"],
    })
    return ("## Executions\n\nSteady-state training throughput (median over the re-runs) and its "
            "ratio to eager; compile cost apart, as the wall time of the steps that compiled a graph: "
            "cold for the cell's first run (a fresh inductor cache), warm for the re-runs (median), "
            "and the graphs compiled per run.\n\n"
            + markdown_table(view) + "\n\n")


def write_markdown(run_dir: str | Path, spec: dict, env: dict, summary: pd.DataFrame,
                   measurements: pd.DataFrame, seconds: float) -> Path:
    run_dir = Path(run_dir)
    pre = measurements[(measurements["stage"] == "pretrain") & (measurements["metric"] == "accuracy")]
    pretrain_line = ""
    if len(pre):
        cached = measurements[(measurements["stage"] == "pretrain")
                              & (measurements["metric"] == "loaded_from_cache")]["value"].iloc[0]
        pretrain_line = (f"Backbone pretrained on `{spec['pretrain']['dataset']}` classes "
                         f"{spec['pretrain']['classes']}: source validation accuracy "
                         f"{100 * pre['value'].iloc[0]:.1f}% "
                         f"({'loaded from cache' if cached else 'trained in this run'}).\n\n")
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    text = f"""# {spec['name']}: run {env['run_id']}

{spec['description']}

Target: `{spec['dataset']}` classes {spec['classes']}, model `{spec['model']}`, device `{env['device']}`
({env['device_name']}), execution {', '.join(f'`{e}`' for e in spec['executions'])}, {spec['epochs']} epochs, batch {spec['batch_size']}.
Each cell: {spec['trials']} Optuna trials selected on validation accuracy, then the best config
re-run with {spec['seeds']} seeds; test accuracy is mean ± 95% CI (Student's t) over those seeds.
Throughput is steady-state training samples/s (warm-up steps excluded), median over the re-runs;
peak MiB is the rise of peak memory over the trial's start; MFLOP/sample counts forward and
backward of what trains (torch.utils.flop_counter); util % is achieved FLOP/s over this device's
empirical matmul peak (not a datasheet figure); s to target is training time until validation
accuracy first reached the study's target (empty: never reached, or no target).
The labelled subset of each budget is fixed by the split seed, so the CI covers initialisation
and data order, not which examples were labelled.

{_busy_warning(measurements, env)}{pretrain_line}## Summary

{markdown_table(summary_view(summary))}

{_execution_section(measurements)}
![accuracy vs throughput](plots/accuracy_vs_throughput.png)

![learning curves](plots/learning_curves.png)

## Best configurations

{markdown_table(summary[["budget", "strategy", "execution", "best_params"]])}

## Environment

{versions}; git `{env['git_commit']}`; {env['torch_threads']} torch threads on {env['cpu_model']}.
Wall time of the run: {seconds:.0f} s. Files: `measurements.csv` (tidy, one value per row),
`trials.csv`, `summary.csv`, `env.json`, `spec.json`.

<details><summary>spec.json</summary>

```json
{json.dumps(spec, indent=2)}
```
</details>
"""
    path = run_dir / "report.md"
    atomic_write_text(path, text)
    return path
