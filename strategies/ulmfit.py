"""ULMFiT's recipe (Howard & Ruder 2018): gradual unfreezing combined with discriminative learning rates."""

from harness.registry import STRATEGIES
from harness.strategy import Strategy, sgd_space
from strategies.progressive_unfreezing import unfreezing_plan


@STRATEGIES.register("ulmfit")
class ULMFiT(Strategy):
    description = "gradual unfreezing from the head plus layer-wise lr decay (ULMFiT's recipe)"

    def search_space(self, trial):
        return {
            **sgd_space(trial),
            "unfreeze_every": trial.suggest_int("unfreeze_every", 1, 2),
            "lr_decay": trial.suggest_float("lr_decay", 1 / 2.6, 0.9),
        }

    def plan(self, blocks, hp, epochs):
        return unfreezing_plan(blocks, hp, epochs)
