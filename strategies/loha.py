"""LoHa (Hyeon-Woo et al. 2022, FedPara) through ``peft``: the update is the Hadamard product of
two low-rank products, a higher effective rank for the same parameters; Linear and Conv2d."""

from harness.registry import STRATEGIES
from strategies._peft import PeftStrategy


@STRATEGIES.register("loha")
class LoHa(PeftStrategy):
    description = "peft LoHa: Hadamard product of two low-rank updates on the backbone, new head"
    method, prefix = "loha", "hada_"

    def config(self, hp, targets):
        from peft import LoHaConfig

        r = int(hp.get("rank", 8))
        return LoHaConfig(r=r, alpha=float(hp.get("alpha", 1.0)) * r,
                          rank_dropout=float(hp.get("dropout", 0.0)), target_modules=targets)
