"""Parameter-efficient fine-tuning against full fine-tuning and a probe, on the harness's ViT.

``vit_tiny`` (pretrained on MNIST digits 0-4) is transferred to digits 5-9 with 10 and 100
labels per class by: a linear probe, full fine-tuning, BitFit (``bias_only``), LoRA at rank 2
and rank 8 (``lora_r2``, ``lora_r8``), DoRA, (IA)^3, Houlsby adapters and visual prompt tuning
(Hu et al. 2021; Liu et al. 2024; Liu et al. 2022; Houlsby et al. 2019; Jia et al. 2022). Every
cell records trainable parameters, peak memory, and for final runs the source-task accuracy
after fine-tuning (forgetting); the figures ``accuracy_vs_memory`` and ``accuracy_vs_stored_bytes``
draw each budget's Pareto front (stored bytes come from the deployment measures when a run
records them).

A timm backbone joins with ``--models vit_tiny,timm:<name>`` where that model can be built at
28 px with one input channel; it is not in the default grid (not tried here before the deadline).

Runtime: not measured at this spec's size before the deadline; see the report of the commit.
"""

from harness.config.spec import StudySpec
from harness.registry import STUDIES
from studies._vit_transfer import VIT_MNIST_0_4_TO_5_9

STRATEGIES = ("linear_probe", "full_finetune", "bias_only", "lora_r2", "lora_r8", "dora", "ia3",
              "adapter", "vpt")


@STUDIES.register("peft_vs_full")
def peft_vs_full() -> StudySpec:
    return StudySpec(
        name="peft_vs_full",
        description=__doc__.strip().splitlines()[0],
        **VIT_MNIST_0_4_TO_5_9,
        strategies=STRATEGIES,
        budgets=(10, 100),
        epochs=10,
        batch_size=32,
        trials=4,  # per cell, every strategy alike
        seeds=2,
        min_steps=60,  # 10 shots are 50 examples: at least 60 steps, not 10
        deploy=True,  # final runs: merged adapters, torch.export round trip, latency b1/b64
    )
