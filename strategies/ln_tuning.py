"""LayerNorm tuning: only the affine parameters of the backbone's LayerNorms train, and the head.

The transformers' counterpart of BitFit (a few thousand parameters); peft's ``LN_TUNING`` needs
a Hugging Face model, so this is the harness's own, by name pattern. A model without LayerNorm
(a CNN) is a :class:`PlanError`, as is one whose ``*norm*`` names select anything but LayerNorms.
"""

from __future__ import annotations

import fnmatch

from torch import nn

from harness.registry import STRATEGIES
from harness.train.strategy import Phase, Plan, PlanError, Strategy, optimizer_from

PATTERNS = ("*norm*.weight", "*norm*.bias")


def _layernorm_params(model: nn.Sequential) -> set[str]:
    body = list(model.named_children())[:-1]  # the head is trained whole anyway
    return {f"{b}.{m}.{p}".replace("..", ".") for b, block in body
            for m, mod in block.named_modules() if isinstance(mod, nn.LayerNorm)
            for p, _ in mod.named_parameters(recurse=False)}


@STRATEGIES.register("ln_tuning")
class LayerNormTuning(Strategy):
    test_model = ("vit_tiny", 12)  # transformer backbones only: the registry-wide tests use vit_tiny
    description = "train only the backbone's LayerNorm scales and shifts, and the head"

    def search_space(self, trial):
        return {
            "lr": trial.suggest_float("lr", 1e-4, 3e-2, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 1e-4, 0.1, log=True),
        }

    def prepare(self, model, hp):
        wanted = _layernorm_params(model)
        head = list(model.named_children())[-1][0]
        matched = {n for n, _ in model.named_parameters() if not n.startswith(f"{head}.")
                   and any(fnmatch.fnmatchcase(n, p) for p in PATTERNS)}
        if not wanted:
            raise PlanError("strategy 'ln_tuning' applies to models with LayerNorm (transformers "
                            "such as vit_tiny), but this model has none; use bias_only on a CNN.")
        if matched != wanted:
            raise PlanError(f"strategy 'ln_tuning': the patterns {PATTERNS} select "
                            f"{sorted(matched ^ wanted)[:4]}, which are not exactly the LayerNorms.")
        return model

    def plan(self, blocks, hp, epochs):
        return Plan((Phase("ln_tuning", 0, trainable=(blocks[-1],), bn_mode="eval",
                           params=PATTERNS, optimizer=optimizer_from(hp, name="adamw")),))
