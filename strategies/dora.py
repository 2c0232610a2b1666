"""DoRA (Liu et al. 2024) through ``peft``: LoRA's low-rank direction update plus a trained
magnitude per output channel (``lora_magnitude_vector``), on Linear and Conv2d layers."""

from torch import nn

from harness.registry import STRATEGIES
from strategies.lora import LoRA


@STRATEGIES.register("dora")
class DoRA(LoRA):
    description = "peft DoRA: weight-decomposed low-rank adapters (magnitude + direction), new head"
    method = "dora"
    types = (nn.Linear, nn.Conv2d)  # peft's DoRA has no MultiheadAttention layer
    use_dora = True
