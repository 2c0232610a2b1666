"""ULMFiT's recipe (Howard & Ruder 2018): gradual unfreezing combined with discriminative learning rates."""

from harness.registry import STRATEGIES
from harness.strategy import Strategy
from strategies.progressive_unfreezing import unfreezing_plan


@STRATEGIES.register("ulmfit")
class ULMFiT(Strategy):
    description = "gradual unfreezing from the head plus layer-wise lr decay (ULMFiT's recipe)"

    def search_space(self, trial):
        return {
            "lr": trial.suggest_float("lr", 1e-4, 0.3, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
            "unfreeze_every": trial.suggest_int("unfreeze_every", 1, 2),
            "lr_decay": trial.suggest_float("lr_decay", 1 / 2.6, 0.9),
        }

    def plan(self, blocks, hp, epochs):
        return unfreezing_plan(blocks, hp, epochs)
