"""BitFit (Ben Zaken et al. 2022): only the bias terms of the backbone train, and the new head.

BatchNorm statistics stay fixed (``eval``), so apart from the head the biases are the only
thing that moves.
"""

from harness.registry import STRATEGIES
from harness.train.strategy import Phase, Plan, Strategy, sgd_space


@STRATEGIES.register("bias_only")
class BiasOnly(Strategy):
    description = "BitFit: train the backbone's bias terms and the head; BatchNorm statistics fixed"

    def search_space(self, trial):
        return sgd_space(trial, lr=(1e-3, 1.0))

    def plan(self, blocks, hp, epochs):
        biases = {b: ("bias",) for b in blocks[:-1]}
        return Plan((Phase("bitfit", 0, trainable=tuple(blocks), bn_mode="eval",
                           param_suffixes=biases),))
