"""LoRA at one fixed rank, so a study compares ranks as cells (``peft_vs_full``: rank 2 against
rank 8) rather than letting the search pick one. Everything else is ``lora``'s, searched alike."""

from harness.registry import STRATEGIES
from strategies._peft import peft_space
from strategies.lora import LoRA


@STRATEGIES.register("lora_r2")
class LoRARank2(LoRA):
    description = "peft LoRA at rank 2 on the backbone's layers, and a new head"

    def search_space(self, trial):
        return peft_space(trial, ranks=(2,))


@STRATEGIES.register("lora_r8")
class LoRARank8(LoRA):
    description = "peft LoRA at rank 8 on the backbone's layers, and a new head"

    def search_space(self, trial):
        return peft_space(trial, ranks=(8,))
