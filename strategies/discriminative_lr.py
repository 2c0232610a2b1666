"""Discriminative learning rates: layer-wise decay, ``lr_scale = decay ** depth`` from the head.

ULMFiT used 1/2.6 per layer; BEiT and MAE fine-tuning use 0.65-0.75. The scale lives on each
param group, so the loop's schedule multiplies it at every step.
"""

from harness.registry import STRATEGIES
from harness.train.strategy import (
    Phase,
    Plan,
    Strategy,
    layerwise_scales,
    optimizer_from,
    sgd_space,
)


@STRATEGIES.register("discriminative_lr")
class DiscriminativeLR(Strategy):
    description = "every block trains; lr scaled by decay**depth from the head (layer-wise decay)"

    def search_space(self, trial):
        return {
            **sgd_space(trial),
            "lr_decay": trial.suggest_float("lr_decay", 1 / 2.6, 0.9),  # ULMFiT .. near-uniform
        }

    def plan(self, blocks, hp, epochs):
        return Plan((Phase("finetune", 0, trainable=tuple(blocks), bn_mode="train",
                           lr_scale=layerwise_scales(blocks, float(hp["lr_decay"])),
                           optimizer=optimizer_from(hp)),))
