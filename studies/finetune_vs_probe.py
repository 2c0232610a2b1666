"""Fine-tuning vs linear probe across label budgets (the question of Kornblith, Shlens & Le 2019).

A small CNN is pretrained on MNIST digits 0-4 (the source task) and transferred to digits 5-9
(the target) with 10, 100 or all (300) labelled examples per class. Kornblith et al. found
fine-tuning beat logistic regression on fixed features in 179 of 192 dataset x model pairs; the
gap is expected to shrink, or turn, when labels are scarce.
"""

from harness.registry import STUDIES
from harness.spec import StudySpec
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
