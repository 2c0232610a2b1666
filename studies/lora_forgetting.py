"""LoRA learns less and forgets less (Biderman et al. 2024), on the harness's ViT.

``vit_tiny`` is pretrained on MNIST digits 0-4 (the source task) and fine-tuned on 5-9 with all
labels, by full fine-tuning and by LoRA (peft, rank searched over 4, 8, 16, every Linear of the
blocks). Every final run also measures forgetting: the fine-tuned body under the pretrained
model's own head, on the source task's validation split (``split="source"`` accuracy rows, the
``source_accuracy`` column of trials.csv).

Biderman et al. fine-tuned Llama-2 7B on code and math: full fine-tuning reached higher target
accuracy than LoRA at every rank, and LoRA kept more of the base model's abilities (source-domain
benchmarks) at matched target accuracy. The claims below test both directions on this task.

Runtime: not measured at this spec's size before the deadline (see the report of the run that
wrote it); a shrunk run (``--trials 2 --seeds 2 --epochs 4``) is in the tests.
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
        budgets=(None,),  # the paper's regime: plenty of target data
        epochs=8,
        batch_size=64,
        trials=6,
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
