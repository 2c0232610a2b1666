"""Parameter-efficient fine-tuning against full fine-tuning and a probe, on the harness's ViT.

``vit_tiny`` (pretrained on MNIST digits 0-4) is transferred to digits 5-9 with 10 and 100
labels per class by: a linear probe, full fine-tuning, BitFit (``bias_only``), LoRA at rank 2
and rank 8 (``lora_r2``, ``lora_r8``), DoRA, (IA)^3, Houlsby adapters and visual prompt tuning
(Hu et al. 2021; Liu et al. 2024; Liu et al. 2022; Houlsby et al. 2019; Jia et al. 2022). Every
cell records trainable parameters, peak memory, and for final runs the source-task accuracy
after fine-tuning (forgetting); the figures ``accuracy_vs_memory`` and ``accuracy_vs_stored_bytes``
draw each budget's Pareto front (stored bytes come from the deployment measures when a run
records them).

A timm backbone joins with ``--models vit_tiny,timm:<name>`` where that model takes 28-pixel,
one-channel inputs (preflight refuses one that does not, e.g. ``timm:test_vit``, whose 16-pixel
patch does not divide 28, in one line). ``--models timm:test_resnet --trials 1 --seeds 1
--epochs 2`` ran end to end here in 125 s, pretraining included (run 20261203-163129-51c4:
source accuracy 99.2%; at 100 shots probe 80.0%, BitFit 80.6%, LoRA r8 72.4%, one trial each,
so no ranking); ``adapter`` and ``vpt`` fail on it with a one-line PlanError (they need
transformer blocks). It is not in the default grid: it would double the runtime and two of its
cells cannot run.

Runtime: 619 s for the whole command on a quiet 2-core machine with the pretrained ViT cached
(run 20261203-154839-b985; ``--jobs`` 2 by default); the ViT's pretraining adds 15 s to a first
run. Test accuracy there, mean ± 95% CI over 3 seeds, 10 / 100 shots: AdamW full fine-tuning
62.9 ± 9.8 / 85.9 ± 5.5, LoRA r2 63.1 ± 4.2 / 70.3 ± 2.3, r8 58.4 ± 1.8 / 72.9 ± 0.8, DoRA
58.8 ± 0.0 / 73.8 ± 1.8, (IA)^3 56.5 ± 6.6 / 75.1 ± 0.6, adapter 61.8 ± 11.7 / 75.1 ± 2.0, VPT
58.7 ± 3.0 / 70.4 ± 1.3, BitFit 56.4 ± 12.6 / 70.8 ± 1.3, probe 60.0 ± 7.2 / 71.7 ± 0.6; with
8 trials for 4-6 hyperparameters several best configs sit at an edge of their range (flagged in
the summary).
"""

from harness.config.spec import StudySpec
from harness.registry import STUDIES
from studies._vit_transfer import VIT_MNIST_0_4_TO_5_9

# full fine-tuning as ViT papers run it (Hu et al. 2021 too): AdamW with warm-up, cosine and
# layer-wise decay; SGD full fine-tuning diverged in 3 of 8 search trials here (lr up to 1.0)
STRATEGIES = ("linear_probe", "finetune_adamw", "bias_only", "lora_r2", "lora_r8", "dora", "ia3",
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
        batch_size=16,  # 10 shots (50 examples): 3 steps per epoch, 30 in all
        trials=8,  # per cell, every strategy alike
        seeds=3,
        deploy=True,  # final runs: merged adapters, torch.export round trip, latency b1/b64
    )
