"""LoRA learns less and forgets less (Biderman et al. 2024), on the harness's ViT.

``vit_tiny`` is pretrained on MNIST digits 0-4 (the source task) and fine-tuned on 5-9 with 100
labels per class, by full fine-tuning and by LoRA (peft, rank searched over 4, 8, 16, on every
Linear of the blocks). Every final run also measures forgetting: the fine-tuned body under the pretrained
model's own head, on the source task's validation split (``split="source"`` accuracy rows, the
``source_accuracy`` column of trials.csv).

Biderman et al. fine-tuned Llama-2 7B on code and math: full fine-tuning reached higher target
accuracy than LoRA at every rank, and LoRA kept more of the base model's abilities (source-domain
benchmarks) at matched target accuracy. The claims below test both directions on this task.

Runtime on 2 CPU cores shared with other jobs (load average ~17): 9.5 min with the pretrained
ViT cached (``python -m harness study lora_forgetting --jobs 2``, at this spec's size); its
pretraining adds 19 min there once (a 10-epoch one took 4.7 min at load ~7). That run: full fine-tuning
77.6% target test accuracy vs LoRA 61.7% (+15.9 [9.9, 22.0] points, pass); source accuracy
after fine-tuning 67.9% vs LoRA 86.5% (LoRA +18.7 [11.8, 25.5] points, pass; the pretrained
model's own is 86.6%). Two search trials per strategy are a thin search: LoRA's best was SGD at
lr 0.002, which barely moved the body, so part of its "forgetting less" is learning little.
"""

from harness.analysis.claims import CLAIMS, Claim, Verdict, above, contrast_ci, final_sample
from harness.config.spec import StudySpec
from harness.registry import STUDIES
from studies._vit_transfer import VIT_MNIST_0_4_TO_5_9

FT, LORA = "full_finetune", "lora"
SOURCE = "Biderman et al. 2024"
PER = ("device", "dataset", "model", "budget", "execution")


@STUDIES.register("lora_forgetting")
def lora_forgetting() -> StudySpec:
    return StudySpec(
        name="lora_forgetting",
        description=__doc__.strip().splitlines()[0],
        **VIT_MNIST_0_4_TO_5_9,
        strategies=(FT, LORA),
        budgets=(100,),  # 500 labelled target images; all 1500 triple the run time
        epochs=4,
        batch_size=32,
        trials=2,  # per cell, both strategies alike: the measured runtime's size
        seeds=3,
    )


def _samples(tables, split: str):
    label = "target test" if split == "test" else "source validation"
    return (final_sample(tables, split=split, strategy=FT, label=f"{FT} {label}"),
            final_sample(tables, split=split, strategy=LORA, label=f"{LORA} {label}"))


def _full_learns_more(tables) -> Verdict:
    ft, lora = _samples(tables, "test")
    ci = contrast_ci([(1, ft), (-1, lora)], scale=100)
    return Verdict.of(ci, "points", above(ci.low, 0.0),
                      f"target test accuracy: {FT} {100 * ft.mean:.1f}% vs {LORA} "
                      f"{100 * lora.mean:.1f}% ({len(ft.values)} and {len(lora.values)} seeds)")


def _lora_forgets_less(tables) -> Verdict:
    ft, lora = _samples(tables, "source")
    ci = contrast_ci([(1, lora), (-1, ft)], scale=100)
    return Verdict.of(ci, "points", above(ci.low, 0.0),
                      f"source accuracy after fine-tuning (pretrained head): {LORA} "
                      f"{100 * lora.mean:.1f}% vs {FT} {100 * ft.mean:.1f}% "
                      f"({len(lora.values)} and {len(ft.values)} seeds)")


@CLAIMS.register("lora_forgetting")
def claims() -> list[Claim]:
    return [
        Claim("full_finetuning_learns_more", SOURCE,
              "full fine-tuning reaches higher target accuracy than LoRA (target test accuracy, "
              "full minus LoRA, CI above 0)", _full_learns_more, per=PER),
        Claim("lora_forgets_less", SOURCE,
              "LoRA keeps more source-task accuracy than full fine-tuning (source validation "
              "accuracy under the pretrained head, LoRA minus full, CI above 0)",
              _lora_forgets_less, per=PER),
    ]
