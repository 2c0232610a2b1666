"""Papers' claims as checks over a run's own tables: measured effect, 95% CI, pass or fail.

A study that reproduces a paper registers its claims beside its spec::

    @CLAIMS.register("finetune_vs_probe")
    def claims() -> list[Claim]:
        return [Claim("ft_beats_probe", "Kornblith et al. 2019", "...", check_fn)]

A check reads :class:`~harness.analysis.results.RunTables` only (never models) and returns a
:class:`Verdict`. ``passed`` is None when the run cannot decide (a cell failed, one seed):
such a claim is reported as undetermined and counts as a failure for ``--check``, because
a claim nobody could test has not been reproduced. A claim about another setting (a GPU speedup
on a CPU-only run) is "not applicable" and does not count.

**One cell per side.** A comparison reads one cell (device, dataset, model, budget, strategy,
execution) per side: :func:`final_values` refuses a selection that matches several, so a run
with two executions cannot double a cell's seeds. A run with several devices, datasets, models,
budgets or executions is checked once per combination of the claim's :attr:`Claim.per` axes:
one row of ``claims.csv`` each, named in its ``context`` column.

**Intervals.** An effect is a contrast of cell means (a difference, a difference of
differences, a slope over depths); :func:`contrast_ci` gives its 95% CI by Welch's t with
Satterthwaite's degrees of freedom, which keeps its coverage with 3-5 seeds where a percentile
bootstrap does not (``tests/harness/test_claims.py`` simulates both). Each cell mean's variance
has two parts: the spread over seeds (initialisation and data order) and, for an accuracy, the
test set's own sampling error (binomial over its examples, :func:`split_examples`), so cells whose
seeds agree exactly (a deterministic L-BFGS probe) still get an interval as wide as the test set
allows. ``ci_method`` and ``variance_sources`` in ``claims.csv`` say which applied.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from harness._io import atomic_write_text
from harness.registry import Registry

__all__ = ["CELL_AXES", "CLAIMS", "CONTEXT", "AmbiguousCells", "Claim", "Interval", "Sample",
           "Verdict", "above", "claims_view", "contrast_ci", "evaluate_claims", "final_sample",
           "final_values", "one_cell", "split_examples", "write_claims"]

CLAIMS: Registry = Registry("claims", package="studies")

CELL_AXES = ("device", "dataset", "model", "budget", "strategy", "execution")  # what makes a cell
CONTEXT = ("device", "dataset", "model", "budget", "execution")  # a claim compares strategies
SEEDS = "seeds (init, data order)"


class AmbiguousCells(ValueError):
    """A selection of final runs that matches more than one cell: pooling them would multiply
    the seeds and narrow the interval, so a claim reports it as undetermined."""


@dataclass(frozen=True)
class Interval:
    """An effect and its 95% CI; NaN bounds with the ``reason`` when there is no interval."""

    effect: float
    low: float
    high: float
    method: str  # e.g. "Welch-Satterthwaite t (df 5.2)"
    sources: str  # the variance the interval covers, e.g. "seeds (init, data order) + ..."
    reason: str = ""


@dataclass(frozen=True)
class Verdict:
    effect: float  # the measured effect the claim is about
    low: float  # its 95% confidence interval
    high: float
    unit: str  # "points", "x", "fraction", ...
    passed: bool | None  # None: the run cannot decide
    detail: str = ""
    applicable: bool = True  # False: the claim is about another setting (a GPU claim on a CPU run)
    ci_method: str = ""  # how low and high were computed
    variance_sources: str = ""  # what the interval covers

    @classmethod
    def of(cls, ci: Interval, unit: str, passed: bool | None, detail: str) -> Verdict:
        """The verdict on ``ci``; its reason for having no bounds, if any, ends the detail."""
        if ci.reason:
            detail = f"{detail}; no interval: {ci.reason}"
        return cls(ci.effect, ci.low, ci.high, unit, passed, detail, ci_method=ci.method,
                   variance_sources=ci.sources)


@dataclass(frozen=True)
class Claim:
    name: str
    source: str  # the paper
    statement: str  # the claim in words, with the paper's number where it gives one
    check: Callable[..., Verdict]
    # the axes checked one value at a time (a row of claims.csv each); the rest the check compares
    per: tuple[str, ...] = CONTEXT


@dataclass(frozen=True, eq=False)
class Sample:
    """One cell's final re-runs: a value per run, and the examples each value is a fraction of.

    ``n_examples`` adds the binomial sampling error of a test accuracy; None for a value that
    is not a proportion of a known test set. Compared by identity: the same cell on both sides
    of a contrast is one term.
    """

    values: np.ndarray
    n_examples: int | None = None
    label: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", np.asarray(self.values, dtype=float))

    @property
    def mean(self) -> float:
        return float(self.values.mean()) if len(self.values) else float("nan")


def above(low: float, threshold: float) -> bool | None:
    """Whether a CI's lower bound clears ``threshold``; None when there is no CI (too few runs)."""
    return None if np.isnan(low) else bool(low > threshold)


def contrast_ci(terms: Sequence[tuple[float, Sample]], scale: float = 1.0) -> Interval:
    """``sum(w * mean)`` over ``(w, sample)`` terms and its 95% CI: Welch-type t, Satterthwaite df.

    Each term's variance is ``w**2 * (s**2 / k + binomial)``: ``s`` the spread of its ``k`` runs
    (df ``k - 1``) and, when the sample has ``n_examples``, ``p(1 - p) / n`` of its test set (the
    Agresti-Coull proportion ``(x + 2) / (n + 4)``, so a perfect score has width too; df
    ``n - 1``). The t quantile takes Satterthwaite's degrees of freedom over all components.
    Cells are taken as independent: two strategies scored on the same test set have positively
    correlated test-set errors, so the binomial part is conservative for a difference (the
    tables hold no per-example predictions to pair them). A difference of two means is Welch's
    interval; of two differences, the same over four cells; a slope over depths, over each depth.

    >>> a, b = Sample([0.90, 0.91, 0.92]), Sample([0.85, 0.86, 0.84])
    >>> round(contrast_ci([(1, a), (-1, b)], scale=100).effect, 6)
    6.0
    """
    merged: dict[Sample, float] = {}
    for w, s in terms:
        merged[s] = merged.get(s, 0.0) + float(w)
    live = [(w, s) for s, w in merged.items() if w != 0]
    effect = scale * sum(w * s.mean for w, s in live)
    tested = [s for _, s in live if s.n_examples]
    sources = SEEDS + (f" + test-set sampling (binomial, {_sizes(tested)} examples per accuracy)"
                       if tested else "")
    method = ("t interval of a mean" if len(live) == 1 else "Welch-Satterthwaite t"
              if len(live) == 2 else f"Welch-type t over {len(live)} cells, Satterthwaite df")
    nan = float("nan")
    short = [s for _, s in live if len(s.values) < 2]
    if short:
        return Interval(effect, nan, nan, method, sources,
                        "; ".join(f"{s.label or 'a cell'} has {len(s.values)} run"
                                  f"{'s' if len(s.values) != 1 else ''}" for s in short)
                        + ": a seed variance needs two")
    parts = []  # (variance, degrees of freedom)
    for w, s in live:
        k = len(s.values)
        spread = 0.0 if np.ptp(s.values) == 0 else s.values.var(ddof=1)  # no rounding noise
        parts.append((w * w * spread / k, k - 1))
        if s.n_examples:
            n = int(s.n_examples)
            p = (np.clip(s.mean, 0.0, 1.0) * n + 2) / (n + 4)
            parts.append((w * w * p * (1 - p) / (n + 4), n - 1))
    var = sum(v for v, _ in parts)
    if var <= 0:
        return Interval(effect, nan, nan, method, sources,
                        "every run gave the same value and no test-set size is known")
    from scipy import stats

    dof = var**2 / sum(v * v / df for v, df in parts if v > 0)
    half = abs(scale) * float(stats.t.ppf(0.975, dof)) * float(np.sqrt(var))
    return Interval(effect, effect - half, effect + half, f"{method} (df {dof:.1f})", sources)


class EdgeOfRange(ValueError):
    """A cell a claim reads selected its config at the edge of the search range."""


def _check_range(tables, rows: pd.DataFrame) -> None:
    """Refuse a cell whose best config sits at the edge of its search range: its optimum may lie
    outside, so comparing it is comparing an under-tuned baseline."""
    summary = tables.summary
    if rows.empty or summary is None or "edge_of_range" not in summary or "cell" not in rows:
        return
    cell = rows["cell"].iloc[0]
    flags = summary.loc[summary["cell"] == cell, "edge_of_range"].dropna()
    flags = [f for f in flags if isinstance(f, str) and f]
    if flags:
        raise EdgeOfRange(f"cell {cell}: its best config sits at the edge of its search range "
                          f"({flags[0]}); widen the range before comparing it")


def one_cell(rows: pd.DataFrame, what: str = "the selection") -> pd.DataFrame:
    """``rows`` when they come from one cell; :class:`AmbiguousCells` naming the axes that differ."""
    keys = [c for c in ("cell", *CELL_AXES) if c in rows.columns]
    if not keys or len(rows[keys].drop_duplicates()) <= 1:
        return rows
    differ = [c for c in CELL_AXES if c in rows.columns and rows[c].nunique() > 1] or ["cell"]
    values = "; ".join(f"{c} {', '.join(sorted(map(str, rows[c].unique())))}" for c in differ)
    raise AmbiguousCells(
        f"{what} matches {rows[keys].drop_duplicates().shape[0]} cells ({values}); a claim "
        "compares one cell per side: name it (e.g. execution='eager') or check each (Claim.per)")


def _final_rows(tables, metric: str, split: str, phase: str, where: dict) -> pd.DataFrame:
    m = tables.measurements
    sel = (m["stage"] == "final") & (m["status"] == "ok") & (m["metric"] == metric) \
        & (m["split"] == split) & (m["phase"] == phase) & m["epoch"].isna()
    for col, val in where.items():
        sel &= m[col].astype(str) == str(val)
    what = ", ".join(f"{k}={v!r}" for k, v in where.items())
    rows = one_cell(m[sel], f"final {metric} on {split} ({what})")
    _check_range(tables, rows)
    return rows


def final_values(tables, metric: str = "accuracy", split: str = "test", phase: str = "all",
                 **where) -> np.ndarray:
    """One value per final re-run (status ok) of the one cell matching ``where`` (column=value).

    Raises :class:`AmbiguousCells` when ``where`` matches several cells (two executions, say):
    their seeds are not replicates of one cell.
    """
    return _final_rows(tables, metric, split, phase, where)["value"].to_numpy(dtype=float)


def final_sample(tables, metric: str = "accuracy", split: str = "test", phase: str = "all",
                 label: str = "", **where) -> Sample:
    """:func:`final_values` as a :class:`Sample`, with its test-set size for an accuracy."""
    rows = _final_rows(tables, metric, split, phase, where)
    dataset = str(rows["dataset"].iloc[0]) if len(rows) and "dataset" in rows else None
    n = split_examples(tables, dataset, split) if metric == "accuracy" else None
    return Sample(rows["value"].to_numpy(dtype=float), n,
                  label or " ".join(str(v) for v in where.values()))


def split_examples(tables, dataset: str | None = None, split: str = "test") -> int | None:
    """How many examples each accuracy on ``split`` of ``dataset`` is a fraction of; None if unknown.

    Final runs record it (``metric="examples"``); for runs made before they did, this rebuilds it
    from what the run records: its spec's dataset, classes and data root, split by the harness's
    own deterministic rule (:func:`harness.data.core.split_indices`, split seed 0 as every run
    uses). An OOD set that shifts the test split has its size; another dataset's OOD set, that
    dataset's test split.
    """
    m = tables.measurements
    if "metric" in m:  # recorded by every final run since the runs record split sizes
        rec = m[(m["metric"] == "examples") & (m["split"] == split)
                & ((m["dataset"] == dataset) if dataset else True)]["value"].dropna()
        if len(rec):
            return int(rec.max())
    spec = tables.spec or {}
    dataset = dataset or spec.get("dataset")
    if not dataset:
        return None
    if split.startswith("ood:"):
        from harness.data.ood import parse_ood

        try:
            name, value = parse_ood(split[len("ood:"):])
        except Exception:  # noqa: BLE001 - an unknown set has no known size
            return None
        dataset = dataset if value is not None else name
    elif split != "test":
        return None
    classes = spec.get("classes")
    return _test_size(str(dataset), None if classes is None else tuple(int(c) for c in classes),
                      spec.get("data_root"))


@functools.lru_cache(maxsize=16)
def _test_size(dataset: str, classes: tuple[int, ...] | None, root: str | None) -> int | None:
    from harness.data.core import load_dataset, split_indices

    try:
        _, y = load_dataset(dataset, root)
    except Exception:  # noqa: BLE001 - data that is not here: the size stays unknown
        return None
    y = np.asarray(y)
    classes = classes if classes is not None else tuple(int(c) for c in np.unique(y))
    return int(sum(len(i) for i in split_indices(y, classes)["test"]))


def _sizes(samples: list[Sample]) -> str:
    sizes = sorted({int(s.n_examples) for s in samples})
    return "/".join(str(n) for n in sizes)


def _contexts(tables, per: Sequence[str]) -> Iterator[tuple[str, object]]:
    """(context label, the tables restricted to it) per combination of ``per`` in the run."""
    m = tables.measurements
    run_rows = [m[m["stage"] != "pretrain"]] if "stage" in m else [m]
    if len(tables.trials):
        run_rows.append(tables.trials)
    axes = [a for a in per if any(a in f.columns and len(f) for f in run_rows)]
    seen = pd.concat([f[[a for a in axes if a in f.columns]].astype(str) for f in run_rows
                      if len(f) and all(a in f.columns for a in axes)], ignore_index=True) \
        if axes else pd.DataFrame()
    combos = seen.drop_duplicates().to_dict("records") if len(seen) else []
    if len(combos) <= 1:
        label = ", ".join(f"{k}={v}" for k, v in (combos[0] if combos else {}).items())
        yield label, tables
        return
    for combo in sorted(combos, key=lambda c: tuple(c.values())):
        yield ", ".join(f"{k}={v}" for k, v in combo.items()), _restrict(tables, combo)


def _restrict(tables, combo: dict[str, str]):
    def sub(df: pd.DataFrame, keep_pretrain: bool = False) -> pd.DataFrame:
        if not len(df):
            return df
        sel = pd.Series(True, index=df.index)
        for k, v in combo.items():
            if k in df.columns:
                sel &= df[k].astype(str) == v
        if keep_pretrain and "stage" in df.columns:
            sel |= df["stage"] == "pretrain"
        return df[sel]

    return replace(tables, measurements=sub(tables.measurements, keep_pretrain=True),
                   trials=sub(tables.trials), summary=sub(tables.summary))


_COLUMNS = ["claim", "context", "source", "statement", "effect", "ci_low", "ci_high", "unit",
            "verdict", "ci_method", "variance_sources", "detail"]


def evaluate_claims(study: str, tables) -> pd.DataFrame:
    """Every registered claim of ``study`` checked against ``tables``, once per context of its
    ``per`` axes; empty when it has none."""
    if study not in CLAIMS:
        return pd.DataFrame(columns=_COLUMNS)
    rows = []
    for claim in CLAIMS.get(study)():
        for context, sub in _contexts(tables, claim.per):
            v = _run_check(claim, sub)
            verdict = ({True: "pass", False: "fail", None: "undetermined"}[v.passed]
                       if v.applicable else "not applicable")
            rows.append([claim.name, context, claim.source, claim.statement, v.effect, v.low,
                         v.high, v.unit, verdict, v.ci_method, v.variance_sources, v.detail])
    return pd.DataFrame(rows, columns=_COLUMNS)


def _run_check(claim: Claim, tables) -> Verdict:
    try:
        return claim.check(tables)
    except (AmbiguousCells, EdgeOfRange) as e:
        return Verdict(float("nan"), float("nan"), float("nan"), "", None, str(e))
    except Exception as e:  # noqa: BLE001 - a check that cannot run is undetermined, said why
        return Verdict(float("nan"), float("nan"), float("nan"), "", None,
                       f"{type(e).__name__}: {e}")


def write_claims(run_dir: str | Path, claims: pd.DataFrame) -> Path:
    path = Path(run_dir) / "claims.csv"
    atomic_write_text(path, claims.to_csv(index=False))
    return path


def claims_view(claims: pd.DataFrame) -> pd.DataFrame:
    """The claims as people read them: verdict, effect with its CI and method, the paper."""

    def effect(r) -> str:
        ci = "" if pd.isna(r["ci_low"]) else f" [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
        return f"{r['effect']:.2f}{ci} {r['unit']}".strip()

    view = pd.DataFrame({"claim": claims["claim"], "verdict": claims["verdict"],
                         "effect [95% CI]": claims.apply(effect, axis=1)})
    if "context" in claims and claims["context"].nunique() > 1:
        view.insert(1, "context", claims["context"])
    for col, name in (("ci_method", "CI method"), ("variance_sources", "CI covers")):
        if col in claims:
            view[name] = claims[col].fillna("")
    view["source"] = claims["source"]
    view["detail"] = claims["detail"]
    return view
