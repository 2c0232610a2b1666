"""Every registered strategy, tested without editing this file: one tiny run each, and its contract."""

import optuna
import pytest
import torch

from harness.data import Split
from harness.loop import LoopConfig, train
from harness.models import blocks, build_model
from harness.registry import STRATEGIES
from harness.strategy import BN_MODES

NAMES = STRATEGIES.names()


def _data(n=32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 12, 12, generator=g)
    return Split(x, (x.mean(dim=(1, 2, 3)) > 0).long())


def _hp(name):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    return STRATEGIES.get(name)().search_space(study.ask())


@pytest.mark.parametrize("name", NAMES)
def test_search_space_has_lr_and_weight_decay(name):
    hp = _hp(name)
    assert hp["lr"] > 0 and hp["weight_decay"] >= 0


@pytest.mark.parametrize("name", NAMES)
def test_plan_is_valid_and_bn_mode_is_explicit(name):
    model = build_model("small_cnn", 1, 2)
    plan = STRATEGIES.get(name)().plan(blocks(model), _hp(name), epochs=4)
    plan.validate(blocks(model), 4)
    assert all(p.bn_mode in BN_MODES for p in plan.phases)


@pytest.mark.parametrize("name", NAMES)
def test_one_tiny_run_trains_exactly_what_each_phase_names(name):
    """Parameters outside the trainable blocks stay bitwise unchanged; those inside all change."""
    epochs = 3
    torch.manual_seed(0)
    model = build_model("small_cnn", 1, 2)
    plan = STRATEGIES.get(name)().plan(blocks(model), {"lr": 0.05, "weight_decay": 0.0}, epochs)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    data = _data()
    res = train(model, plan, data, data, LoopConfig(epochs=epochs, batch_size=8, lr=0.05))
    assert len(res.epochs) == epochs
    trained_blocks = {b for p in plan.phases for b in p.trainable}
    for k, v in model.named_parameters():
        changed = not torch.equal(before[k], v.detach())
        block = k.split(".")[0]
        assert changed == (block in trained_blocks), f"{name}: {k} changed={changed}"
