"""Full fine-tuning: every block trains from the pretrained weights, with one learning rate."""

from harness.registry import STRATEGIES
from harness.train.strategy import Phase, Plan, Strategy, optimizer_from, sgd_space


@STRATEGIES.register("full_finetune")
class FullFinetune(Strategy):
    description = "train every block with one learning rate; BatchNorm in train mode"

    def search_space(self, trial):
        return sgd_space(trial)

    def plan(self, blocks, hp, epochs):
        return Plan((Phase("finetune", 0, trainable=tuple(blocks), bn_mode="train",
                           optimizer=optimizer_from(hp)),))
