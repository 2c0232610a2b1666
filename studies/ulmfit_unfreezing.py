"""How much each of ULMFiT's fine-tuning tricks buys across learning rates (Howard & Ruder 2018, Table 7).

Plain fine-tuning (``full_finetune``), discriminative learning rates (``discriminative_lr``,
``lr_decay`` 1/2.6 per block as in the paper), gradual unfreezing (``progressive_unfreezing``,
one more block per epoch from the head down) and both together (``ulmfit``) fine-tune a small
CNN pretrained on MNIST digits 0-4 to digits 5-9 with 50 labels per class, each at every base
learning rate of a log grid from 0.003 to 3 (half-decade steps); every other hyperparameter is
fixed, and every (strategy, lr) point is re-run with 3 seeds (``rerun="all"``). The base rate is
the head's: discriminative rates divide it by 2.6 per block below the head.

The paper's Table 7 (validation error %, classifier fine-tuning of an AWD-LSTM, IMDb / TREC-6 /
AG): Full 6.87 / 6.86 / 5.81; Full + discr 5.57 / 6.21 / 5.62; Freez 6.37 / 6.86 / 5.81;
Freez + discr 5.39 / 5.86 / 6.04; Freez + discr + stlr (ULMFiT) 5.00 / 5.69 / 5.38 (also:
from scratch 9.93 / 13.36 / 6.81; Last 6.49 / 16.09 / 8.38; Chain-thaw 5.39 / 6.71 / 5.90;
Freez + stlr 5.04 / 6.02 / 5.35; Freez + cos 5.70 / 6.38 / 5.29). Each row there is one
learning-rate setting (0.01 at the top layer for discr, 0.001 otherwise), not a sweep; the
paper argues robustness from "excellent performance across the board" and from Figure 4
(Full overfits and forgets after an epoch or so, ULMFiT stays stable). The sweep here asks the
question the brief poses of it: does ULMFiT's recipe make accuracy depend less on the lr?

Protocol differences: a CNN on digits, not an LSTM on text; SGD with Nesterov momentum and a
cosine schedule for every strategy, so there is no slanted triangular schedule (stlr); the
paper's Freez unfreezes one layer per epoch of an AWD-LSTM classifier, ours one block per
epoch of 5 (stem, block1-3, head) within 6 epochs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.analysis.claims import CLAIMS, Claim, Verdict, above, bootstrap_ci, diff_ci
from harness.config.spec import StudySpec
from harness.registry import STUDIES
from studies._mnist_transfer import MNIST_0_4_TO_5_9

STRATEGIES = ("full_finetune", "discriminative_lr", "progressive_unfreezing", "ulmfit")
# half-decades over three decades, fixed before the measured runs: the best lrs of a pilot
# (seed-0 validation: 0.1 for plain fine-tuning, 0.3 for ULMFiT) with a decade on either side
LRS = [0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
FIXED = {"lr": LRS, "weight_decay": [5e-4]}
DECAY = [1 / 2.6]  # the paper's per-layer factor
EVERY = [1]  # the paper unfreezes one layer per epoch
WINDOW = 10.0  # "near its best": learning rates within this factor of a strategy's best


@STUDIES.register("ulmfit_unfreezing")
def ulmfit_unfreezing() -> StudySpec:
    return StudySpec(
        name="ulmfit_unfreezing",
        description=__doc__.strip().splitlines()[0],
        **MNIST_0_4_TO_5_9,
        strategies=STRATEGIES,
        budgets=(50,),  # 250 training images: few enough labels that forgetting can hurt
        epochs=6,  # gradual unfreezing reaches the stem at epoch 4, then 2 epochs of all blocks
        batch_size=16,  # 15 steps per epoch; with 64 there would be 3
        sampler="grid",
        grid={
            "full_finetune": FIXED,
            "discriminative_lr": {**FIXED, "lr_decay": DECAY},
            "progressive_unfreezing": {**FIXED, "unfreeze_every": EVERY},
            "ulmfit": {**FIXED, "lr_decay": DECAY, "unfreeze_every": EVERY},
        },
        trials=len(LRS),  # 4 x 7 x (1 search + 3 seeds) = 112 runs: ~3.5 min on 2 quiet cores
        rerun="all",  # every lr re-run with the seeds below
        seeds=3,
        pruner="none",  # a pruned search trial would leave its lr without re-runs
    )


def _final(tables) -> pd.DataFrame:
    """Final re-runs with their lr and test accuracy; a run that diverged (non-finite loss), or
    whose search trial did, counts at chance accuracy: a diverged fine-tune is the worst thing a
    learning rate can do, and leaving it out would hide it."""
    t = tables.trials
    search = t[t["stage"] == "search"]
    final = t[t["stage"] == "final"].copy()
    nonfinite = t["error"].astype(str).str.contains("NonFiniteLoss")
    # a final re-run of a diverged search trial never ran (it has no parameters of its own):
    # its lr is the search trial's
    if len(search) and "search_trial" in final:
        of = search.set_index(["cell", "trial"])
        key = list(zip(final["cell"], final["search_trial"], strict=True))
        known = [k in of.index for k in key]
        final.loc[known, "param_lr"] = [of.loc[k, "param_lr"] for k, ok in zip(key, known, strict=True) if ok]
        bad = set(of.index[nonfinite[search.index].to_numpy()])
        search_diverged = pd.Series([k in bad for k in key], index=final.index)
    else:
        search_diverged = pd.Series(False, index=final.index)
    diverged = (final["status"] == "failed") & (nonfinite[final.index] | search_diverged)
    classes = tables.spec.get("classes")
    final.loc[diverged, "test_accuracy"] = 1.0 / len(classes) if classes else np.nan
    final["diverged"] = diverged
    return final[(final["status"] == "ok") | diverged]


def _by_lr(final: pd.DataFrame, strategy: str) -> dict[float, pd.DataFrame]:
    rows = final[final["strategy"] == strategy]
    return {float(lr): g for lr, g in sorted(rows.groupby("param_lr"))}


def _test(by_lr: dict[float, pd.DataFrame]) -> list[np.ndarray]:
    return [g["test_accuracy"].to_numpy(dtype=float) for g in by_lr.values()]


def _worst(*accs: np.ndarray) -> float:
    return min(a.mean() for a in accs)


def _profile(by_lr: dict[float, pd.DataFrame]) -> str:
    return " ".join(f"{lr:g}:{100 * g['test_accuracy'].mean():.0f}" for lr, g in by_lr.items())


def _worst_case_over_grid(tables) -> Verdict:
    final = _final(tables)
    u, f = _by_lr(final, "ulmfit"), _by_lr(final, "full_finetune")
    if not u or not f or set(u) != set(f):
        return Verdict(np.nan, np.nan, np.nan, "points", None,
                       f"ulmfit has re-runs at lr {sorted(u)}, full_finetune at {sorted(f)}; the "
                       "comparison needs both at every lr")
    nu = len(u)
    d, low, high = bootstrap_ci(lambda *a: 100 * (_worst(*a[:nu]) - _worst(*a[nu:])),
                                *_test(u), *_test(f))
    others = "; ".join(f"{s} {100 * _worst(*_test(_by_lr(final, s))):.1f}%"
                       for s in ("discriminative_lr", "progressive_unfreezing")
                       if _by_lr(final, s))
    return Verdict(d, low, high, "points", above(low, 0.0),
                   f"worst mean test accuracy over lr {min(u):g}..{max(u):g}: ulmfit "
                   f"{100 * _worst(*_test(u)):.1f}%, full_finetune {100 * _worst(*_test(f)):.1f}% "
                   f"({others}); test % by lr: ulmfit {_profile(u)} | full_finetune {_profile(f)}; "
                   f"diverged runs count at chance ({int(final['diverged'].sum())} of {len(final)})")


def _best_lr(by_lr: dict[float, pd.DataFrame]) -> float:
    """The lr with the highest mean validation accuracy (diverged runs have none: never best)."""
    means = {lr: g["val_accuracy"].mean() for lr, g in by_lr.items()}
    return max((lr for lr in means if not np.isnan(means[lr])), key=lambda lr: means[lr])


def _drop_near_best(by_lr: dict[float, pd.DataFrame]) -> tuple[float, dict[float, pd.DataFrame]]:
    """The best lr on validation and the grid points within ``WINDOW`` of it, best first."""
    best = _best_lr(by_lr)
    near = {lr: g for lr, g in by_lr.items() if best / WINDOW <= lr * (1 + 1e-9)
            and lr <= best * WINDOW * (1 + 1e-9)}
    return best, {best: near.pop(best), **near}


def _sensitivity_near_best(tables) -> Verdict:
    final = _final(tables)
    u, f = _by_lr(final, "ulmfit"), _by_lr(final, "full_finetune")
    if not u or not f:
        return Verdict(np.nan, np.nan, np.nan, "points", None,
                       "needs re-runs of both ulmfit and full_finetune")
    (bu, wu), (bf, wf) = _drop_near_best(u), _drop_near_best(f)
    nu = len(wu)

    def drop(*a: np.ndarray) -> float:  # accuracy at the best lr minus the worst in the window
        return a[0].mean() - _worst(*a)

    d, low, high = bootstrap_ci(lambda *a: 100 * (drop(*a[nu:]) - drop(*a[:nu])),
                                *_test(wu), *_test(wf))
    edge = [s for s, b in (("full_finetune", bf), ("ulmfit", bu))
            if b * WINDOW > max(LRS) * (1 + 1e-9) or b / WINDOW < min(LRS) * (1 - 1e-9)]
    return Verdict(d, low, high, "points", above(low, 0.0),
                   f"test accuracy lost when the lr is off by up to {WINDOW:g}x from the best on "
                   f"validation: full_finetune {100 * drop(*_test(wf)):.1f} points (best lr {bf:g}, "
                   f"window {min(wf):g}..{max(wf):g}), ulmfit {100 * drop(*_test(wu)):.1f} points "
                   f"(best lr {bu:g}, window {min(wu):g}..{max(wu):g}); effect = full's loss minus "
                   "ulmfit's" + (f"; the grid's edge cuts the window of {', '.join(edge)}"
                                 if edge else ""))


def _best_lr_accuracy(tables) -> Verdict:
    final = _final(tables)
    u, f = _by_lr(final, "ulmfit"), _by_lr(final, "full_finetune")
    if not u or not f:
        return Verdict(np.nan, np.nan, np.nan, "points", None,
                       "needs re-runs of both ulmfit and full_finetune")
    bu, bf = _best_lr(u), _best_lr(f)
    au, af = (g["test_accuracy"].to_numpy(dtype=float) for g in (u[bu], f[bf]))
    d, low, high = diff_ci(au, af, scale=100)
    return Verdict(d, low, high, "points", above(low, -1.0),
                   f"each at its best lr on validation: ulmfit {100 * au.mean():.1f}% (lr {bu:g}) vs "
                   f"full_finetune {100 * af.mean():.1f}% (lr {bf:g}), Welch CI")


@CLAIMS.register("ulmfit_unfreezing")
def claims() -> list[Claim]:
    src = "Howard & Ruder 2018"
    return [
        Claim("ulmfit_worst_case_above_full", src,
              "discriminative rates and gradual unfreezing make fine-tuning robust: over the whole "
              "lr grid, ulmfit's worst mean test accuracy is above plain fine-tuning's (CI above "
              "0; the paper shows robustness across datasets, Table 7, and training time, "
              "Figure 4, at one lr each)", _worst_case_over_grid),
        Claim("ulmfit_less_lr_sensitive_near_its_best", src,
              "the same, free of where each method's best lr lies: missing the best lr "
              f"(chosen on validation) by up to {WINDOW:g}x costs ulmfit less test accuracy than "
              "plain fine-tuning (CI above 0)", _sensitivity_near_best),
        Claim("ulmfit_at_least_full_at_best_lr", src,
              "Table 7: Freez + discr + stlr 5.00 / 5.69 / 5.38 % validation error vs Full 6.87 / "
              "6.86 / 5.81 (IMDb / TREC-6 / AG): at each one's best lr, ulmfit is at least as "
              "accurate as plain fine-tuning (CI above -1 point)", _best_lr_accuracy),
    ]
