"""(IA)^3 (Liu et al. 2022) through ``peft``: a learned vector rescales each chosen layer's
activations (its input for feed-forward ``fc2`` layers, its output otherwise); no rank, no
dropout, the fewest parameters of the peft methods here."""

from harness.registry import STRATEGIES
from strategies._peft import PeftStrategy, peft_space


@STRATEGIES.register("ia3")
class IA3(PeftStrategy):
    description = "peft (IA)^3: learned per-channel rescaling of the backbone's layers, new head"
    method, prefix = "ia3", "ia3_"

    def search_space(self, trial):
        hp = peft_space(trial)
        del hp["rank"], hp["alpha"], hp["dropout"]  # (IA)^3 has none of them
        return hp

    def config(self, hp, targets):
        from peft import IA3Config

        # the paper rescales the feed-forward's inner activations: the input of its second layer
        ff = [t for t in targets if t.rsplit(".", 1)[-1] == "fc2"]
        return IA3Config(target_modules=targets, feedforward_modules=ff)
