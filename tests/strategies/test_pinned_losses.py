"""Every registered strategy keeps its behaviour: per-step losses pinned to the values recorded
before strategy contract v2 (commit b041205, torch 2.14.1 on this CPU), bitwise;
``finetune_adamw``, which the contract made possible, is pinned from its first version.

The recipe is fixed: ``small_cnn`` seeded with 0, 36 random 12x12 images labelled by the sign of
their mean, batch 8, 4 epochs, eager, the hyperparameters stored beside the losses. A change to
the loop, the phase application, the optimizer or a strategy's plan that moves one bit of one
loss fails here. Bitwise equality is only promised for the same torch build on the same kind of
CPU: on another machine, regenerate with ``python tests/strategies/test_pinned_losses.py`` from
the commit the file names, not from the code under test.
"""

import json
import platform
import sys
from pathlib import Path

import pytest
import torch

from harness.config.execution import parse_execution
from harness.data.core import Split
from harness.models.core import build_model
from harness.registry import STRATEGIES
from harness.train.loop import LoopConfig, train
from harness.train.strategy import build_plan

PINNED = json.loads((Path(__file__).with_name("pinned_losses.json")).read_text())
SAME_BUILD = torch.__version__.startswith("2.14.1") and platform.machine() == "x86_64"


def _data(n=36, seed=0, size=12):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size, size, generator=g)
    return Split(x, (x.mean(dim=(1, 2, 3)) > 0).long())


def run_case(name, hp):
    torch.manual_seed(0)
    strategy = STRATEGIES.get(name)()
    # small_cnn, or the tiny model a strategy that cannot adapt it names (VeRA: Linear only)
    model_name, size = getattr(strategy, "test_model", ("small_cnn", 12))
    model = build_model(model_name, 1, 2, image_size=size)
    model, plan = build_plan(name, strategy, model, hp, 4)
    data = _data(size=size)
    cfg = LoopConfig(epochs=4, batch_size=8, lr=hp["lr"], seed=0, weight_decay=hp["weight_decay"],
                     execution=parse_execution("eager"))
    res = train(model, plan, data, data, cfg)
    return {
        "step_losses": [float(x).hex() for x in res.step_losses],
        "epoch_train_loss": [float(e.train_loss).hex() for e in res.epochs],
        "epoch_val_loss": [float(e.val_loss).hex() for e in res.epochs],
        "param_sum": float(sum(p.detach().double().sum() for p in model.parameters())).hex(),
    }


def test_every_registered_strategy_is_pinned():
    """A new strategy gets pinned too: add it with the generator below."""
    assert {case["strategy"] for case in PINNED.values()} == set(STRATEGIES.names())


@pytest.mark.skipif(not SAME_BUILD, reason="losses were pinned with torch 2.14.1 on x86_64")
@pytest.mark.parametrize("key", sorted(PINNED))
def test_per_step_losses_match_the_values_before_the_contract_change(key):
    case = PINNED[key]
    got = run_case(case["strategy"], case["hp"])
    for what in ("step_losses", "epoch_train_loss", "epoch_val_loss", "param_sum"):
        assert got[what] == case[what], f"{key}: {what} moved"


if __name__ == "__main__":  # regenerate: python tests/strategies/test_pinned_losses.py
    out = {key: {"strategy": c["strategy"], "hp": c["hp"], **run_case(c["strategy"], c["hp"])}
           for key, c in PINNED.items()}
    Path(__file__).with_name("pinned_losses.json").write_text(
        json.dumps(out, indent=1, sort_keys=True) + "\n")
    sys.exit(0)
