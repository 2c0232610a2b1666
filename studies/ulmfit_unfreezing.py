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

from harness.analysis.claims import (
    CLAIMS,
    Claim,
    Sample,
    Verdict,
    above,
    contrast_ci,
    one_cell,
    split_examples,
)
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
    """One row per run that happened, with its lr and test accuracy.

    A final re-run that diverged (non-finite loss) ran: it counts at chance accuracy, since a
    diverged fine-tune is the worst thing a learning rate can do and leaving it out would hide
    it. The re-runs of a search trial that diverged never ran (they failed for want of a
    config): they are no values. That search trial is the one run of its lr, counted once at
    chance; with a single run its lr has no seed variance, and a claim that needs it is
    undetermined. (Counting it as three re-runs at chance made one run look like three
    identical seeds: pseudo-replication, and a zero-variance cell.)
    """
    t = tables.trials
    nonfinite = t["error"].astype(str).str.contains("NonFiniteLoss")
    diverged = (t["status"] == "failed") & nonfinite
    final = t[(t["stage"] == "final") & ((t["status"] == "ok") | diverged)].copy()
    final["search_diverged"] = False
    lone = t[(t["stage"] == "search") & diverged].copy()
    if "search_trial" in final:  # a diverged search trial stands alone only if no re-run ran
        rerun = set(zip(final["cell"], final["search_trial"], strict=True))
        lone = lone[[k not in rerun for k in zip(lone["cell"], lone["trial"], strict=True)]]
    lone["search_diverged"] = True
    runs = pd.concat([final, lone]) if len(lone) else final
    classes = tables.spec.get("classes")
    runs["diverged"] = diverged[runs.index].to_numpy()
    runs.loc[runs["diverged"], "test_accuracy"] = 1.0 / len(classes) if classes else np.nan
    runs.loc[runs["diverged"], "val_accuracy"] = np.nan  # a diverged lr is never the best
    return runs


def _by_lr(tables, runs: pd.DataFrame, strategy: str) -> dict[float, Sample]:
    """lr -> the test accuracies of ``strategy``'s runs at that lr (its one cell)."""
    rows = one_cell(runs[runs["strategy"] == strategy], f"{strategy}'s runs")
    dataset = str(rows["dataset"].iloc[0]) if "dataset" in rows and len(rows) else None
    n_test = split_examples(tables, dataset)
    return {float(lr): Sample(g["test_accuracy"].to_numpy(dtype=float), n_test,
                              f"{strategy} at lr {lr:g}"
                              + (" (its search trial diverged; no re-run ran)"
                                 if g["search_diverged"].any() else ""))
            for lr, g in sorted(rows.groupby("param_lr"))}


def _val_by_lr(runs: pd.DataFrame, strategy: str) -> dict[float, float]:
    rows = runs[runs["strategy"] == strategy]
    return {float(lr): float(g["val_accuracy"].mean()) for lr, g in rows.groupby("param_lr")}


def _worst(by_lr: dict[float, Sample]) -> float:
    """The lr with the lowest mean test accuracy."""
    return min(by_lr, key=lambda lr: by_lr[lr].mean)


def _profile(by_lr: dict[float, Sample]) -> str:
    return " ".join(f"{lr:g}:{100 * s.mean:.0f}" for lr, s in by_lr.items())


def _both(tables) -> tuple[pd.DataFrame, dict[float, Sample], dict[float, Sample]]:
    runs = _final(tables)
    return runs, _by_lr(tables, runs, "ulmfit"), _by_lr(tables, runs, "full_finetune")


def _best(runs: pd.DataFrame) -> tuple[float, float]:
    """Each strategy's best lr on validation: (ulmfit's, full_finetune's)."""
    return _best_lr(_val_by_lr(runs, "ulmfit")), _best_lr(_val_by_lr(runs, "full_finetune"))


def _worst_case_over_grid(tables) -> Verdict:
    runs, u, f = _both(tables)
    if not u or not f or set(u) != set(f):
        return Verdict(np.nan, np.nan, np.nan, "points", None,
                       f"ulmfit has runs at lr {sorted(u)}, full_finetune at {sorted(f)}; the "
                       "comparison needs both at every lr")
    wu, wf = _worst(u), _worst(f)
    # the two worst cells, picked by their test means (the minimum of means is biased low for
    # both sides alike), compared by Welch's t
    ci = contrast_ci([(1, u[wu]), (-1, f[wf])], scale=100)
    others = "; ".join(f"{s} {100 * min(x.mean for x in by.values()):.1f}%"
                       for s in ("discriminative_lr", "progressive_unfreezing")
                       if (by := _by_lr(tables, runs, s)))
    return Verdict.of(ci, "points", above(ci.low, 0.0),
                      f"worst mean test accuracy over lr {min(u):g}..{max(u):g}: ulmfit "
                      f"{100 * u[wu].mean:.1f}% (lr {wu:g}), full_finetune {100 * f[wf].mean:.1f}% "
                      f"(lr {wf:g})" + (f" ({others})" if others else "") + "; test % by lr: "
                      f"ulmfit {_profile(u)} | "
                      f"full_finetune {_profile(f)}; diverged runs count at chance "
                      f"({int(runs['diverged'].sum())} of {len(runs)} runs)")


def _best_lr(val: dict[float, float]) -> float:
    """The lr with the highest mean validation accuracy (diverged runs have none: never best)."""
    return max((lr for lr in val if not np.isnan(val[lr])), key=lambda lr: val[lr])


def _window(by_lr: dict[float, Sample], best: float) -> dict[float, Sample]:
    """The grid points within ``WINDOW`` of the best lr."""
    return {lr: s for lr, s in by_lr.items() if best / WINDOW <= lr * (1 + 1e-9)
            and lr <= best * WINDOW * (1 + 1e-9)}


def _sensitivity_near_best(tables) -> Verdict:
    runs, u, f = _both(tables)
    if not u or not f:
        return Verdict(np.nan, np.nan, np.nan, "points", None,
                       "needs re-runs of both ulmfit and full_finetune")
    bu, bf = _best(runs)
    wu, wf = _window(u, bu), _window(f, bf)
    lu, lf = _worst(wu), _worst(wf)  # the worst lr of each window (the best itself if flat)
    # full's loss (best - worst in its window) minus ulmfit's: a contrast of four cells
    ci = contrast_ci([(1, f[bf]), (-1, f[lf]), (-1, u[bu]), (1, u[lu])], scale=100)
    edge = [s for s, b in (("full_finetune", bf), ("ulmfit", bu))
            if b * WINDOW > max(LRS) * (1 + 1e-9) or b / WINDOW < min(LRS) * (1 - 1e-9)]
    return Verdict.of(ci, "points", above(ci.low, 0.0),
                      f"test accuracy lost when the lr is off by up to {WINDOW:g}x from the best "
                      f"on validation: full_finetune {100 * (f[bf].mean - f[lf].mean):.1f} points "
                      f"(best lr {bf:g}, worst {lf:g}, window {min(wf):g}..{max(wf):g}), ulmfit "
                      f"{100 * (u[bu].mean - u[lu].mean):.1f} points (best lr {bu:g}, worst {lu:g}, "
                      f"window {min(wu):g}..{max(wu):g}); effect = full's loss minus ulmfit's"
                      + (f"; the grid's edge cuts the window of {', '.join(edge)}" if edge else ""))


def _best_lr_accuracy(tables) -> Verdict:
    runs, u, f = _both(tables)
    if not u or not f:
        return Verdict(np.nan, np.nan, np.nan, "points", None,
                       "needs re-runs of both ulmfit and full_finetune")
    bu, bf = _best(runs)
    ci = contrast_ci([(1, u[bu]), (-1, f[bf])], scale=100)
    # superiority, as Table 7 reports it (lower error on all three datasets)
    return Verdict.of(ci, "points", above(ci.low, 0.0),
                      f"each at its best lr on validation: ulmfit {100 * u[bu].mean:.1f}% (lr "
                      f"{bu:g}) vs full_finetune {100 * f[bf].mean:.1f}% (lr {bf:g})")


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
        Claim("ulmfit_beats_full_at_best_lr", src,
              "Table 7: Freez + discr + stlr 5.00 / 5.69 / 5.38 % validation error vs Full 6.87 / "
              "6.86 / 5.81 (IMDb / TREC-6 / AG): at each one's best lr (chosen on validation), "
              "ulmfit is more accurate than plain fine-tuning (CI above 0)", _best_lr_accuracy),
    ]
