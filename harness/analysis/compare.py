"""Regression tracking: did a candidate run get slower, hungrier or less accurate than a baseline?

``compare BASELINE CANDIDATE`` matches the two runs' final re-runs by cell, metric, phase and
split. A change is a regression only when worse than the metric's threshold *and* its 95% CI
(Welch's t-interval over the re-runs) excludes zero; with one re-run on a side the threshold alone
decides, and the table says so. ``compare --save-baseline RUN_DIR`` files a run under
``results/baselines/<fingerprint>/<study>/<run_id>/``, where BASELINE ``latest`` finds it.

>>> rows = compare_runs(load("results/baselines/.../t/A"), load("results/t/B"))   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from harness._io import atomic_write_bytes, atomic_write_text
from harness.analysis.results import RunTables, load
from harness.errors import UserError

__all__ = ["DEFAULT_RULES", "Rule", "add_parser", "compare_runs", "env_differences", "find_baseline",
           "fingerprint", "main", "save_baseline"]

KEY = ("study", "strategy", "model", "dataset", "budget", "device", "execution", "metric", "phase", "split")
CI_METHOD = ("95% CI: Welch's t-interval (scipy.stats.ttest_ind, equal_var=False) of the difference "
             "of the means over the final re-runs, in percent of the baseline mean (points for accuracy)")
BASELINE_FILES = ("measurements.csv", "trials.csv", "summary.csv", "env.json", "spec.json")
FINGERPRINT_KEYS = ("device_name", "versions.torch", "cuda_version", "cpu_model", "torch_threads")
_ENV_IGNORED = ("run_id", "storage", "loadavg")  # differ in every pair of runs and say nothing
_VERDICT_ORDER = {"regression": 0, "improvement": 1, "within noise": 2}


@dataclass(frozen=True)
class Rule:
    """A metric compared between runs; ``phase=None`` compares each phase on its own."""

    metric: str
    phase: str | None
    split: str
    higher_is_better: bool
    threshold: float  # percent of the baseline mean, or percentage points when ``points``
    points: bool = False


DEFAULT_RULES = (
    # a point of test accuracy is about the seed-to-seed spread of the small default tasks
    Rule("accuracy", "all", "test", True, 1.0, points=True),
    # forgetting: accuracy on the pretraining task after fine-tuning (final runs that record it)
    Rule("accuracy", "all", "source", True, 1.0, points=True),
    Rule("samples_per_s", "all", "train", True, 5.0),  # steady-state training throughput
    Rule("samples_per_s", None, "val", True, 5.0),  # evaluation throughput, per phase
    Rule("step_p50_s", "all", "train", False, 5.0),
    Rule("train_time_s", "all", "train", False, 5.0),
    # compile time and allocator peaks scatter more than steady-state steps do
    Rule("compile_steps_s", None, "train", False, 10.0),
    Rule("peak_cpu_rss_increase", "all", "train", False, 10.0),
    Rule("peak_cpu_rss_process_lifetime_increase", "all", "train", False, 10.0),
    Rule("peak_cuda_allocated_increase", "all", "train", False, 10.0),
    # PEFT's costs where final runs record them: activations (the peak less weights, gradients
    # and optimizer state), bytes stored per task (deterministic), serving latency at p50
    Rule("memory_rest_bytes", None, "train", False, 10.0),
    Rule("stored_bytes_task", "all", "deploy", False, 1.0),
    *(Rule(f"latency_b{n}{k}_p50_s", "all", "deploy", False, 10.0)
      for n in (1, 64) for k in ("", "_merged")),
)


def parse_thresholds(items: list[str], rules=DEFAULT_RULES) -> tuple[Rule, ...]:
    """``["samples_per_s=3%", "accuracy=0.5pt"]`` -> the rules with those thresholds."""
    names = {r.metric: r.points for r in rules}
    out = list(rules)
    for item in items:
        m = re.fullmatch(r"\s*([\w:]+)\s*=\s*([0-9]*\.?[0-9]+)\s*(%|pt)\s*", item)
        if not m:
            raise UserError(f"bad --threshold {item!r}; write METRIC=VALUE% (or METRIC=VALUEpt for "
                            "accuracy), e.g. samples_per_s=3% or accuracy=0.5pt.")
        name, value, unit = m.group(1), float(m.group(2)), m.group(3)
        if name not in names:
            raise UserError(f"--threshold {item!r} names no compared metric; available: "
                            f"{', '.join(dict.fromkeys(names))}.")
        if (unit == "pt") != names[name]:
            want = "pt (percentage points)" if names[name] else "% (of the baseline mean)"
            raise UserError(f"--threshold {item!r}: {name}'s threshold is in {want}.")
        out = [replace(r, threshold=value) if r.metric == name else r for r in out]
    return tuple(out)


def _per_run(m: pd.DataFrame, rules) -> pd.DataFrame:
    """One value per matched key and seed: the final, successful re-runs' whole-run values."""
    m = m[(m["stage"] == "final") & (m["status"] == "ok") & m["epoch"].isna()]
    parts = []
    for i, r in enumerate(rules):
        sel = m[(m["metric"] == r.metric) & (m["split"] == r.split)]
        if r.phase is not None:
            sel = sel[sel["phase"] == r.phase]
        parts.append(sel.assign(rule=i))
    m = pd.concat(parts).dropna(subset=["value"]).astype({k: str for k in KEY})
    return m.groupby([*KEY, "rule", "seed"], as_index=False).agg(value=("value", "mean"),
                                                                   unit=("unit", "first"))


def _welch(b: np.ndarray, c: np.ndarray) -> tuple[float, float]:
    """95% CI of mean(c) - mean(b); NaN with fewer than two re-runs on a side. Welch, not a
    bootstrap: with 3-5 re-runs a percentile bootstrap's interval is too narrow; t widens it."""
    from scipy import stats

    if len(b) < 2 or len(c) < 2:
        return float("nan"), float("nan")
    if np.ptp(b) == 0 and np.ptp(c) == 0:  # deterministic values: the difference is exact
        d = float(c.mean() - b.mean())
        return d, d
    ci = stats.ttest_ind(c, b, equal_var=False).confidence_interval(0.95)
    return float(ci.low), float(ci.high)


def _scaled(diff: float, base: float, points: bool) -> float:  # percentage points, or % of base
    if points or diff == 0:
        return 100.0 * diff
    return 100.0 * diff / abs(base) if base != 0 else math.copysign(math.inf, diff)


def _label(key: tuple) -> str:  # strategy/budget/execution/metric/phase/split
    return "/".join(str(key[KEY.index(k)]) for k in ("strategy", "budget", "execution", "metric",
                                                      "phase", "split"))


def compare_runs(baseline: RunTables, candidate: RunTables, rules=DEFAULT_RULES) -> pd.DataFrame:
    """One row per matched key: means, change and its CI (percent, or points), verdict; sorted
    regressions first, the worst first. ``attrs["only_baseline"]``/``["only_candidate"]``: the
    keys one side lacks (a cell that failed there, say)."""
    b, c = _per_run(baseline.measurements, rules), _per_run(candidate.measurements, rules)
    bg, cg = b.groupby([*KEY, "rule"]), c.groupby([*KEY, "rule"])
    kb, kc = set(bg.groups), set(cg.groups)
    if not kb & kc:
        raise UserError(f"the runs share no (cell, metric) to compare: baseline has "
                        f"{sorted(map(_label, kb))[:3]}, candidate {sorted(map(_label, kc))[:3]}; "
                        "compare runs of the same study and grid.")
    rows = []
    for key in sorted(kb & kc):
        rule = rules[key[-1]]
        bv, cv = bg.get_group(key)["value"].to_numpy(float), cg.get_group(key)["value"].to_numpy(float)
        bm, cm = float(bv.mean()), float(cv.mean())
        lo, hi = _welch(bv, cv)
        change = _scaled(cm - bm, bm, rule.points)
        worse = -change if rule.higher_is_better else change
        has_ci = not math.isnan(lo)
        verdict = ("within noise" if (has_ci and lo <= 0 <= hi) or abs(worse) <= rule.threshold
                   else "regression" if worse > 0 else "improvement")
        rows.append({"verdict": verdict, **dict(zip(KEY, key[:-1])), "n_baseline": len(bv),
                     "n_candidate": len(cv), "baseline": bm, "candidate": cm, "change": change,
                     "ci_low": _scaled(lo, bm, rule.points) if has_ci else float("nan"),
                     "ci_high": _scaled(hi, bm, rule.points) if has_ci else float("nan"),
                     "change_unit": "pt" if rule.points else "%", "threshold": rule.threshold,
                     "better": "higher" if rule.higher_is_better else "lower",
                     "ci_method": "welch" if has_ci else "none (n=1): threshold only",
                     "unit": bg.get_group(key)["unit"].iloc[0], "_rank": (_VERDICT_ORDER[verdict], -abs(worse))})
    out = pd.DataFrame(rows).sort_values("_rank", kind="stable").drop(columns="_rank")
    out = out.reset_index(drop=True)
    out.attrs.update(only_baseline=sorted(map(_label, kb - kc)), only_candidate=sorted(map(_label, kc - kb)))
    return out


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list) else v
    return out


def env_differences(a: dict, b: dict) -> list[tuple[str, object, object]]:
    """``(key, a's value, b's value)`` for every recorded field that differs; nested keys dotted."""
    fa, fb = _flatten(a), _flatten(b)
    keys = [k for k in dict.fromkeys([*fa, *fb]) if k.split(".")[0] not in _ENV_IGNORED]
    return [(k, fa.get(k), fb.get(k)) for k in keys if fa.get(k) != fb.get(k)]


def fingerprint(env: dict) -> str:
    """A short stable name for the environment parts that make speeds comparable, e.g.
    ``amd-epyc-torch2.14.1-3f9a1c0e``: readable prefix, hash of device, CPU, torch, CUDA, threads."""
    flat = _flatten(env)
    parts = {k: flat.get(k) for k in FINGERPRINT_KEYS}
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:8]
    device = re.sub(r"[^a-z0-9]+", "-", str(parts["device_name"] or "unknown").lower()).strip("-")[:24]
    version = re.sub(r"[^\w.+-]+", "-", str(parts["versions.torch"]))  # a folder name: no "/"
    return f"{device}-torch{version}-{digest}"


def save_baseline(run_dir: str | Path, root: str | Path = "results/baselines") -> Path:
    """Copy a run's tables, environment and spec to ``root/<fingerprint>/<study>/<run_id>/``."""
    from harness.config.spec import safe_component  # imports torch, which --help need not

    run_dir = Path(run_dir)
    run = _load(run_dir, "--save-baseline")
    # both come from the run's own files, which may have been edited: each must stay one folder
    study = safe_component(str(run.spec.get("name", "unknown")),
                           f"the study name in {str(run_dir / 'spec.json')!r}")
    run_id = safe_component(str(run.env.get("run_id") or run_dir.name),
                            f"the run_id in {str(run_dir / 'env.json')!r}")
    dest = Path(root) / fingerprint(run.env) / study / run_id
    for name in (*BASELINE_FILES, "measurements.parquet", "trials.parquet", "summary.parquet"):
        if (run_dir / name).is_file():  # Parquet copies only where the run has them
            atomic_write_bytes(dest / name, (run_dir / name).read_bytes())
    return dest


def find_baseline(candidate: RunTables, root: str | Path = "results/baselines") -> Path:
    """The newest saved baseline of the candidate's study and fingerprint (run ids sort by time)."""
    from harness.config.spec import safe_component

    fp = fingerprint(candidate.env)
    study = safe_component(str(candidate.spec.get("name", "unknown")), "the candidate's study name")
    runs = sorted(p for p in (Path(root) / fp / study).glob("*") if (p / "env.json").is_file())
    if not runs:
        others = sorted({p.parent.name for p in Path(root).glob(f"*/{study}")})
        raise UserError(f"no saved baseline of study {study!r} for environment {fp!r} under "
                        f"{str(root)!r} (saved for: {others or 'none'}); save one with "
                        "`python -m harness compare --save-baseline RUN_DIR`.")
    return runs[-1]


def _load(run_dir: Path, what: str) -> RunTables:
    if not run_dir.is_dir():
        raise UserError(f"{what} {str(run_dir)!r} is not a folder; pass a run folder such as "
                        "results/<study>/<run_id>.")
    try:
        return load(run_dir)
    except FileNotFoundError as e:
        raise UserError(f"{what} {str(run_dir)!r} lacks {Path(e.filename).name}; pass a finished "
                        "run's folder results/<study>/<run_id>.") from None


def _fmt(v: float, unit: str) -> str:
    if unit == "bytes":
        return f"{v / 2**20:.1f} MiB"
    if unit == "fraction":
        return f"{100 * v:.2f}%"
    if unit == "s":
        return f"{v:.3g} s" if abs(v) >= 1 else f"{1e3 * v:.3g} ms"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.4g}"


def _view(rows: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The table as printed, numbers formatted; key columns with one value are said once above it."""
    const = [k for k in KEY if rows[k].nunique() == 1 and k not in ("metric", "strategy")]
    pc = lambda v, u: f"{v:+.1f}{'%' if u == '%' else ' pt'}"
    view = rows[["verdict", *[k for k in KEY if k not in const]]].assign(
        baseline=[_fmt(r.baseline, r.unit) for r in rows.itertuples()],
        candidate=[_fmt(r.candidate, r.unit) for r in rows.itertuples()],
        change=[pc(r.change, r.change_unit) for r in rows.itertuples()],
        ci=[f"[{pc(r.ci_low, r.change_unit)}, {pc(r.ci_high, r.change_unit)}]" if r.ci_method == "welch"
            else f"n/a ({r.ci_method})" for r in rows.itertuples()],
        threshold=[f"{pc(r.threshold, r.change_unit)[1:]} ({r.better} better)" for r in rows.itertuples()],
        n=[f"{r.n_baseline}/{r.n_candidate}" for r in rows.itertuples()])
    return view.rename(columns={"ci": "95% CI"}), ", ".join(f"{k}={rows[k].iloc[0]}" for k in const)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``compare`` command to the CLI's subparsers."""
    p = subparsers.add_parser(
        "compare", help="compare a candidate run with a baseline: regressions, improvements, noise",
        description="Match the final re-runs of two runs by cell and metric; a change is a regression "
                    "when worse than its threshold and its 95% CI (Welch) excludes zero. Exits 1 "
                    "on any regression. With --save-baseline RUN_DIR, file a run as a baseline.",
    )
    p.add_argument("baseline", nargs="?", metavar="BASELINE", help="baseline run folder, or `latest`: the newest saved "
                   "baseline of the candidate's study and environment fingerprint")
    p.add_argument("candidate", nargs="?", metavar="CANDIDATE", help="candidate run folder")
    p.add_argument("--threshold", action="append", default=[], metavar="METRIC=VALUE",
                   help="change a metric's threshold, e.g. samples_per_s=3%% or accuracy=0.5pt "
                        "(repeatable; defaults: accuracy 1pt, throughput and times 5%%, memory "
                        "and compile time 10%%)")
    p.add_argument("--out", metavar="FILE", help="also write the comparison as CSV")
    p.add_argument("--save-baseline", metavar="RUN_DIR",
                   help="copy RUN_DIR's tables to BASELINES/<fingerprint>/<study>/<run_id>/ and exit")
    p.add_argument("--baselines", metavar="DIR", default="results/baselines",
                   help="where baselines are saved and `latest` looks (default: results/baselines)")
    return p


def main(args: argparse.Namespace) -> int:
    """Run ``compare``: 0 when nothing regressed, 1 on a regression, 2 (one line) on bad input."""
    try:
        return _run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.save_baseline:
        if args.baseline or args.candidate:
            raise UserError("--save-baseline RUN_DIR takes no BASELINE or CANDIDATE; run it alone.")
        print(f"saved baseline {save_baseline(args.save_baseline, args.baselines)}")
        return 0
    if not (args.baseline and args.candidate):
        raise UserError("compare needs BASELINE and CANDIDATE run folders (BASELINE may be `latest`), "
                        "or --save-baseline RUN_DIR.")
    rules = parse_thresholds(args.threshold)
    cand_dir = Path(args.candidate)
    cand = _load(cand_dir, "CANDIDATE")
    base_dir = find_baseline(cand, args.baselines) if args.baseline == "latest" else Path(args.baseline)
    base = _load(base_dir, "BASELINE")
    rows = compare_runs(base, cand, rules)
    fb, fc = fingerprint(base.env), fingerprint(cand.env)
    print(f"baseline:  {base_dir}  ({fb})\ncandidate: {cand_dir}  ({fc})")
    if fb != fc:
        print("note: the environment fingerprints differ; speeds may not be comparable.")
    for side, run in (("baseline", base), ("candidate", cand)):
        load_1m = run.measurements.loc[run.measurements["metric"] == "loadavg_1m", "value"].max()
        if load_1m > (run.env.get("cpu_count") or 1) + 1:  # as report.py judges a busy machine
            print(f"warning: the {side}'s machine was busy (1-min load {load_1m:.1f} on "
                  f"{run.env.get('cpu_count')} CPUs); its CPU timings are unreliable.")
    diffs = env_differences(base.env, cand.env)
    print("\nenvironment differences (baseline -> candidate):" if diffs else "\nenvironment: no differences")
    print("".join(f"  {k}: {a} -> {b}\n" for k, a, b in diffs), end="")
    from harness.analysis.text import markdown_table

    view, const = _view(rows)
    print(f"\ncommon to every row: {const}\n" if const else "")
    print(markdown_table(view))
    n = rows["verdict"].value_counts()
    print(f"\n{CI_METHOD}. A regression is worse than its threshold with a CI that excludes 0; "
          f"n/a (n=1): one re-run on a side, judged by threshold only.\n{n.get('regression', 0)} "
          f"regression(s), {n.get('improvement', 0)} improvement(s), {n.get('within noise', 0)} within noise.")
    for side in ("baseline", "candidate"):
        if only := rows.attrs[f"only_{side}"]:
            print(f"not compared, only in the {side} ({len(only)}): {', '.join(only[:3])}"
                  + (", ..." if len(only) > 3 else ""))
    if args.out:
        try:
            atomic_write_text(args.out, rows.to_csv(index=False))
        except OSError as e:
            raise UserError(f"cannot write --out {args.out!r}: {e.strerror}.") from None
        print(f"wrote {args.out}")
    return 1 if n.get("regression", 0) else 0
