"""Linear probe: the pretrained backbone stays fixed, only a new classification head trains.

The backbone is frozen and its BatchNorm uses running statistics, so its features of each
example never change: they are computed once, and the head trains on them with SGD.
"""

from harness.registry import STRATEGIES
from harness.train.strategy import Phase, Plan, Strategy, optimizer_from, sgd_space


@STRATEGIES.register("linear_probe")
class LinearProbe(Strategy):
    description = "train only a new head (SGD) on the frozen backbone's features, computed once"

    def search_space(self, trial):
        # a lone linear layer on fixed features tolerates larger steps than the whole network;
        # up to 1.0 its best lr sat at the top edge in every finetune_vs_probe cell
        # its decay reaches down to 1e-8: at lr 30, 1e-6 would still shrink the head by ~1%
        # over a long run, so the range's bottom would not be "no decay" (Strategy.limits)
        return sgd_space(trial, lr=(1e-3, 30.0), weight_decay=(1e-8, 1e-2))

    def plan(self, blocks, hp, epochs):
        cache = bool(hp.get("cache_features", True))  # False: a full forward pass every step
        return Plan((Phase("probe", 0, trainable=(blocks[-1],), bn_mode="eval", cache_features=cache,
                           optimizer=optimizer_from(hp)),))
