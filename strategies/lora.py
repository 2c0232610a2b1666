"""LoRA (Hu et al. 2021) through Hugging Face ``peft``: low-rank updates ``B A`` beside the frozen
weights of every chosen layer (Linear, Conv2d, whole ``nn.MultiheadAttention``), and a new head.

``B`` starts at zero, so training starts from the pretrained function; ``lora_alpha / rank``
scales the update (``alpha`` is searched as a multiple of the rank).
"""

from torch import nn

from harness.registry import STRATEGIES
from strategies._peft import PeftStrategy


@STRATEGIES.register("lora")
class LoRA(PeftStrategy):
    description = "peft LoRA: low-rank adapters on the backbone's layers and a new head; base frozen"
    method, prefix = "lora", "lora_"
    types = (nn.Linear, nn.Conv2d, nn.MultiheadAttention)
    use_dora = False

    def config(self, hp, targets):
        from peft import LoraConfig

        r = int(hp.get("rank", 8))
        return LoraConfig(r=r, lora_alpha=float(hp.get("alpha", 1.0)) * r,
                          lora_dropout=float(hp.get("dropout", 0.0)), target_modules=targets,
                          use_dora=self.use_dora)
