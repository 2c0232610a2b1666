"""A LoRA strategy written as one file against strategy contract v2 (Hu et al. 2021).

Its tiny hand-written low-rank wrapper exists to test the contract: that a strategy can change
the model (``prepare``), select the new parameters by name pattern, and have exactly those (and
the head) train. The harness's LoRA for real backbones comes from Hugging Face ``peft``.
"""

from __future__ import annotations

from torch import nn

from harness.train.strategy import Phase, Plan, Strategy, optimizer_from, sgd_space


class LowRank(nn.Module):
    """``base(x) + alpha / rank * B(A(x))`` with ``base`` frozen; B starts at zero, so the wrapped
    model computes exactly what the original did until B trains."""

    def __init__(self, base: nn.Module, rank: int, alpha: float, use_adapter: bool = True) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.use_adapter = use_adapter  # False: a dead adapter the forward never calls
        if isinstance(base, nn.Conv2d):
            self.lora_A = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride,
                                    base.padding, bias=False)
            self.lora_B = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        else:
            self.lora_A = nn.Linear(base.in_features, rank, bias=False)
            self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x):
        out = self.base(x)
        return out + self.scale * self.lora_B(self.lora_A(x)) if self.use_adapter else out


class LoRA(Strategy):
    description = "low-rank adapters on every conv of the backbone, and a new head; base frozen"
    patterns = ("*.lora_A.*", "*.lora_B.*")
    use_adapter = True

    def search_space(self, trial):
        return {**sgd_space(trial, lr=(1e-3, 1.0)), "rank": trial.suggest_categorical("rank", [2, 4])}

    def prepare(self, model, hp):
        rank = int(hp.get("rank", 2))
        for block in list(model.children())[:-1]:
            for parent in list(block.modules()):
                for child_name, child in list(parent.named_children()):
                    if isinstance(child, nn.Conv2d):
                        setattr(parent, child_name,
                                LowRank(child, rank, alpha=2.0 * rank, use_adapter=self.use_adapter))
        return model

    def plan(self, blocks, hp, epochs):
        return Plan((Phase("lora", 0, trainable=(blocks[-1],), bn_mode="eval", params=self.patterns,
                           optimizer=optimizer_from(hp)),))
