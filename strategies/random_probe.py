"""Linear probe on random weights: the baseline that says whether pretraining transferred at all.

``prepare`` re-draws every backbone parameter (the head is new anyway) from the trial's seeded
generator: each module's own ``reset_parameters`` (PyTorch's default initialisation, which the
harness's own text backbone uses too), and for a parameter no module resets (a ViT's class token
or position embedding) a normal draw with std 0.02. Then it trains exactly as ``linear_probe``
does (``random_probe_lbfgs``: as ``linear_probe_lbfgs`` does), so the gap between the two cells
is what the pretrained features are worth.
"""

import torch
from torch import nn

from harness.registry import STRATEGIES
from strategies.linear_probe import LinearProbe
from strategies.linear_probe_lbfgs import LinearProbeLBFGS

STD = 0.02  # for parameters outside any resettable module: the ViT / BERT convention


def _redraw(backbone: nn.Module) -> None:
    reset = set()
    for module in backbone.modules():
        if callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()
            reset.update(id(p) for p in module.parameters(recurse=False))
    with torch.no_grad():
        for p in backbone.parameters():
            if id(p) not in reset:
                p.normal_(0.0, STD)


@STRATEGIES.register("random_probe")
class RandomProbe(LinearProbe):
    description = "linear probe on the same backbone with random weights: pretraining's baseline"

    def prepare(self, model, hp):
        _redraw(model[:-1])
        return model


@STRATEGIES.register("random_probe_lbfgs")
class RandomProbeLBFGS(LinearProbeLBFGS):
    description = "L-BFGS logistic-regression probe on the backbone with random weights"

    def prepare(self, model, hp):
        _redraw(model[:-1])
        return model
