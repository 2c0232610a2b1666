"""Tidy long-format records, their tables on disk, and ``load()`` to read a run back.

One value per row of ``measurements.csv``; the columns (``COLUMNS``, documented in
``results/README.md``):

=========  ===============================================================================
run_id     the run's folder name
study      the study's name
cell       the grid cell, e.g. ``shots=10/linear_probe/eager``
stage      ``pretrain``, ``search`` (Optuna trials, selected on val) or ``final`` (seed re-runs of the best config)
trial      Optuna trial number in ``search``; the re-run's index in ``final``
phase      the strategy's phase (``probe``, ``finetune`` ...) or ``all`` for the whole run
strategy   registered strategy name
dataset    target dataset
model      backbone
budget     labelled training examples per class (``all`` for the whole training split)
device     ``cpu``, ``cuda:0`` ...
execution  ``eager``, ``compile``, ``compile:max-autotune+bf16`` ... (see harness.config.execution)
seed       the run's seed
split      ``train``, ``val``, ``test`` or ``source_val``
metric     ``accuracy``, ``loss``, ``samples_per_s``, ``step_p50_s`` ...
value      the number
unit       ``fraction``, ``nats``, ``samples/s``, ``s``, ``bytes``, ``count``
epoch      epoch for per-epoch values, empty for whole-run values
status     ``ok``, ``pruned`` or ``failed`` (the trial's)
=========  ==============================================================================="""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from harness._io import atomic_write_text
from harness.run.records import COLUMNS, Measurement


def write_csv(path: str | Path, df: pd.DataFrame) -> None:
    atomic_write_text(path, df.to_csv(index=False))


def measurements_frame(rows: list[Measurement]) -> pd.DataFrame:
    df = pd.DataFrame([asdict(r) for r in rows], columns=list(COLUMNS))
    df["epoch"] = df["epoch"].astype("Int64")
    return df


def mean_ci95(values: pd.Series) -> tuple[float, float, int]:
    """Mean, half-width of the 95% confidence interval (Student's t) and the count of ``values``."""
    import numpy as np
    from scipy import stats

    v = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=float)
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), 0
    if n == 1:
        return float(v[0]), float("nan"), 1
    half = stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / np.sqrt(n)
    return float(v.mean()), float(half), n


SUMMARY_COLUMNS = (
    "cell", "device", "dataset", "model", "budget", "strategy", "execution", "n_seeds", "test_acc_mean", "test_acc_ci95", "test_acc_low",
    "test_acc_high", "best_val_acc", "samples_per_s", "peak_memory_mib", "train_gflops_per_sample",
    "utilisation", "time_to_target_s", "val_labels", "bn_mode", "best_params", "edge_of_range",
    "trials_ok", "trials_pruned", "trials_failed", "pareto", "skipped",
    # PEFT's costs and forgetting, where the final runs measured them (NaN elsewhere)
    "trainable_share", "stored_task_mib", "source_acc_mean", "latency_b1_ms", "latency_b1_merged_ms",
    "latency_b64_ms", "latency_b64_merged_ms",
)


def _phase_weighted(m: pd.DataFrame, metric: str) -> float:
    """Per-phase values weighted by each phase's timed steps, one number per run; median over runs.

    Right for per-sample quantities (FLOPs per sample); rates are computed whole-run in trial.py.
    """
    v = m[m["metric"] == metric].set_index(["seed", "phase"])["value"]
    w = m[(m["metric"] == "timed_steps") & (m["phase"] != "all")].set_index(["seed", "phase"])["value"]
    both = pd.concat([v, w], axis=1, keys=["v", "w"], join="inner").dropna()
    if both.empty or both["w"].sum() == 0:
        return float("nan")
    per_run = both.groupby(level="seed").apply(lambda d: (d["v"] * d["w"]).sum() / d["w"].sum())
    return float(per_run.median())


def _whole_run(mc: pd.DataFrame, metric: str, split: str | None = None,
               how: str = "median") -> float:
    """A whole-run metric over a cell's final runs (median, or mean); NaN where none has it."""
    v = mc[(mc["metric"] == metric) & (mc["phase"] == "all") & mc["epoch"].isna()]
    if split is not None:
        v = v[v["split"] == split]
    return float(getattr(v["value"], how)()) if len(v) else float("nan")


def _best_finals(final: pd.DataFrame, search: pd.DataFrame) -> pd.DataFrame:
    """The re-runs of the best search config: all re-runs, unless the study re-ran every config
    (``rerun="all"``, a ``search_trial`` column), then those of the most accurate search trial."""
    if "search_trial" not in final or final["search_trial"].isna().all():
        return final
    ok = search[search["status"] == "ok"]
    if ok.empty:
        return final.iloc[0:0]
    best = ok.sort_values(["val_accuracy", "trial"], ascending=[False, True])["trial"].iloc[0]
    return final[final["search_trial"] == best]


def _best_edge(ok_search: pd.DataFrame, val_labels: float) -> str:
    """The edge-of-range flags of the cell's best search trial (the config its finals re-ran),
    unless a trial inside every range is as accurate within validation noise: one binomial
    standard error of the best's validation accuracy over ``val_labels`` examples.

    An edge config that won by an example or two over an interior one shows a flat top, not an
    optimum outside the range (text_finetune's probe: 41.6% at C = 9.8e4, the range's top, and
    41.2% at 1.8e4, on 250 validation windows whose standard error is 3.1 points).
    """
    if ok_search.empty or "edge_of_range" not in ok_search:
        return ""
    flagged = ok_search["edge_of_range"].map(lambda f: isinstance(f, str) and bool(f))
    best = ok_search.sort_values(["val_accuracy", "trial"], ascending=[False, True]).iloc[0]
    if not flagged[best.name]:
        return ""
    inside = ok_search.loc[~flagged, "val_accuracy"]
    p = float(best["val_accuracy"])
    if len(inside) and val_labels > 0 and inside.max() >= p - math.sqrt(p * (1 - p) / val_labels):
        return ""
    return best["edge_of_range"]


def _val_labels(measurements: pd.DataFrame, cell: str) -> float:
    """How many validation labels selected the cell's configuration (its search trials')."""
    v = measurements[(measurements["cell"] == cell) & (measurements["metric"] == "examples")
                     & (measurements["split"] == "val") & (measurements["stage"] == "search")]
    return float(v["value"].max()) if len(v) else float("nan")


def summarize(measurements: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: test accuracy over the final seeds (mean, 95% CI), speed and memory."""
    rows = []
    if trials.empty:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    m = measurements[(measurements["stage"] == "final") & (measurements["status"] == "ok")]
    for cell, g in trials.groupby("cell", sort=False):
        search = g[g["stage"] == "search"]
        final = _best_finals(g[(g["stage"] == "final") & (g["status"] == "ok")], search)
        mean, half, n = mean_ci95(final["test_accuracy"])
        mc = m[(m["cell"] == cell) & m["trial"].isin(final["trial"])]
        speed = mc[(mc["metric"] == "samples_per_s") & (mc["phase"] == "all")]["value"]
        peak = mc[mc["metric"].isin(["peak_cpu_rss_increase", "peak_cuda_allocated_increase",
                                     "peak_cpu_rss_process_lifetime_increase"])
                  & (mc["phase"] == "all")]["value"]
        ok_search = search[search["status"] == "ok"]
        val_labels = _val_labels(measurements, cell)
        skipped = g[g["status"] == "skipped"]["error"]
        rows.append({
            "cell": cell, "device": g["device"].iloc[0], "dataset": g["dataset"].iloc[0],
            "model": g["model"].iloc[0], "budget": g["budget"].iloc[0], "strategy": g["strategy"].iloc[0],
            "execution": g["execution"].iloc[0],
            "n_seeds": n, "test_acc_mean": mean, "test_acc_ci95": half,
            "test_acc_low": mean - half, "test_acc_high": mean + half,
            "best_val_acc": ok_search["val_accuracy"].max() if len(ok_search) else float("nan"),
            "samples_per_s": speed.median(), "peak_memory_mib": peak.median() / 2**20,
            "train_gflops_per_sample": _phase_weighted(mc, "train_flops_per_sample") / 1e9,
            "utilisation": mc[(mc["metric"] == "utilisation_empirical")
                              & (mc["phase"] == "all")]["value"].median(),
            "time_to_target_s": mc[mc["metric"] == "time_to_target_s"]["value"].median(),
            "val_labels": val_labels,
            "bn_mode": (final if len(final) else search).get("bn_mode", pd.Series([""])).iloc[0],
            "best_params": final["params"].iloc[0] if len(final) else "",
            "edge_of_range": _best_edge(ok_search, val_labels),
            "trials_ok": int((search["status"] == "ok").sum()),
            "trials_pruned": int((search["status"] == "pruned").sum()),
            "trials_failed": int((search["status"] == "failed").sum()),
            "skipped": skipped.iloc[0] if len(skipped) else "",
            "trainable_share": _whole_run(mc, "trainable_share"),
            "stored_task_mib": _whole_run(mc, "stored_bytes_task") / 2**20,
            "source_acc_mean": _whole_run(mc, "accuracy", split="source", how="mean"),
            **{f"latency_b{n}{k}_ms": 1000 * _whole_run(mc, f"latency_b{n}{k}_p50_s")
               for n in (1, 64) for k in ("", "_merged")},
        })
    summary = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    summary["pareto"] = pareto_front(summary, ["test_acc_mean", "samples_per_s"],
                                     by=["device", "dataset", "budget"])
    return summary


def pareto_front(df: pd.DataFrame, objectives: list[str], by: list[str]) -> pd.Series:
    """Whether each row is on the Pareto front (every objective higher is better) of its group.

    A row is dominated when another row of its group is at least as good on every objective and
    better on one; rows with a missing objective are never on the front.
    """
    out = pd.Series(False, index=df.index)
    for _, g in df.groupby(by, sort=False, dropna=False):
        v = g[objectives].to_numpy(dtype=float)
        for i, idx in enumerate(g.index):
            if not all(v[i] == v[i]):  # NaN
                continue
            others = v[[j for j in range(len(v)) if j != i and all(v[j] == v[j])]]
            dominated = ((others >= v[i]).all(axis=1) & (others > v[i]).any(axis=1)).any()
            out[idx] = not dominated
    return out


_KEYS = ("device", "dataset", "model", "budget", "strategy")  # what a comparison of executions holds fixed


def execution_comparison(measurements: pd.DataFrame) -> pd.DataFrame:
    """Per device, dataset, model, budget and strategy: steady-state samples/s of each execution,
    speedup over eager, compile time.

    Speedup is the ratio of the median steady-state throughput of the final re-runs. Compile
    time is the summed wall time of the training steps that compiled a graph (so it includes
    those steps' own work): ``cold_compile_s`` for the cell's first run (search trial 0, which
    compiles into the run's fresh inductor cache), ``warm_compile_s`` as the median over the
    re-runs (which hit that cache); graphs are counted per run.
    """
    ok = measurements[measurements["status"] == "ok"]
    m = ok[ok["stage"] == "final"]
    first = ok[(ok["stage"] == "search") & (ok["trial"] == 0) & (ok["metric"] == "compile_steps_s")]
    cold = first.groupby([*_KEYS, "execution"])["value"].sum()
    if m.empty or m["execution"].nunique() < 2:
        return pd.DataFrame()
    per_run = m.pivot_table(index=[*_KEYS, "execution", "seed"], columns="metric",
                            values="value", aggfunc="sum", observed=True)
    speed = m[(m["metric"] == "samples_per_s") & (m["phase"] == "all")]
    speed = speed.groupby([*_KEYS, "execution"])["value"].median()
    rows = []
    for key, g in per_run.groupby(level=list(_KEYS)):
        base = speed.get((*key, "eager"), float("nan"))
        for execution, r in g.groupby(level="execution"):
            sps = speed.get((*key, execution), float("nan"))
            comp = r["compile_steps_s"] if "compile_steps_s" in r else pd.Series(dtype=float)
            rows.append({
                **dict(zip(_KEYS, key)), "execution": execution,
                "samples_per_s": sps, "speedup_vs_eager": sps / base,
                "cold_compile_s": cold.get((*key, execution), 0.0),
                "warm_compile_s": comp.median() if len(comp.dropna()) else 0.0,
                "graphs_compiled": r["graphs_compiled"].median() if "graphs_compiled" in r else 0,
                "timed_recompiles": r["timed_recompiles"].max() if "timed_recompiles" in r else 0,
                "runs": len(r),
            })
    return pd.DataFrame(rows)
