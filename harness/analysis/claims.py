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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness._io import atomic_write_text
from harness.registry import Registry

__all__ = ["CLAIMS", "Claim", "Verdict", "above", "bootstrap_ci", "claims_view", "diff_ci", "evaluate_claims", "final_values",
           "write_claims"]

CLAIMS: Registry = Registry("claims", package="studies")


@dataclass(frozen=True)
class Verdict:
    effect: float  # the measured effect the claim is about
    low: float  # its 95% confidence interval
    high: float
    unit: str  # "points", "x", "fraction", ...
    passed: bool | None  # None: the run cannot decide
    detail: str = ""
    applicable: bool = True  # False: the claim is about another setting (a GPU claim on a CPU run)


@dataclass(frozen=True)
class Claim:
    name: str
    source: str  # the paper
    statement: str  # the claim in words, with the paper's number where it gives one
    check: Callable[..., Verdict]


def above(low: float, threshold: float) -> bool | None:
    """Whether a CI's lower bound clears ``threshold``; None when there is no CI (too few runs)."""
    return None if np.isnan(low) else bool(low > threshold)


def final_values(tables, metric: str = "accuracy", split: str = "test", phase: str = "all",
                 **where) -> np.ndarray:
    """One value per final re-run (status ok) of the cells matching ``where`` (column=value)."""
    m = tables.measurements
    sel = (m["stage"] == "final") & (m["status"] == "ok") & (m["metric"] == metric) \
        & (m["split"] == split) & (m["phase"] == phase) & m["epoch"].isna()
    for col, val in where.items():
        sel &= m[col].astype(str) == str(val)
    return m[sel]["value"].to_numpy(dtype=float)


def diff_ci(a: Sequence[float], b: Sequence[float], scale: float = 1.0) -> tuple[float, float, float]:
    """Mean of ``a`` minus mean of ``b`` and its 95% CI (Welch's t), times ``scale``.

    NaN bounds when either side has fewer than two values.
    """
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) == 0 or len(b) == 0:
        return float("nan"), float("nan"), float("nan")
    d = a.mean() - b.mean()
    if len(a) < 2 or len(b) < 2:
        return scale * d, float("nan"), float("nan")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = np.sqrt(va + vb)
    if se == 0:
        return scale * d, scale * d, scale * d
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = stats.t.ppf(0.975, dof) * se
    return scale * d, scale * (d - half), scale * (d + half)


def bootstrap_ci(fn: Callable[..., float], *samples: Sequence[float], n: int = 4000,
                 seed: int = 0) -> tuple[float, float, float]:
    """``fn(*samples)`` and its 95% percentile-bootstrap CI, each sample resampled on its own.

    Seeded, so a report repeats. NaN bounds when a sample has fewer than two values.
    """
    arrays = [np.asarray(s, dtype=float) for s in samples]
    if any(len(a) == 0 for a in arrays):
        return float("nan"), float("nan"), float("nan")
    point = float(fn(*arrays))
    if any(len(a) < 2 for a in arrays):
        return point, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = [fn(*(a[rng.integers(0, len(a), len(a))] for a in arrays)) for _ in range(n)]
    low, high = np.percentile(stats, [2.5, 97.5])
    return point, float(low), float(high)


def evaluate_claims(study: str, tables) -> pd.DataFrame:
    """Every registered claim of ``study`` checked against ``tables``; empty when it has none."""
    cols = ["claim", "source", "statement", "effect", "ci_low", "ci_high", "unit", "verdict", "detail"]
    if study not in CLAIMS:
        return pd.DataFrame(columns=cols)
    rows = []
    for claim in CLAIMS.get(study)():
        try:
            v = claim.check(tables)
        except Exception as e:  # noqa: BLE001 - a check that cannot run is undetermined, said why
            v = Verdict(float("nan"), float("nan"), float("nan"), "", None,
                        f"{type(e).__name__}: {e}")
        verdict = ({True: "pass", False: "fail", None: "undetermined"}[v.passed] if v.applicable
                   else "not applicable")
        rows.append([claim.name, claim.source, claim.statement, v.effect, v.low, v.high, v.unit,
                     verdict, v.detail])
    return pd.DataFrame(rows, columns=cols)


def write_claims(run_dir: str | Path, claims: pd.DataFrame) -> Path:
    path = Path(run_dir) / "claims.csv"
    atomic_write_text(path, claims.to_csv(index=False))
    return path


def claims_view(claims: pd.DataFrame) -> pd.DataFrame:
    """The claims as people read them: verdict, effect with its CI, the paper."""

    def effect(r) -> str:
        ci = "" if pd.isna(r["ci_low"]) else f" [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
        return f"{r['effect']:.2f}{ci} {r['unit']}".strip()

    return pd.DataFrame({"claim": claims["claim"], "verdict": claims["verdict"],
                         "effect [95% CI]": claims.apply(effect, axis=1),
                         "source": claims["source"], "detail": claims["detail"]})
