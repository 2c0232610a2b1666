"""Full fine-tuning: every block trains from the pretrained weights, with one learning rate."""

from harness.registry import STRATEGIES
from harness.train.strategy import Phase, Plan, Strategy, optimizer_from, sgd_space


@STRATEGIES.register("full_finetune")
class FullFinetune(Strategy):
    description = "train every block with one learning rate; BatchNorm in train mode"

    def search_space(self, trial):
        # up to 0.3 its best lr sat at the top edge of the range in finetune_vs_probe (0.24 at
        # 10 shots and with all labels): the range reaches 1.0 so the optimum lies inside it
        return sgd_space(trial, lr=(1e-4, 1.0))

    def plan(self, blocks, hp, epochs):
        return Plan((Phase("finetune", 0, trainable=tuple(blocks), bn_mode="train",
                           optimizer=optimizer_from(hp)),))
