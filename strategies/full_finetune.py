"""Full fine-tuning: every block trains from the pretrained weights, with one learning rate."""

from harness.registry import STRATEGIES
from harness.strategy import Phase, Plan, Strategy


@STRATEGIES.register("full_finetune")
class FullFinetune(Strategy):
    description = "train every block with one learning rate; BatchNorm in train mode"

    def search_space(self, trial):
        return {
            "lr": trial.suggest_float("lr", 1e-4, 0.3, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
        }

    def plan(self, blocks, hp, epochs):
        return Plan((Phase("finetune", 0, trainable=tuple(blocks), bn_mode="train"),))
