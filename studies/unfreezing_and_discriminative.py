"""Every partial-training strategy against full fine-tuning on the same transfer task and budget.

Gradual unfreezing and discriminative learning rates (ULMFiT, Howard & Ruder 2018), LP-FT
(Kumar et al. 2022), partial freezing (Yosinski et al. 2014), BitFit (Ben Zaken et al. 2022)
and both linear probes (SGD on cached features; L-BFGS logistic regression) against full
fine-tuning: a small CNN pretrained on MNIST digits 0-4, transferred to 5-9 with 100 labels
per class. Every strategy gets the same Optuna trial budget.
"""

from harness.config.spec import StudySpec
from harness.registry import STUDIES
from studies._mnist_transfer import MNIST_0_4_TO_5_9


@STUDIES.register("unfreezing_and_discriminative")
def unfreezing_and_discriminative() -> StudySpec:
    return StudySpec(
        name="unfreezing_and_discriminative",
        description=__doc__.strip().splitlines()[0],
        **MNIST_0_4_TO_5_9,
        strategies=("full_finetune", "progressive_unfreezing", "discriminative_lr", "ulmfit",
                    "lp_ft", "partial_freeze", "bias_only", "linear_probe", "linear_probe_lbfgs"),
        budgets=(100,),
        epochs=10,
        batch_size=64,
        trials=10,  # per strategy, the same for all
        seeds=3,
    )
