"""Freezing the first n pretrained blocks hurts transfer to a dissimilar task (Yosinski et al. 2014).

A small CNN is pretrained on ``synthetic_mnist`` (smooth blob prototypes under heavy clutter
and pixel noise: no strokes, no digits) and transferred to real MNIST digits (``mnist5k``,
all 10 classes, 100 labelled examples per class). The first n of its 5 blocks (stem,
block1-3, head) are copied from the pretrained network and frozen, the rest train:

- n = 0: ``full_finetune``, every block trains (Yosinski's fine-tuned AnB+ at every n is this
  network too: here every block starts from the pretrained weights, see below);
- n = 1..4: ``partial_freeze`` with ``train_top_k = 5 - n``; n = 4 trains the new head alone.

Every n trains with the same recipe (lr 0.3, weight decay 5e-4, 6 epochs, batch 64), and every
n is re-run with 5 seeds (``rerun="all"``), so each point of the curve has its own CI.

Protocol differences from the paper: Yosinski et al. froze the first n layers of an 8-layer
ImageNet network and *re-initialised* the layers above them (AnB); here the blocks above n
start from the pretrained weights, as partial freezing does in practice, and the fine-tuned
control AnB+ therefore collapses to one network, ``full_finetune``. Their dissimilar pair was
ImageNet's man-made vs natural classes; ours is generated blobs vs handwritten digits. The
paper reports its results as plots (its Figures 2-4), not tables.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.analysis.claims import CLAIMS, Claim, Verdict, above, bootstrap_ci, diff_ci
from harness.config.spec import PretrainRecipe, StudySpec
from harness.registry import STUDIES

MODEL = "small_cnn"
# lr 0.3: within half a point of the best of 0.1 / 0.3 / 0.6 / 1.0 at every n in a pilot (seed-0
# validation accuracy); frozen heads want large steps, and so does fine-tuning away from blobs
FIXED = {"lr": [0.3], "weight_decay": [5e-4]}


@STUDIES.register("freeze_depth")
def freeze_depth() -> StudySpec:
    return StudySpec(
        name="freeze_depth",
        description=__doc__.strip().splitlines()[0],
        dataset="mnist5k",
        classes=tuple(range(10)),  # all 10 digits
        model=MODEL,
        # 10 epochs at lr 1.0 reach 79% source validation accuracy (the default 6 at 0.05: 48%):
        # a network trained on its own task, so what it transfers is specific to that task
        pretrain=PretrainRecipe(model=MODEL, dataset="synthetic_mnist", classes=tuple(range(10)),
                                epochs=10, lr=1.0),
        strategies=("full_finetune", "partial_freeze"),
        budgets=(100,),  # 1,000 training images: ~2 s per run on one quiet core
        epochs=6,
        batch_size=64,
        sampler="grid",
        grid={
            "full_finetune": FIXED,
            "partial_freeze": {**FIXED, "train_top_k": [4, 3, 2, 1]},  # n = 1, 2, 3, 4 frozen
        },
        trials=4,  # the grid's size caps it: 1 config for full_finetune, 4 for partial_freeze
        rerun="all",  # every n re-run with the seeds below, not just the best one
        seeds=5,  # 5 x (1 search + 5 seeds) = 30 runs: ~40 s on 2 quiet cores, pretraining included
        pruner="none",  # a pruned search trial would leave its n without re-runs
    )


def _n_blocks(tables) -> int:
    from harness.models.core import blocks, build_model

    return len(blocks(build_model(tables.spec.get("model", MODEL), 1, 2)))


def _by_depth(tables) -> dict[int, pd.DataFrame]:
    """Frozen blocks n -> the final re-runs of that n (status ok): their val and test accuracy."""
    t = tables.trials
    final = t[(t["stage"] == "final") & (t["status"] == "ok")]
    n_blocks = _n_blocks(tables)
    out = {}
    ft = final[final["strategy"] == "full_finetune"]
    if len(ft):
        out[0] = ft
    pf = final[final["strategy"] == "partial_freeze"]
    for k, rows in pf.groupby(pf["param_train_top_k"].round().astype(int)):
        out[n_blocks - int(k)] = rows
    return dict(sorted(out.items()))


def _slope(depths: np.ndarray, *accs: np.ndarray) -> float:
    """Least-squares slope of mean accuracy on n, in points per frozen block."""
    return 100 * float(np.polyfit(depths, [a.mean() for a in accs], 1)[0])


def _degrades_with_depth(tables) -> Verdict:
    by_n = _by_depth(tables)
    if len(by_n) < 3:
        return Verdict(np.nan, np.nan, np.nan, "points/block", None,
                       f"only n = {sorted(by_n)} have completed re-runs; the trend needs three")
    depths = np.array(sorted(by_n), dtype=float)
    accs = [by_n[n]["test_accuracy"].to_numpy(dtype=float) for n in sorted(by_n)]
    s, low, high = bootstrap_ci(lambda *a: _slope(depths, *a), *accs)
    passed = None if np.isnan(high) else bool(high < 0)
    means = ", ".join(f"n={n}: {100 * a.mean():.1f}%" for n, a in zip(by_n, accs, strict=True))
    return Verdict(s, low, high, "points/block", passed,
                   f"test accuracy by frozen blocks ({means}); least-squares slope, bootstrap "
                   "over seeds within each n")


def _full_ft_recovers(tables) -> Verdict:
    by_n = _by_depth(tables)
    frozen = {n: rows for n, rows in by_n.items() if n > 0}
    if 0 not in by_n or not frozen:
        return Verdict(np.nan, np.nan, np.nan, "points", None,
                       "needs completed re-runs of full_finetune and of a frozen n")
    # the best frozen setting is chosen on validation accuracy, never on test
    best = max(frozen, key=lambda n: frozen[n]["val_accuracy"].mean())
    ft = by_n[0]["test_accuracy"].to_numpy(dtype=float)
    fz = frozen[best]["test_accuracy"].to_numpy(dtype=float)
    d, low, high = diff_ci(ft, fz, scale=100)
    deepest = max(frozen)
    gain = 100 * (ft.mean() - frozen[deepest]["test_accuracy"].mean())
    # non-inferiority with a 1-point margin: the CI must exclude "1 point worse than frozen"
    return Verdict(d, low, high, "points", above(low, -1.0),
                   f"full_finetune {100 * ft.mean():.1f}% vs the best frozen setting on val, "
                   f"n={best}: {100 * fz.mean():.1f}% (Welch CI); {gain:+.1f} points over the "
                   f"deepest, n={deepest}")


@CLAIMS.register("freeze_depth")
def claims() -> list[Claim]:
    src = "Yosinski et al. 2014"
    return [
        Claim("accuracy_falls_as_more_blocks_are_frozen", src,
              "transferring features to a dissimilar task and freezing them gets worse the more "
              "layers are frozen (their Figure 4, man-made vs natural ImageNet classes): the "
              "slope of test accuracy on the number of frozen blocks n = 0..4 is negative "
              "(CI below 0)", _degrades_with_depth),
        Claim("fine_tuning_every_block_recovers", src,
              "fine-tuning the transferred layers (AnB+) recovers the loss: full fine-tuning is "
              "at least as accurate as the best frozen setting, chosen on validation (CI above "
              "-1 point)", _full_ft_recovers),
    ]
