"""LP-FT against fine-tuning and a linear probe out of distribution (Kumar et al. 2022, ICLR).

Kumar et al. found that, against a linear probe, full fine-tuning gains about 2% in distribution
(ID) but loses about 7% out of distribution (OOD), and that LP-FT (probe, then fine-tune from the
probed head) gains about 1% ID and 10% OOD over fine-tuning. Their explanation: fine-tuning from
a random head changes the features of ID inputs and leaves those of OOD inputs nearly as they
were, so the new head no longer fits the OOD features ("feature distortion").

Here the pretraining covers the shift, as the paper assumes of its pretrained models: a small CNN
learns MNIST digits 0-4 with random rotations of up to 45 degrees (fresh angles each epoch). The
ID task is upright digits 5-9 with 10 labelled examples per class; the OOD sets are the test
digits rotated by -30 and +30 degrees, inside the range pretraining saw. Final runs also record
``feature_distortion`` (``harness.run.trial.feature_distortion``) on the test split and each OOD set.
A two-layer linear network checks the paper's theory exactly (:func:`two_layer_simulation`); it
reads nothing of the run, so it is a test (``tests/studies/test_lp_ft_ood.py``), not a claim.

The search follows the paper's protocol: a grid per strategy, selected on ID validation accuracy.
The probe is L-BFGS logistic regression over its regularisation C; fine-tuning sweeps the learning
rate; LP-FT starts from an L-BFGS probe (C 10 or 100, around the probe's own selection) and sweeps
the fine-tuning learning rate. Every strategy gets 8 configurations, each run to the end.
"""

from __future__ import annotations

from collections.abc import Callable

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
from harness.config.spec import PretrainRecipe, StudySpec
from harness.registry import STUDIES

LP, FT, LPFT = "linear_probe_lbfgs", "full_finetune", "lp_ft"
SOURCE = "Kumar et al. 2022"


@STUDIES.register("lp_ft_ood")
def lp_ft_ood() -> StudySpec:
    return StudySpec(
        name="lp_ft_ood",
        description=__doc__.strip().splitlines()[0],
        dataset="mnist5k",
        classes=(5, 6, 7, 8, 9),
        model="small_cnn",
        # 15 epochs: the source reaches ~97% (upright) val accuracy, 6 epochs ~94%; rotations
        # up to 45 degrees cover the OOD sets below
        pretrain=PretrainRecipe(dataset="mnist5k", classes=(0, 1, 2, 3, 4), epochs=15,
                                augment=("rotate:45",)),
        strategies=(LP, FT, LPFT),
        budgets=(10,),  # few labels: the regime where a good head matters most
        epochs=10,
        batch_size=10,  # 5 steps per epoch on 50 examples: 50 steps in all
        trials=8,  # every grid point, selected on ID validation accuracy, as in the paper
        seeds=8,  # the re-runs whose differences the claims test
        ood=("rotate:-30", "rotate:30"),
        sampler="grid",
        # a 10-trial TPE search over LP-FT's five hyperparameters (SGD or L-BFGS probe, its
        # strength and length, lr, weight decay) settled on a weak probe head (C=0.11) at 80.6%
        # validation accuracy; this sweep's best reaches 87.4%, so the paper's sweep it is.
        # 8 points each (12-point grids chose the same configs on validation and cost 1.5x):
        # fine-tuning below lr 0.005 stays near chance in 50 steps; C is capped by the probe's
        # own search range; LP-FT above lr 0.05 lost to lower rates
        grid={
            LP: {"C": [0.001, 0.01, 0.1, 1.0, 3.0, 10.0, 30.0, 100.0]},
            FT: {"lr": [0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3], "weight_decay": [1e-4]},
            LPFT: {"probe_solver": ["lbfgs"], "C": [10.0, 100.0], "probe_fraction": [0.3],
                   "lr": [0.005, 0.01, 0.02, 0.05], "weight_decay": [1e-4]},
        },
        # every grid point runs to the end: a median pruner would judge LP-FT in its probe
        # epochs, i.e. on C alone, before fine-tuning starts
        pruner="none",
    )


def _final(tables, metric: str, strategy: str) -> tuple[pd.DataFrame, str | None]:
    """Final re-runs (ok) of ``strategy``'s one cell: one row per seed, one column per split;
    and the cell's dataset."""
    m = tables.measurements
    sel = (m["stage"] == "final") & (m["status"] == "ok") & (m["metric"] == metric) \
        & (m["phase"] == "all") & m["epoch"].isna() & (m["strategy"] == strategy)
    rows = one_cell(m[sel], f"final {metric} of {strategy}")
    dataset = str(rows["dataset"].iloc[0]) if len(rows) else None
    return rows.pivot_table(index="seed", columns="split", values="value", aggfunc="first"), dataset


def _id_ood(tables, metric: str, strategy: str) -> tuple[Sample, Sample]:
    """Per seed: the test value and the mean over the run's OOD sets (seeds with both only).

    For accuracy, each carries its test-set size: the mean over OOD sets takes the smallest
    set's (the sets are the same digits rotated, so their errors are not independent).
    """
    t, dataset = _final(tables, metric, strategy)
    ood = [c for c in t.columns if str(c).startswith("ood:")]
    if "test" not in t.columns or not ood:
        raise ValueError(f"no final {metric} rows of {strategy} on the test split and an OOD set")
    t = t.dropna(subset=["test", *ood])
    n_id = n_ood = None
    if metric == "accuracy":
        n_id = split_examples(tables, dataset, "test")
        sizes = [split_examples(tables, dataset, str(c)) for c in ood]
        n_ood = None if None in sizes else min(sizes)
    return (Sample(t["test"].to_numpy(float), n_id, f"{strategy} ID"),
            Sample(t[ood].mean(axis=1).to_numpy(float), n_ood, f"{strategy} OOD"))


def _diff(a: Sample, b: Sample, scale: float = 100):
    return contrast_ci([(1, a), (-1, b)], scale)


def _lp_beats_ft_ood(tables) -> Verdict:
    lp_id, lp_ood = _id_ood(tables, "accuracy", LP)
    ft_id, ft_ood = _id_ood(tables, "accuracy", FT)
    ci, id_ci = _diff(lp_ood, ft_ood), _diff(ft_id, lp_id)
    return Verdict.of(ci, "points", above(ci.low, 0.0),
                      f"OOD {100 * lp_ood.mean:.1f}% (probe) vs {100 * ft_ood.mean:.1f}% "
                      f"(fine-tune); ID: fine-tune {id_ci.effect:+.1f} [{id_ci.low:.1f}, "
                      f"{id_ci.high:.1f}] points over the probe ({len(lp_ood.values)} and "
                      f"{len(ft_ood.values)} seeds)")


def _ft_beats_lp_id(tables) -> Verdict:
    lp_id, _ = _id_ood(tables, "accuracy", LP)
    ft_id, _ = _id_ood(tables, "accuracy", FT)
    ci = _diff(ft_id, lp_id)
    return Verdict.of(ci, "points", above(ci.low, 0.0),
                      f"ID test {100 * ft_id.mean:.1f}% (fine-tune) vs {100 * lp_id.mean:.1f}% "
                      f"(probe), {len(ft_id.values)} and {len(lp_id.values)} seeds")


def _lpft_beats_ft(split: str) -> Callable[..., Verdict]:
    def check(tables) -> Verdict:
        ft = _id_ood(tables, "accuracy", FT)[split == "ood"]
        lf = _id_ood(tables, "accuracy", LPFT)[split == "ood"]
        ci = _diff(lf, ft)
        # superiority, as the paper claims it (+10 OOD, +1 ID): the CI must exclude "no better"
        return Verdict.of(ci, "points", above(ci.low, 0.0),
                          f"{split.upper()} {100 * lf.mean:.1f}% (LP-FT) vs {100 * ft.mean:.1f}% "
                          f"(fine-tune), {len(lf.values)} and {len(ft.values)} seeds")

    return check


def _ft_distorts_more(tables) -> Verdict:
    ft_id, ft_ood = _id_ood(tables, "feature_distortion", FT)
    lf_id, lf_ood = _id_ood(tables, "feature_distortion", LPFT)
    ci = _diff(ft_id, lf_id, scale=1)
    return Verdict.of(ci, "fraction", above(ci.low, 0.0),
                      f"mean ||f(x) - f0(x)|| / ||f0(x)|| on the ID test split: fine-tune "
                      f"{ft_id.mean:.3f}, LP-FT {lf_id.mean:.3f}; on the OOD sets {ft_ood.mean:.3f} "
                      f"and {lf_ood.mean:.3f} (test-set sampling of distortion is not recorded)")


def _ft_distorts_id_more_than_ood(tables) -> Verdict:
    ft_id, ft_ood = _id_ood(tables, "feature_distortion", FT)
    diffs = Sample(ft_id.values - ft_ood.values, label="FT ID - OOD distortion")  # paired per run
    ci = contrast_ci([(1, diffs)])
    return Verdict.of(ci, "fraction", above(ci.low, 0.0),
                      f"fine-tune's distortion {ft_id.mean:.3f} on ID test inputs vs "
                      f"{ft_ood.mean:.3f} on OOD inputs (paired per run, {len(diffs.values)} runs)")


def two_layer_simulation(draws: int = 10, d: int = 20, m: int = 8, k: int = 4, n: int = 40,
                         eps: float = 0.05, steps: int = 3000, lr: float = 0.05,
                         seed: int = 0) -> dict[str, np.ndarray]:
    """Kumar et al.'s two-layer linear network ``y = v^T B x``, ``draws`` seeded problems at once.

    Per draw: a random ``d``-dimensional input space, an ID subspace S of dimension ``m``
    (training inputs live there, ``n`` of them, noiseless labels), true features ``B*`` (``k``
    orthonormal rows) and head ``v*``, pretrained features ``B0 = B* + eps * noise``. LP fits
    the head on ``B0`` by least squares; FT runs ``steps`` of full-batch gradient descent on the
    squared loss over ``(v, B)`` from ``B0`` and a random head; LP-FT the same from the LP head.
    Errors are exact population errors of ``w = B^T v`` against ``w* = B*^T v*`` for standard
    Gaussian inputs in S (ID) and in its complement (OOD). Returns per-draw arrays.
    """
    rng = np.random.default_rng(seed)
    q = np.linalg.qr(rng.normal(size=(draws, d, d)))[0]
    s_in, s_out = q[:, :, :m], q[:, :, m:]
    b_star = np.swapaxes(np.linalg.qr(rng.normal(size=(draws, d, k)))[0], 1, 2)
    w_star = np.einsum("nkd,nk->nd", b_star, rng.normal(size=(draws, k)))
    b0 = b_star + eps * rng.normal(size=(draws, k, d)) / np.sqrt(d)
    x = np.einsum("nim,ndm->nid", rng.normal(size=(draws, n, m)), s_in)
    y = np.einsum("nid,nd->ni", x, w_star)
    feats = np.einsum("nid,nkd->nik", x, b0)
    v_lp = np.stack([np.linalg.lstsq(f, t, rcond=None)[0] for f, t in zip(feats, y)])
    # FT (random head) and LP-FT (probed head) descend together: rows [:draws] and [draws:]
    v = np.concatenate([rng.normal(size=(draws, k)), v_lp])
    b = np.concatenate([b0, b0])
    sxx = np.tile(np.einsum("nid,nie->nde", x, x) / n, (2, 1, 1))
    sxy = np.tile(np.einsum("nid,ni->nd", x, y) / n, (2, 1))
    for _ in range(steps):
        gw = np.einsum("nde,ne->nd", sxx, np.einsum("nkd,nk->nd", b, v)) - sxy  # dL/dw
        gv = np.einsum("nkd,nd->nk", b, gw)
        b -= lr * v[:, :, None] * gw[:, None, :]  # dL/dB = v gw^T: rows of the change lie in S
        v -= lr * gv

    def errors(vv, bb):
        w = np.einsum("nkd,nk->nd", bb, vv) - w_star
        return ((np.einsum("ndm,nd->nm", s_in, w) ** 2).sum(1),
                (np.einsum("ndm,nd->nm", s_out, w) ** 2).sum(1))

    out = {}
    for name, (vv, bb) in {"lp": (v_lp, b0), "ft": (v[:draws], b[:draws]),
                           "lpft": (v[draws:], b[draws:])}.items():
        out[f"{name}_id"], out[f"{name}_ood"] = errors(vv, bb)
    for name, bb in {"ft": b[:draws], "lpft": b[draws:]}.items():
        change = bb - b0
        out[f"{name}_change"] = np.linalg.norm(change, axis=(1, 2)) / np.linalg.norm(b0, axis=(1, 2))
        # the share of B's change that acts on OOD directions: 0 up to rounding
        out[f"{name}_change_ood"] = (np.linalg.norm(np.einsum("nkd,ndm->nkm", change, s_out), axis=(1, 2))
                                     / np.linalg.norm(change, axis=(1, 2)))
    return out


@CLAIMS.register("lp_ft_ood")
def claims() -> list[Claim]:
    ood = "OOD accuracy = per run, the mean over the study's OOD sets"
    return [
        Claim("ft_beats_lp_id", SOURCE,
              "fine-tuning is more accurate than the linear probe in distribution (paper: about "
              "+2%); ID test accuracy difference FT - LP, CI above 0", _ft_beats_lp_id),
        Claim("lp_beats_ft_ood", SOURCE,
              f"the linear probe is more accurate than fine-tuning out of distribution (paper: "
              f"FT about 7% worse); {ood}; difference LP - FT, CI above 0", _lp_beats_ft_ood),
        Claim("lpft_beats_ft_ood", SOURCE,
              f"LP-FT is more accurate than fine-tuning out of distribution (paper: +10%); {ood}; "
              "difference LP-FT - FT, CI above 0 (superiority)", _lpft_beats_ft("ood")),
        Claim("lpft_beats_ft_id", SOURCE,
              "LP-FT is more accurate than fine-tuning in distribution (paper: +1%); ID test "
              "accuracy difference LP-FT - FT, CI above 0 (superiority)", _lpft_beats_ft("id")),
        Claim("ft_distorts_more_than_lpft", SOURCE,
              "fine-tuning changes the pretrained features more than LP-FT: feature distortion "
              "(mean ||f(x) - f0(x)|| / ||f0(x)||, f = the head's input) on the ID test split, "
              "FT - LP-FT, CI above 0", _ft_distorts_more),
        Claim("ft_distorts_id_more_than_ood", SOURCE,
              "fine-tuning changes the features of ID inputs more than those of OOD inputs: "
              "FT's distortion on the test split minus its mean over the OOD sets, paired per "
              "run, t interval above 0", _ft_distorts_id_more_than_ood),
    ]
