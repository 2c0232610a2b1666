"""Bottleneck adapters (Houlsby et al. 2019): small residual MLPs after the attention and the MLP
of every transformer block; they and the new head train, the backbone stays frozen.

An adapter maps the sublayer's output ``h`` to ``h + up(gelu(down(h)))``, ``down`` to
``bottleneck`` features and ``up`` back. ``up`` starts at zero, so the adapted model computes
exactly what the pretrained one did until the adapters train. Each adapter is a child of the
sublayer it follows (``block1.attn.adapter.down.weight``) applied by a forward hook, so every
pretrained parameter keeps its name: a checkpoint of the backbone still loads, and forgetting is
measured on the adapted body. Houlsby et al. also trained the LayerNorms; here only the adapters
and the head train (``ln_tuning`` trains the norms alone). Transformer backbones only.
"""

from __future__ import annotations

from torch import nn

from harness.registry import STRATEGIES
from harness.train.strategy import Phase, Plan, Strategy, optimizer_from
from strategies._transformer import embed_dim, transformer_blocks


class Bottleneck(nn.Module):
    """``up(gelu(down(h)))``: the adapter's correction, zero while ``up`` is zero."""

    def __init__(self, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h):
        return self.up(self.act(self.down(h)))


def _apply_adapter(module: nn.Module, args, output):
    # a module-level function reading the adapter from the module it runs on, so a deep copy of
    # the model (the FLOP counter makes one) runs its own copy of the adapter
    return output + module.adapter(output)


def add_adapters(model: nn.Sequential, bottleneck: int, strategy: str = "adapter") -> nn.Sequential:
    """Put an adapter after ``attn`` and after ``mlp`` of every transformer block (in place)."""
    for _, block in transformer_blocks(model, strategy):
        p = next(block.parameters())
        for sub in (block.attn, block.mlp):
            sub.adapter = Bottleneck(embed_dim(block), bottleneck).to(device=p.device, dtype=p.dtype)
            sub.register_forward_hook(_apply_adapter)
    return model


@STRATEGIES.register("adapter")
class Adapter(Strategy):
    test_model = ("vit_tiny", 12)  # transformer backbones only: the registry-wide tests use vit_tiny
    description = "Houlsby bottleneck adapters after attention and MLP of each block, and the head"
    patterns = ("*.adapter.*",)

    def search_space(self, trial):
        return {
            "lr": trial.suggest_float("lr", 1e-4, 3e-2, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 1e-4, 0.1, log=True),
            "bottleneck": trial.suggest_categorical("bottleneck", [8, 16]),
        }

    def prepare(self, model, hp):
        return add_adapters(model, int(hp.get("bottleneck", 8)))

    def plan(self, blocks, hp, epochs):
        # LayerNorms have no BatchNorm statistics; "eval" keeps any dropout of the backbone off
        return Plan((Phase("adapter", 0, trainable=(blocks[-1],), bn_mode="eval",
                           params=self.patterns, optimizer=optimizer_from(hp, name="adamw")),))
