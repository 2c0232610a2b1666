"""ULMFiT's recipe (Howard & Ruder 2018): gradual unfreezing combined with discriminative learning rates."""

from harness.registry import STRATEGIES
from harness.train.strategy import Strategy
from strategies.progressive_unfreezing import ProgressiveUnfreezing, unfreezing_plan


@STRATEGIES.register("ulmfit")
class ULMFiT(Strategy):
    description = "gradual unfreezing from the head plus layer-wise lr decay (ULMFiT's recipe)"

    def search_space(self, trial):
        return {
            **ProgressiveUnfreezing().search_space(trial),
            "lr_decay": trial.suggest_float("lr_decay", 1 / 2.6, 0.9),  # ULMFiT .. near-uniform
        }

    def plan(self, blocks, hp, epochs):
        return unfreezing_plan(blocks, hp, epochs)
