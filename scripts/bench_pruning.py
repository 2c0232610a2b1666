"""Pruning against no pruning on the default study: best validation accuracy and search time.

Runs the study's search twice, one pruner after the other (``none`` first, then ``median``
or what ``--pruners`` says), same sampler seed, then compares per cell and for the whole study:

- best validation accuracy of each search, and the difference in points;
- search wall time (the trials' own seconds, summed), and its ratio to the unpruned search;
- time to quality: the search time the pruned run took until its best-so-far validation
  accuracy came within ``--tolerance`` points of the unpruned run's best, over the unpruned
  run's whole search time.

Goal (issue 5): within 1 point of the unpruned best in at most 60% of its time.

    python scripts/bench_pruning.py [--study finetune_vs_probe] [--pruners none,median,percentile,sha]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile

import pandas as pd

from harness.analysis.results import load
from harness.config.spec import load_study
from harness.pipeline import run_study


def search_table(study: str, pruner: str, out: str, trials: int | None) -> pd.DataFrame:
    spec = load_study(study)
    spec = dataclasses.replace(spec, pruner=pruner, seeds=1, trials=trials or spec.trials)
    run = run_study(spec, out_root=out, progress=False)
    t = load(run.run_dir).trials
    return t[t["stage"] == "search"].sort_values(["cell", "trial"])


def time_to_quality(search: pd.DataFrame, target: float) -> float:
    """Seconds of search until the best-so-far val accuracy reached ``target`` (NaN: never)."""
    best = search["val_accuracy"].fillna(-1).cummax()
    spent = search["seconds"].cumsum()
    hit = spent[best >= target]
    return float(hit.iloc[0]) if len(hit) else float("nan")


def compare(base: pd.DataFrame, other: pd.DataFrame, tolerance: float) -> pd.DataFrame:
    rows = []
    for cell, b in base.groupby("cell", sort=False):
        o = other[other["cell"] == cell]
        b_best, o_best = b["val_accuracy"].max(), o["val_accuracy"].max()
        rows.append({
            "cell": cell, "best_val_unpruned": b_best, "best_val_pruned": o_best,
            "diff_points": 100 * (o_best - b_best),
            "search_s_unpruned": b["seconds"].sum(), "search_s_pruned": o["seconds"].sum(),
            "to_quality_s": time_to_quality(o, b_best - tolerance / 100),
            "unpruned_to_quality_s": time_to_quality(b, b_best - tolerance / 100),
            "pruned_trials": int((o["status"] == "pruned").sum()),
        })
    df = pd.DataFrame(rows)
    df["time_ratio"] = df["search_s_pruned"] / df["search_s_unpruned"]
    df["to_quality_ratio"] = df["to_quality_s"] / df["search_s_unpruned"]
    return df


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default="finetune_vs_probe")
    ap.add_argument("--pruners", default="none,median", help="the first is the baseline")
    ap.add_argument("--trials", type=int, help="trials per cell (default: the study's)")
    ap.add_argument("--tolerance", type=float, default=1.0, help="points of val accuracy")
    args = ap.parse_args()
    pruners = args.pruners.split(",")
    with tempfile.TemporaryDirectory() as out:
        tables = {p: search_table(args.study, p, out, args.trials) for p in pruners}
    base = tables[pruners[0]]
    pd.set_option("display.width", 200)
    for p in pruners[1:]:
        df = compare(base, tables[p], args.tolerance)
        print(f"\n## {p} against {pruners[0]} ({args.study}, tolerance {args.tolerance} points)\n")
        print(df.round(3).to_string(index=False))
        total_b, total_o = df["search_s_unpruned"].sum(), df["search_s_pruned"].sum()
        to_q = df["to_quality_s"].sum() if df["to_quality_s"].notna().all() else float("nan")
        own = df["unpruned_to_quality_s"].sum()
        print(f"\nthe unpruned search itself came within tolerance after {own:.1f} s "
              f"(ratio {own / total_b:.2f})")
        print(f"whole search: {total_o:.1f} s against {total_b:.1f} s "
              f"(ratio {total_o / total_b:.2f}); worst cell {df['diff_points'].min():+.2f} points, "
              f"mean {df['diff_points'].mean():+.2f}; cells within tolerance: "
              f"{int((df['diff_points'] >= -args.tolerance).sum())}/{len(df)}; "
              f"time to quality {to_q:.1f} s (ratio {to_q / total_b:.2f})")


if __name__ == "__main__":
    main()
