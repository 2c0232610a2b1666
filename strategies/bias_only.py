"""BitFit (Ben Zaken et al. 2022): only the bias terms of the backbone train, and the new head.

BatchNorm statistics stay fixed (``eval``), so apart from the head the biases are the only
thing that moves.
"""

from harness.registry import STRATEGIES
from harness.train.strategy import Phase, Plan, Strategy, optimizer_from, sgd_space


@STRATEGIES.register("bias_only")
class BiasOnly(Strategy):
    description = "BitFit: train the backbone's bias terms and the head; BatchNorm statistics fixed"

    def search_space(self, trial):
        return sgd_space(trial, lr=(1e-3, 1.0))

    def plan(self, blocks, hp, epochs):
        # every bias of the backbone (BatchNorm's shift included) by pattern, and the whole head
        return Plan((Phase("bitfit", 0, trainable=(blocks[-1],), bn_mode="eval", params=("*.bias",),
                           optimizer=optimizer_from(hp)),))
