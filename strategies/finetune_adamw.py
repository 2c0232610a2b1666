"""Full fine-tuning the way transformers are fine-tuned: AdamW, linear warm-up then cosine decay,
and layer-wise learning-rate decay (BEiT, Bao et al. 2022; MAE, He et al. 2022).

The optimizer and schedule are data of the plan; the decay is ``lr_scale = decay ** depth`` from
the head, as in ``discriminative_lr``. Weight decay is AdamW's decoupled decay.
"""

from harness.registry import STRATEGIES
from harness.train.strategy import Phase, Plan, Strategy, layerwise_scales, optimizer_from


@STRATEGIES.register("finetune_adamw")
class FinetuneAdamW(Strategy):
    description = "every block trains with AdamW, warm-up + cosine, layer-wise lr decay (BEiT/MAE)"

    def search_space(self, trial):
        return {
            "lr": trial.suggest_float("lr", 1e-5, 1e-2, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 1e-4, 0.3, log=True),
            "lr_decay": trial.suggest_float("lr_decay", 0.5, 1.0),  # MAE uses 0.65-0.75
            "warmup": trial.suggest_float("warmup", 0.0, 0.3),  # fraction of the run
        }

    def plan(self, blocks, hp, epochs):
        opt = optimizer_from(hp, name="adamw", schedule="warmup_cosine")
        return Plan((Phase("finetune", 0, trainable=tuple(blocks), bn_mode="train",
                           lr_scale=layerwise_scales(blocks, float(hp["lr_decay"])),
                           optimizer=opt),))
