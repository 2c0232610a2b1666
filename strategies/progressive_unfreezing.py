"""Gradual unfreezing (ULMFiT, Howard & Ruder 2018): one more block trains each phase, from the top.

Unlike a one-shot unfreeze (Lightning's BackboneFinetuning), every block gets its own phase.
By default a block is unfrozen every ``unfreeze_every`` epochs; a study can instead give the
phases' start epochs as data (``schedule``). When the epochs run out before every block is
unfrozen, the last phase unfreezes all the rest. With ``lr_decay`` set, learning rates are
discriminative too (ULMFiT's full recipe: see the ``ulmfit`` strategy).
"""

from harness.registry import STRATEGIES
from harness.train.strategy import (
    Phase,
    Plan,
    Strategy,
    layerwise_scales,
    optimizer_from,
    sgd_space,
    top_blocks,
    unfreeze_starts,
)


def unfreezing_plan(blocks, hp, epochs):
    starts = unfreeze_starts(len(blocks), epochs, int(hp.get("unfreeze_every", 1)), hp.get("schedule"))
    scales = layerwise_scales(blocks, float(hp["lr_decay"])) if "lr_decay" in hp else {}
    phases = []
    for i, start in enumerate(starts):
        k = len(blocks) if i == len(starts) - 1 else i + 1
        phases.append(Phase(f"top{k}", start, trainable=top_blocks(blocks, k), bn_mode="train",
                            lr_scale=scales, optimizer=optimizer_from(hp)))
    return Plan(tuple(phases))


@STRATEGIES.register("progressive_unfreezing")
class ProgressiveUnfreezing(Strategy):
    description = "unfreeze one block per phase from the head down (ULMFiT gradual unfreezing)"

    def search_space(self, trial):
        return {
            **sgd_space(trial),
            "unfreeze_every": trial.suggest_int("unfreeze_every", 1, 2),
        }

    def plan(self, blocks, hp, epochs):
        return unfreezing_plan(blocks, hp, epochs)
