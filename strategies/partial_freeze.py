"""Partial freezing: only the top k blocks train (the freeze-depth axis of Yosinski et al. 2014)."""

from harness.registry import STRATEGIES
from harness.train.strategy import Phase, Plan, Strategy, optimizer_from, sgd_space, top_blocks

MAX_K = 4  # searched k in 1..MAX_K; capped by the model's depth


@STRATEGIES.register("partial_freeze")
class PartialFreeze(Strategy):
    description = "train only the top k blocks (k searched); the rest frozen with fixed BatchNorm"

    def search_space(self, trial):
        return {
            **sgd_space(trial),
            "train_top_k": trial.suggest_int("train_top_k", 1, MAX_K),
        }

    def plan(self, blocks, hp, epochs):
        k = min(int(hp.get("train_top_k", 2)), len(blocks))
        return Plan((Phase(f"top{k}", 0, trainable=top_blocks(blocks, k), bn_mode="train",
                           optimizer=optimizer_from(hp)),))
