"""LoKr (Yeh et al. 2024, LyCORIS) through ``peft``: the update is a Kronecker product of a small
matrix and a low-rank one; Linear and Conv2d."""

from harness.registry import STRATEGIES
from strategies._peft import PeftStrategy


@STRATEGIES.register("lokr")
class LoKr(PeftStrategy):
    description = "peft LoKr: Kronecker-product updates on the backbone's layers, new head"
    method, prefix = "lokr", "lokr_"

    def config(self, hp, targets):
        from peft import LoKrConfig

        r = int(hp.get("rank", 8))
        return LoKrConfig(r=r, alpha=float(hp.get("alpha", 1.0)) * r,
                          rank_dropout=float(hp.get("dropout", 0.0)), target_modules=targets)
