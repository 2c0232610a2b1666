"""Fine-tuning vs linear probe across label budgets (the question of Kornblith, Shlens & Le 2019).

A small CNN is pretrained on MNIST digits 0-4 (the source task) and transferred to digits 5-9
(the target) with 10, 100 or all (300) labelled examples per class. Kornblith et al. found
fine-tuning beat logistic regression on fixed features in 179 of 192 dataset x model pairs; the
gap is expected to shrink, or turn, when labels are scarce.
"""

from harness.analysis.claims import (
    CLAIMS,
    Claim,
    Verdict,
    above,
    bootstrap_ci,
    diff_ci,
    final_values,
)
from harness.config.spec import StudySpec
from harness.registry import STUDIES
from studies._mnist_transfer import MNIST_0_4_TO_5_9


@STUDIES.register("finetune_vs_probe")
def finetune_vs_probe() -> StudySpec:
    return StudySpec(
        name="finetune_vs_probe",
        description=__doc__.strip().splitlines()[0],
        **MNIST_0_4_TO_5_9,
        strategies=("linear_probe", "full_finetune"),
        budgets=(10, 100, None),
        epochs=10,
        batch_size=64,
        trials=10,  # per cell, every strategy alike; the default run ends in ~2.5 min on 2 CPU cores
        seeds=5,
        target_accuracy=0.9,  # time to 90% validation accuracy; probes may never reach it  # re-runs of the best config: the test-accuracy CI narrows as 1/sqrt(seeds)
    )


def _ft_vs_probe_when_plentiful(tables) -> Verdict:
    ft = final_values(tables, strategy="full_finetune", budget="all")
    lp = final_values(tables, strategy="linear_probe", budget="all")
    d, low, high = diff_ci(ft, lp, scale=100)
    # non-inferiority with a 1-point margin: the CI must exclude "fine-tuning 1 point worse"
    passed = above(low, -1.0)
    return Verdict(d, low, high, "points", passed,
                   f"full_finetune {100 * ft.mean():.1f}% vs linear_probe {100 * lp.mean():.1f}% "
                   f"with all labels ({len(ft)} and {len(lp)} seeds)")


def _gap_grows_with_labels(tables) -> Verdict:
    arrays = [final_values(tables, strategy=s, budget=b)
              for b in ("all", "10") for s in ("full_finetune", "linear_probe")]
    d, low, high = bootstrap_ci(lambda fa, pa, f10, p10: 100 * ((fa.mean() - pa.mean())
                                                                  - (f10.mean() - p10.mean())), *arrays)
    passed = above(low, 0.0)
    gaps = [100 * (arrays[i].mean() - arrays[i + 1].mean()) for i in (0, 2)]
    return Verdict(d, low, high, "points", passed,
                   f"fine-tune minus probe: {gaps[1]:+.1f} points at 10 shots, {gaps[0]:+.1f} with "
                   "all labels (bootstrap over seeds)")


@CLAIMS.register("finetune_vs_probe")
def claims() -> list[Claim]:
    src = "Kornblith, Shlens & Le 2019"
    return [
        Claim("ft_at_least_probe_with_plentiful_labels", src,
              "fine-tuning beat logistic regression on fixed features in 179 of 192 dataset x "
              "model pairs: with all labels, fine-tuning is at least as accurate as the probe "
              "(test accuracy difference, CI above -1 point)", _ft_vs_probe_when_plentiful),
        Claim("gap_grows_with_labels", src,
              "the advantage of fine-tuning over the probe grows with the label budget "
              "(gap with all labels minus gap at 10 shots, CI above 0)", _gap_grows_with_labels),
    ]
